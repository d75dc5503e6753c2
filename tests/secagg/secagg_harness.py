"""Test harness: a fleet of real SecAgg clients and a real server, messages through msgpack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.identity import IdentityCertificate, issue_identity_certificate
from fedge.edge_client.secagg import SecAggClient, SecAggConfig, decode_message, neighbourhoods
from fedge.edge_client.secagg.messages import Message
from fedge.server.secagg import SecAggServer, ServerState

STAGES = ("advertise", "share", "masked", "unmask")


def wire(msg: Message) -> Any:
    """What the other side receives: to_wire -> msgpack bytes -> from_wire."""
    return decode_message(msgpack.unpackb(msgpack.packb(msg.to_wire())))


def device_ids(n: int) -> list[str]:
    return [f"dev-{i:03d}" for i in range(n)]


@dataclass
class Fleet:
    """Identity keys, certificates and one client per device for one round."""

    config: SecAggConfig
    round_id: str
    ids: list[str]
    enrolment: Ed25519PrivateKey | None
    identities: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    certificates: dict[str, IdentityCertificate] = field(default_factory=dict)
    clients: dict[str, SecAggClient] = field(default_factory=dict)

    @classmethod
    def create(
        cls, config: SecAggConfig, n: int, round_id: str = "round-1", enrolment: bool = True
    ) -> Fleet:
        fleet = cls(
            config, round_id, device_ids(n), Ed25519PrivateKey.generate() if enrolment else None
        )
        for d in fleet.ids:
            key = Ed25519PrivateKey.generate()
            fleet.identities[d] = key
            if fleet.enrolment is not None:
                fleet.certificates[d] = issue_identity_certificate(
                    fleet.enrolment, config.fleet, d, key.public_key()
                )
            fleet.clients[d] = fleet.client(d, round_id)
        return fleet

    def client(self, device_id: str, round_id: str) -> SecAggClient:
        return SecAggClient(
            device_id,
            self.identities[device_id],
            round_id,
            self.config,
            self.enrolment.public_key() if self.enrolment is not None else None,
            self.certificates.get(device_id),
        )

    def server(self, round_id: str | None = None) -> SecAggServer:
        return SecAggServer(
            round_id or self.round_id,
            self.config,
            self.ids,
            enrolment_public_key=self.enrolment.public_key() if self.enrolment else None,
        )


def random_inputs(ids: list[str], d: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 2**32, size=d, dtype=np.uint64).astype(np.uint32) for u in ids}


def plain_sum(
    inputs: dict[str, np.ndarray], who: list[str] | tuple[str, ...], d: int
) -> np.ndarray:
    total = np.zeros(d, dtype=np.uint32)
    for u in who:
        total += inputs[u]
    return total


@dataclass
class RoundOutcome:
    server: SecAggServer
    inputs: dict[str, np.ndarray]
    transcript: list[tuple[str, str, Any]]  # (direction, device, wire dict) seen by the server
    error: SecAggError | None


def run_round(
    fleet: Fleet, inputs: dict[str, np.ndarray], drops: dict[str, set[str]] | None = None
) -> RoundOutcome:
    """Run all four stages; a device in drops[stage] stays silent from that stage on."""
    drops = drops or {}
    server = fleet.server()
    transcript: list[tuple[str, str, Any]] = []
    gone: set[str] = set()

    def send(device: str, msg: Message) -> None:
        transcript.append(("up", device, msg.to_wire()))
        server.receive(device, wire(msg))

    try:
        gone |= drops.get("advertise", set())
        for u in fleet.ids:
            if u not in gone:
                send(u, fleet.clients[u].advertise())
        requests: dict[str, Any] = dict(server.close_stage())
        for stage in ("share", "masked", "unmask"):
            gone |= drops.get(stage, set())
            for u, req in requests.items():
                transcript.append(("down", u, req.to_wire()))
                if u in gone:
                    continue
                client = fleet.clients[u]
                if stage == "share":
                    send(u, client.share_keys(wire(req)))
                elif stage == "masked":
                    send(u, client.masked_input(wire(req), inputs[u]))
                else:
                    send(u, client.unmask(wire(req)))
            requests = dict(server.close_stage())
    except SecAggError as exc:
        assert server.state is ServerState.ABORTED, f"client refused in a valid run: {exc}"
        return RoundOutcome(server, inputs, transcript, exc)
    return RoundOutcome(server, inputs, transcript, None)


def expected_outcome(
    config: SecAggConfig, ids: list[str], seed: bytes, drops: dict[str, set[str]]
) -> tuple[str, set[str]]:
    """Independent model of when a round must succeed: ('ok', survivors) or ('abort', stage)."""
    u1 = sorted(set(ids) - drops.get("advertise", set()))
    if len(u1) < config.min_clients:
        return "abort", {"advertise"}
    k, t = config.graph_params(len(u1))
    nbrs = neighbourhoods(u1, k, seed)
    u2 = set(u1) - drops.get("share", set())
    while weak := {v for v in u2 if len(nbrs[v] & u2) < t}:
        u2 -= weak
    if len(u2) < config.min_clients:
        return "abort", {"share"}
    u3 = u2 - drops.get("masked", set())
    if len(u3) < config.min_clients:
        return "abort", {"masked"}
    for u in u2:
        alive = len(nbrs[u] & u3)
        if (u in u3 or alive) and alive < t:
            return "abort", {"masked"}
    u4 = u3 - drops.get("unmask", set())
    for u in u2:
        if (u in u3 or nbrs[u] & u3) and len(nbrs[u] & u4) < t:
            return "abort", {"unmask"}
    return "ok", u3
