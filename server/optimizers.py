"""Server optimizers (Reddi et al., "Adaptive Federated Optimization"): FedAvg, FedAvgM, FedAdam, FedYogi.

Each takes the current global weights and the averaged client delta (new - old, i.e. the
negative pseudo-gradient) and returns the next global weights. State is a list of arrays so
it can be checkpointed with the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack
import numpy as np

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import FedgeError, ProtocolError
from fedge.edge_client.protocol.messages import decode_tensor, encode_tensor
from fedge.server.job import ServerOptimizerConfig

Arrays = list[Array]


@dataclass
class ServerOptimizer:
    """Applies an averaged delta to the global weights and keeps the optimizer's state."""

    config: ServerOptimizerConfig
    state: dict[str, Arrays] = field(default_factory=dict)

    def apply(self, weights: Arrays, delta: Arrays) -> Arrays:
        """Return new weights; ``delta`` is the weighted mean of client (new - old)."""
        c = self.config
        if c.name == "fedavg":
            return [w + c.lr * d for w, d in zip(weights, delta, strict=True)]
        if c.name == "fedavgm":
            m = self.state.setdefault("m", [np.zeros_like(w) for w in weights])
            for i, d in enumerate(delta):
                m[i] = c.momentum * m[i] + d
            return [w + c.lr * mi for w, mi in zip(weights, m, strict=True)]
        # Adaptive optimizers: first moment m, second moment v.
        m = self.state.setdefault("m", [np.zeros_like(w) for w in weights])
        v = self.state.setdefault("v", [np.full_like(w, c.epsilon**2) for w in weights])
        out = []
        for i, (w, d) in enumerate(zip(weights, delta, strict=True)):
            m[i] = c.beta1 * m[i] + (1 - c.beta1) * d
            d2 = d * d
            if c.name == "fedadam":
                v[i] = c.beta2 * v[i] + (1 - c.beta2) * d2
            else:  # fedyogi
                v[i] = v[i] - (1 - c.beta2) * d2 * np.sign(v[i] - d2)
            out.append((w + c.lr * m[i] / (np.sqrt(v[i]) + c.epsilon)).astype(np.float32))
        return out

    def state_arrays(self) -> tuple[list[str], Arrays]:
        """Flatten state for checkpointing: (keys per tensor, arrays)."""
        keys, arrays = [], []
        for name in sorted(self.state):
            for arr in self.state[name]:
                keys.append(name)
                arrays.append(arr)
        return keys, arrays

    def load_state_arrays(self, keys: list[str], arrays: Arrays) -> None:
        """Inverse of `state_arrays`."""
        self.state = {}
        for key, arr in zip(keys, arrays, strict=True):
            self.state.setdefault(key, []).append(np.asarray(arr, np.float32))

    def state_blob(self) -> bytes | None:
        """The optimizer's state as a checkpoint blob (None while it has none: FedAvg)."""
        keys, arrays = self.state_arrays()
        if not keys:
            return None
        packed: bytes = msgpack.packb(
            {"keys": keys, "tensors": [encode_tensor(a) for a in arrays]}, use_bin_type=True
        )
        return packed

    def load_state_blob(self, data: bytes) -> None:
        """Inverse of `state_blob`; FedgeError if the blob is corrupt."""
        try:
            raw = msgpack.unpackb(data, raw=False)
            keys, arrays = list(raw["keys"]), [decode_tensor(t) for t in raw["tensors"]]
        except (ValueError, KeyError, TypeError, ProtocolError, msgpack.UnpackException) as exc:
            raise FedgeError(f"optimizer checkpoint is corrupt: {exc}") from exc
        self.load_state_arrays(keys, arrays)
