"""Server half of SecAgg/SecAgg+: a state machine over the four stages, O(d) memory for inputs."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.edge_client.arrays import Array
from fedge.edge_client.errors import ProtocolError, SecAggError
from fedge.edge_client.names import check_name
from fedge.edge_client.secagg.config import SecAggConfig
from fedge.edge_client.secagg.graph import neighbourhoods
from fedge.edge_client.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    MaskedInputRequest,
    Message,
    Roster,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedge.edge_client.secagg.prg import apply_masks
from fedge.edge_client.secagg.shamir import decode_share_value
from fedge.server.secagg.unmask import UnmaskInputs, mask_plan


class ServerState(Enum):
    """Stage the round is in; each open stage collects one message type."""

    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


SERVER_TRANSITIONS: dict[ServerState, frozenset[ServerState]] = {
    ServerState.ADVERTISE: frozenset({ServerState.SHARE, ServerState.ABORTED}),
    ServerState.SHARE: frozenset({ServerState.MASKED_INPUT, ServerState.ABORTED}),
    ServerState.MASKED_INPUT: frozenset({ServerState.UNMASK, ServerState.ABORTED}),
    ServerState.UNMASK: frozenset({ServerState.DONE, ServerState.ABORTED}),
    ServerState.DONE: frozenset(),
    ServerState.ABORTED: frozenset(),
}

_EXPECTED: dict[ServerState, type[Message]] = {
    ServerState.ADVERTISE: AdvertiseKeys,
    ServerState.SHARE: ShareKeys,
    ServerState.MASKED_INPUT: MaskedInput,
    ServerState.UNMASK: UnmaskResponse,
}

Request = Roster | MaskedInputRequest | UnmaskRequest


@dataclass(frozen=True)
class UnmaskReport:
    """What the Unmask stage did (for logs and metrics)."""

    survivors: int
    dropped_after_sharing: int
    self_masks: int
    pairwise_masks: int
    reconstruct_seconds: float  # Shamir, X25519 and HKDF work
    expand_seconds: float  # AES-CTR expansion and vector adds


class SecAggServer:
    """The server's side of one round; the caller carries messages and enforces deadlines.

    ``receive`` validates and stores one device message of the open stage (a bad message
    raises SecAggError and changes nothing: log it and carry on). ``close_stage`` is called
    when the stage's deadline passed or :meth:`pending` is empty; it returns the request
    for each device of the next stage, or raises SecAggError and moves to ABORTED when too
    few devices remain. After the Unmask stage closes, :meth:`result` is the exact uint32
    sum of the inputs of :attr:`survivors`.

    Parameters
    ----------
    round_id
        Round id, checked on every message.
    config
        Round settings (the same the devices use).
    devices
        The devices selected for the round; messages from others are refused.
    enrolment_public_key
        If set, advertisements without a valid identity certificate are refused early.
    graph_seed
        32-byte seed of the neighbour graph; fresh random by default.
    """

    def __init__(
        self,
        round_id: str,
        config: SecAggConfig,
        devices: Iterable[str],
        *,
        enrolment_public_key: Ed25519PublicKey | None = None,
        graph_seed: bytes | None = None,
    ) -> None:
        try:
            self.round_id = check_name("round id", round_id)
            selected = frozenset(check_name("device id", d) for d in devices)
        except ProtocolError as exc:
            raise SecAggError(str(exc)) from exc
        self.config = config
        self._enrolment = enrolment_public_key
        self._seed = os.urandom(32) if graph_seed is None else graph_seed
        if len(self._seed) != 32:
            raise SecAggError("graph_seed must be 32 bytes")
        self._state = ServerState.ADVERTISE
        self.abort_reason: str | None = None
        self.report: UnmaskReport | None = None
        self._stage_members: frozenset[str] = selected  # who may send in the open stage
        self._received: set[str] = set()
        self._ads: dict[str, AdvertiseKeys] = {}
        self._k = self._t = 0
        self._index: dict[str, int] = {}
        self._nbrs: dict[str, frozenset[str]] = {}
        self._shares: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> ciphertext
        self._shared: frozenset[str] = frozenset()  # U2
        self._sum: Array | None = None
        self._survivors: frozenset[str] = frozenset()  # U3
        self._requests: dict[str, UnmaskRequest] = {}
        self._seed_shares: dict[str, dict[str, int]] = {}
        self._key_shares: dict[str, dict[str, int]] = {}

    # ---- introspection -------------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        """Current stage."""
        return self._state

    @property
    def params(self) -> tuple[int, int]:
        """(k, t) once the AdvertiseKeys stage closed, else (0, 0)."""
        return self._k, self._t

    @property
    def survivors(self) -> tuple[str, ...]:
        """Devices whose inputs are in the sum (set when the MaskedInput stage closes)."""
        return tuple(sorted(self._survivors))

    def pending(self) -> frozenset[str]:
        """Devices the open stage still waits for (close early when empty)."""
        if self._state in (ServerState.DONE, ServerState.ABORTED):
            return frozenset()
        return self._stage_members - self._received

    def result(self) -> Array:
        """The exact uint32 sum of the survivors' inputs; SecAggError before DONE."""
        if self._state is not ServerState.DONE or self._sum is None:
            raise SecAggError(f"no result in state {self._state.value}")
        return self._sum

    # ---- transitions ---------------------------------------------------------------------

    def _move(self, target: ServerState) -> None:
        if target not in SERVER_TRANSITIONS[self._state]:
            raise SecAggError(f"illegal server transition {self._state.value} -> {target.value}")
        self._state = target

    def _abort(self, reason: str) -> SecAggError:
        self._move(ServerState.ABORTED)
        self.abort_reason = reason
        self._sum = None
        self._shares, self._seed_shares, self._key_shares = {}, {}, {}
        return SecAggError(f"round {self.round_id} aborted: {reason}")

    def _open(self, target: ServerState, members: Iterable[str]) -> None:
        self._move(target)
        self._stage_members = frozenset(members)
        self._received = set()

    # ---- receiving -----------------------------------------------------------------------

    def receive(self, device_id: str, msg: Message) -> None:
        """Validate and store one device message of the open stage.

        Raises
        ------
        SecAggError
            Wrong stage (out of order), wrong round (replay), a device not in this stage,
            a duplicate, or invalid content. The round's state is unchanged.
        """
        expected = _EXPECTED.get(self._state)
        if expected is None:
            raise SecAggError(f"round {self.round_id} is {self._state.value}; ignoring {device_id}")
        if not isinstance(msg, expected):
            raise SecAggError(
                f"{type(msg).__name__} from {device_id!r} is out of order: stage "
                f"{self._state.value} expects {expected.__name__}"
            )
        if msg.round_id != self.round_id:
            raise SecAggError(
                f"message from {device_id!r} is for round {msg.round_id!r}, not "
                f"{self.round_id!r} (replayed or misrouted)"
            )
        if device_id not in self._stage_members:
            raise SecAggError(f"{device_id!r} is not a participant of stage {self._state.value}")
        if device_id in self._received:
            raise SecAggError(f"duplicate {expected.__name__} from {device_id!r}")
        if isinstance(msg, AdvertiseKeys):
            self._receive_advertisement(device_id, msg)
        elif isinstance(msg, ShareKeys):
            self._receive_shares(device_id, msg)
        elif isinstance(msg, MaskedInput):
            self._receive_masked(msg)
        elif isinstance(msg, UnmaskResponse):
            self._receive_unmask(device_id, msg)
        self._received.add(device_id)

    def _receive_advertisement(self, device_id: str, ad: AdvertiseKeys) -> None:
        if ad.device_id != device_id:
            raise SecAggError(f"{device_id!r} sent the advertisement of {ad.device_id!r}")
        ad.verify(self.round_id, self.config.fleet, self._enrolment)
        self._ads[device_id] = ad

    def _receive_shares(self, device_id: str, msg: ShareKeys) -> None:
        if set(msg.ciphertexts) != self._nbrs[device_id]:
            raise SecAggError(f"{device_id!r} sent shares to devices other than its neighbours")
        self._shares[device_id] = dict(msg.ciphertexts)

    def _receive_masked(self, msg: MaskedInput) -> None:
        d = self.config.dimension
        if msg.masked.shape != (d,):
            raise SecAggError(f"masked input has {msg.masked.shape[0]} elements, expected {d}")
        if self._sum is None:
            self._sum = np.zeros(d, dtype=np.uint32)
        np.add(self._sum, msg.masked, out=self._sum)  # wraps mod 2^32

    def _receive_unmask(self, device_id: str, msg: UnmaskResponse) -> None:
        req = self._requests[device_id]
        if set(msg.seed_shares) != set(req.survivors) or set(msg.key_shares) != set(req.dropped):
            raise SecAggError(f"unmask response of {device_id!r} does not answer its request")
        self._seed_shares[device_id] = {
            u: decode_share_value(v) for u, v in msg.seed_shares.items()
        }
        self._key_shares[device_id] = {u: decode_share_value(v) for u, v in msg.key_shares.items()}

    # ---- closing stages ------------------------------------------------------------------

    def close_stage(self) -> dict[str, Request]:
        """End the open stage (deadline passed or nobody pending) and start the next one.

        Returns
        -------
        dict[str, Request]
            device id -> the message to send it next (empty after Unmask: see :meth:`result`).

        Raises
        ------
        SecAggError
            If too few devices remain; the round is then ABORTED and nothing is revealed.
        """
        if self._state is ServerState.ADVERTISE:
            return dict(self._close_advertise())
        if self._state is ServerState.SHARE:
            return dict(self._close_share())
        if self._state is ServerState.MASKED_INPUT:
            return dict(self._close_masked())
        if self._state is ServerState.UNMASK:
            self._close_unmask()
            return {}
        raise SecAggError(f"round {self.round_id} is {self._state.value}: no stage to close")

    def _close_advertise(self) -> dict[str, Roster]:
        ids = tuple(sorted(self._ads))
        need = max(self.config.min_clients, 2)
        if len(ids) < need:
            raise self._abort(f"only {len(ids)} devices advertised keys, {need} needed")
        try:
            self._k, self._t = self.config.graph_params(len(ids))
        except SecAggError as exc:
            raise self._abort(str(exc)) from exc
        self._index = {d: i + 1 for i, d in enumerate(ids)}
        self._nbrs = neighbourhoods(ids, self._k, self._seed)
        self._open(ServerState.SHARE, ids)
        return {
            u: Roster(
                self.round_id,
                self._seed,
                self._k,
                self._t,
                ids,
                tuple(self._ads[v] for v in sorted(self._nbrs[u])),
            )
            for u in ids
        }

    def _close_share(self) -> dict[str, MaskedInputRequest]:
        shared = set(self._shares)
        # A device with fewer than t sharing neighbours could never be unmasked (and
        # refuses to continue): leave it out, which may push others below t in turn.
        changed = True
        while changed:
            weak = {v for v in shared if len(self._nbrs[v] & shared) < self._t}
            shared -= weak
            changed = bool(weak)
        if len(shared) < self.config.min_clients:
            raise self._abort(
                f"only {len(shared)} devices shared keys with at least t={self._t} "
                f"neighbours, {self.config.min_clients} needed"
            )
        self._shared = frozenset(shared)
        requests = {
            v: MaskedInputRequest(
                self.round_id, {u: self._shares[u][v] for u in sorted(self._nbrs[v] & shared)}
            )
            for v in sorted(shared)
        }
        self._shares = {}
        self._open(ServerState.MASKED_INPUT, shared)
        return requests

    def _close_masked(self) -> dict[str, UnmaskRequest]:
        survivors = frozenset(self._received)
        if len(survivors) < self.config.min_clients:
            raise self._abort(
                f"only {len(survivors)} masked inputs arrived, {self.config.min_clients} needed"
            )
        for u in sorted(self._shared):
            alive = len(self._nbrs[u] & survivors)
            if (u in survivors or alive) and alive < self._t:
                raise self._abort(
                    f"{u!r} has only {alive} surviving neighbours, t={self._t} needed to "
                    "remove its masks"
                )
        self._survivors = survivors
        dropped = self._shared - survivors
        self._requests = {
            v: UnmaskRequest(
                self.round_id,
                tuple(sorted(self._nbrs[v] & survivors)),
                tuple(sorted(self._nbrs[v] & dropped)),
            )
            for v in sorted(survivors)
        }
        self._open(ServerState.UNMASK, survivors)
        return dict(self._requests)

    def _close_unmask(self) -> None:
        if self._sum is None:  # unreachable: min_clients >= 2 masked inputs arrived
            raise self._abort("no masked input to unmask")
        inputs = UnmaskInputs(
            round_id=self.round_id,
            t=self._t,
            index=self._index,
            neighbours=self._nbrs,
            advertisements=self._ads,
            survivors=self._survivors,
            dropped=self._shared - self._survivors,
            seed_shares=self._seed_shares,
            key_shares=self._key_shares,
        )
        started = time.perf_counter()
        try:
            plan = mask_plan(inputs)
        except SecAggError as exc:
            raise self._abort(str(exc)) from exc
        planned = time.perf_counter()
        apply_masks(self._sum, plan)
        self.report = UnmaskReport(
            survivors=len(inputs.survivors),
            dropped_after_sharing=len(inputs.dropped),
            self_masks=len(inputs.survivors),
            pairwise_masks=len(plan) - len(inputs.survivors),
            reconstruct_seconds=planned - started,
            expand_seconds=time.perf_counter() - planned,
        )
        self._seed_shares, self._key_shares = {}, {}
        self._move(ServerState.DONE)
