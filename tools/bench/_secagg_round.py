"""One SecAgg+ benchmark point: real clients drive one round through a server process per d."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgpack
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.identity import issue_identity_certificate
from fedge.edge_client.secagg import (
    MaskedInputRequest,
    Roster,
    SecAggClient,
    SecAggConfig,
    UnmaskRequest,
)
from fedge.edge_client.secagg.messages import Message
from fedge.tools.bench._secagg_server import FLEET, ROUND, ServerHandle, pack


def planned_dropout(dropout: float) -> float:
    return max(dropout, 0.1)


@dataclass
class PointResult:
    n: int
    d: int
    dropout: float
    k: int
    t: int
    client_ms: dict[str, float]
    bytes_up: int
    bytes_down: int
    server: dict[str, Any]
    flower: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Times the representative clients' stages and counts their wire bytes."""

    def __init__(self, reps: Sequence[str]):
        self.ms: dict[str, dict[str, float]] = {r: {} for r in reps}
        self.up = dict.fromkeys(reps, 0)
        self.down = dict.fromkeys(reps, 0)

    def run(self, device: str, stage: str, step: Callable[[], Message]) -> bytes:
        t0 = time.process_time()
        msg = step()
        elapsed = time.process_time() - t0
        raw = pack(msg)
        if device in self.ms:
            self.ms[device][stage] = 1e3 * elapsed
            self.up[device] += len(raw)
        return raw

    def received(self, requests: dict[str, bytes]) -> None:
        for device in self.down:
            self.down[device] += len(requests.get(device, b""))


class _Point:
    """The clients, their inputs and the server processes of one (n, dims, dropout) round."""

    def __init__(
        self, n: int, dims: Sequence[int], dropout: float, gen: np.random.Generator, all_real: bool
    ):
        self.ids = [f"dev-{i:05d}" for i in range(n)]
        self.rep_of = {self.ids[i]: d for i, d in enumerate(dims)}  # representative -> its d
        plan = planned_dropout(dropout)
        self.configs = {d: SecAggConfig(FLEET, d, dropout_rate=plan) for d in dims}
        small = SecAggConfig(FLEET, 1, dropout_rate=plan)
        self.dim_of = {u: self.rep_of.get(u, dims[0] if all_real else 1) for u in self.ids}
        authority = Ed25519PrivateKey.generate()
        self.clients: dict[str, SecAggClient] = {}
        for u in self.ids:
            key = Ed25519PrivateKey.generate()
            cert = issue_identity_certificate(authority, FLEET, u, key.public_key())
            config = self.configs.get(self.dim_of[u], small)
            # Representatives check every neighbour's certificate, as devices do; the others
            # only advance the round, so they skip that (their time is not measured).
            checks = authority.public_key() if u in self.rep_of or all_real else None
            self.clients[u] = SecAggClient(u, key, ROUND, config, checks, cert)
        self.inputs = {
            u: gen.integers(0, 2**32, self.dim_of[u], dtype=np.uint64).astype(np.uint32)
            for u in self.ids
        }
        graph_seed = os.urandom(32)
        self.servers = {
            d: ServerHandle(self.configs[d], self.ids, graph_seed, authority.public_key())
            for d in dims
        }
        self.rec = Recorder(list(self.rep_of))

    def to_servers(self, batch: list[tuple[str, bytes]]) -> None:
        for handle in self.servers.values():
            handle.call(("msgs", batch))

    def close_all(self) -> dict[str, bytes]:
        outs = [handle.close_stage() for handle in self.servers.values()]
        if any(o != outs[0] for o in outs[1:]):
            raise SecAggError("server processes disagree")
        self.rec.received(outs[0])
        return outs[0]

    def advertise_and_share(self) -> dict[str, bytes]:
        """AdvertiseKeys then ShareKeys for every device; the MaskedInput requests."""
        rec, clients = self.rec, self.clients
        self.to_servers([(u, rec.run(u, "advertise", clients[u].advertise)) for u in self.ids])
        rosters = self.close_all()
        shares = []
        for u in self.ids:
            roster = Roster.from_wire(msgpack.unpackb(rosters[u]))
            shares.append((u, rec.run(u, "share_keys", partial(clients[u].share_keys, roster))))
        self.to_servers(shares)
        return self.close_all()

    def masked_inputs(self, requests: dict[str, bytes], dropped: set[str]) -> dict[str, bytes]:
        """MaskedInput from the survivors (fakes stand in for 1-element ones); unmask requests."""
        real: list[tuple[str, bytes]] = []
        for u in self.ids:
            if u in dropped:
                continue
            req = MaskedInputRequest.from_wire(msgpack.unpackb(requests[u]))
            raw = self.rec.run(
                u, "masked_input", partial(self.clients[u].masked_input, req, self.inputs[u])
            )
            if self.dim_of[u] > 1:
                real.append((u, raw))
        for d, handle in self.servers.items():
            mine = [(u, raw) for u, raw in real if self.dim_of[u] == d]
            fakes = [u for u in self.ids if u not in dropped and self.dim_of[u] != d]
            handle.call(("masked", mine, fakes))
        return self.close_all()

    def unmask(self, unmask: dict[str, bytes]) -> None:
        """Unmask: the survivors' shares, then the servers close the round."""
        self.to_servers(
            [
                (
                    u,
                    self.rec.run(
                        u,
                        "unmask",
                        partial(
                            self.clients[u].unmask, UnmaskRequest.from_wire(msgpack.unpackb(raw))
                        ),
                    ),
                )
                for u, raw in unmask.items()
            ]
        )
        self.close_all()

    def results(self, dropout: float, dropped: set[str], all_real: bool) -> list[PointResult]:
        """One result per representative (per d); with ``all_real`` the sum is checked too."""
        dims = list(self.configs)
        k, t = self.configs[dims[0]].graph_params(len(self.ids))
        results = []
        for rep, d in self.rep_of.items():
            stats = self.servers[d].finish()
            if all_real:
                total = np.zeros(d, dtype=np.uint32)
                for u in self.ids:
                    if u not in dropped:
                        total += self.inputs[u]
                digest = hashlib.sha256(total.tobytes()).hexdigest()
                stats["exact"] = digest == stats["result_sha256"]
            rec = self.rec
            results.append(
                PointResult(
                    len(self.ids), d, dropout, k, t, rec.ms[rep], rec.up[rep], rec.down[rep], stats
                )
            )
        return results


def run_point(
    n: int, dims: Sequence[int], dropout: float, seed: int, all_real: bool = False
) -> list[PointResult]:
    """One round for n devices with one server process per d; devices drop after ShareKeys.

    With ``all_real`` every device masks a real d-vector (only sensible for small n and d)
    and the result is checked against the plain sum.
    """
    rng = random.Random(seed)
    point = _Point(n, dims, dropout, np.random.default_rng(seed), all_real)
    requests = point.advertise_and_share()
    dropped = set(rng.sample([u for u in point.ids if u not in point.rep_of], round(dropout * n)))
    point.unmask(point.masked_inputs(requests, dropped))
    return point.results(dropout, dropped, all_real)
