"""Benchmark of secure aggregation (SecAgg+): client stages, server unmask vs the PRG bound, Flower.

Run ``python -m tools.bench.secagg [--quick]``. For every (n, d, dropout) point one round
runs with real clients and a real server; the server lives in its own process (so its
memory is its own) and gets every message as msgpack bytes. All times are CPU seconds of
the process doing the work (``time.process_time``), which stay meaningful on a machine
shared with other jobs; Flower's are measured the same way.

What is simulated, and why the numbers still hold:

* Client stages are timed on one representative device per d, a real client with the
  full d. The other n - 1 devices are real clients too (keys, signatures, certificates,
  Shamir shares, AES-GCM, X25519) but mask a 1-element vector; the server receives a
  uniformly random d-element vector in place of their masked input. Its work does not
  depend on the values (the tests show masked inputs are uniform), so the timings and
  memory are those of a real round; only the final sum is meaningless, which is why a
  small all-real round is checked for exactness first.
* Devices drop out after ShareKeys (before MaskedInput): the expensive case, where the
  server rebuilds their masking keys and removes pairwise masks.
* (k, t) come from ``choose_graph_params`` with the planned dropout max(actual, 10 %)
  and corrupt fraction 0 (an active server, no colluding devices).
* The PRG bound is the time of AES-256-CTR over 4 d zero bytes (``update_into`` a reused
  buffer) for as many fresh keys as the server regenerated masks, measured on up to 1,000
  keys right after the unmask and scaled linearly.
* Peak server memory is the tracemalloc peak of a replay of the same message log into a
  fresh server in the server process (timing runs without tracemalloc).
* Flower (``flwr`` 1.42 in /tmp/flwr-venv): the driver below times, in that venv, every
  call on the code paths of Flower's secaggplus_mod (client) and
  SecAggPlusWorkflow.unmask_stage (server) for the same k (num_shares = k + 1: Flower
  counts the own share) and t: client share = 2 key pairs + create_shares of the seed and
  of the (PEM) masking key + per neighbour ECDH(PEM) and Fernet encrypt; client mask = per
  neighbour Fernet decrypt + seed PRG + per neighbour ECDH + PRG add + mod (quantization
  excluded: our codec does it before SecAgg); server unmask = per survivor combine_shares
  + PRG subtract, per dropped device combine_shares of its key, per (dropped, surviving
  neighbour) pair ECDH + PRG add, + mod. Each call's mean (at least one call, up to
  --flower-budget seconds of calls) is multiplied by its count: Flower's Shamir
  (pycryptodome, GF(2^128) in Python) takes seconds per secret at t ~ 100, so running
  whole rounds of it would take hours.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import shlex
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from rich.console import Console
from rich.table import Table

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.identity import issue_identity_certificate
from fedge.edge_client.secagg import (
    MaskedInput,
    MaskedInputRequest,
    Roster,
    SecAggClient,
    SecAggConfig,
    UnmaskRequest,
    decode_message,
)
from fedge.edge_client.secagg.messages import Message
from fedge.server.secagg import SecAggServer

FLOWER_PYTHON = Path("/tmp/flwr-venv/bin/python")
ROUND = "bench-1"
FLEET = "bench"
PRG_BOUND_SAMPLE = 1000


def pack(msg: Message) -> bytes:
    return bytes(msgpack.packb(msg.to_wire()))


def unpack(raw: bytes) -> Message:
    return decode_message(msgpack.unpackb(raw))


def planned_dropout(dropout: float) -> float:
    return max(dropout, 0.1)


# ---- the server process ------------------------------------------------------------------


def _fake_masked(d: int, buf: bytes) -> bytes:
    return bytes(msgpack.packb({"t": MaskedInput.TYPE, "round": ROUND, "y": buf}))


def _feed(server: SecAggServer, cmd: tuple[Any, ...], fake: bytes) -> float:
    """Apply a logged ("msgs", batch) or ("masked", batch, fake_ids) command to a server.

    Returns the seconds spent inside ``receive`` (decoding excluded).
    """
    batch = list(cmd[1]) + ([(u, fake) for u in cmd[2]] if cmd[0] == "masked" else [])
    spent = 0.0
    for device, raw in batch:
        msg = unpack(raw)
        t0 = time.process_time()
        server.receive(device, msg)
        spent += time.process_time() - t0
    return spent


def _prg_bound(d: int, masks: int) -> float:
    sample = min(masks, PRG_BOUND_SAMPLE)
    zeros = bytes(4 * d)
    out = bytearray(4 * d + 15)
    keys = [os.urandom(32) for _ in range(sample)]
    t0 = time.process_time()
    for key in keys:
        Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update_into(zeros, out)
    return (time.process_time() - t0) * masks / max(sample, 1)


def server_worker(
    conn: Connection,
    config: SecAggConfig,
    devices: list[str],
    seed: bytes,
    enrolment: Ed25519PublicKey,
) -> None:
    """Serve commands from the benchmark driver: msgs, masked, close, finish."""

    def fresh() -> SecAggServer:
        return SecAggServer(ROUND, config, devices, enrolment_public_key=enrolment, graph_seed=seed)

    server = fresh()
    fake = _fake_masked(config.dimension, os.urandom(4 * config.dimension))
    log: list[tuple[Any, ...]] = []
    masked_receive = 0.0
    unmask_seconds = 0.0
    while True:
        cmd = conn.recv()
        if cmd[0] in ("msgs", "masked"):
            log.append(cmd)
            spent = _feed(server, cmd, fake)
            if cmd[0] == "masked":
                masked_receive += spent
            conn.send(None)
        elif cmd[0] == "close":
            log.append(cmd)
            t0 = time.process_time()
            try:
                requests = server.close_stage()
            except SecAggError as exc:
                conn.send(("error", str(exc)))
                continue
            elapsed = time.process_time() - t0
            if not requests:
                unmask_seconds = elapsed
            conn.send(("ok", {u: pack(r) for u, r in requests.items()}))
        elif cmd[0] == "finish":
            report = server.report
            assert report is not None
            result_digest = hashlib.sha256(server.result().tobytes()).hexdigest()
            masks = report.self_masks + report.pairwise_masks
            bound = _prg_bound(config.dimension, masks)
            tracemalloc.start()
            replay = fresh()
            for old in log:
                if old[0] == "close":
                    replay.close_stage()
                else:
                    _feed(replay, old, fake)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            conn.send(
                {
                    "unmask_s": unmask_seconds,
                    "reconstruct_s": report.reconstruct_seconds,
                    "expand_s": report.expand_seconds,
                    "masks": masks,
                    "pairwise_masks": report.pairwise_masks,
                    "prg_bound_s": bound,
                    "peak_mem_mb": peak / 2**20,
                    "add_ms_per_input": 1e3 * masked_receive / max(report.survivors, 1),
                    "result_sha256": result_digest,
                }
            )
            return


class ServerHandle:
    """One server process for one dimension d."""

    def __init__(
        self, config: SecAggConfig, devices: list[str], seed: bytes, enrolment: Ed25519PublicKey
    ):
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=server_worker, args=(child, config, devices, seed, enrolment), daemon=True
        )
        self.proc.start()
        child.close()

    def call(self, cmd: tuple[Any, ...]) -> Any:
        self.conn.send(cmd)
        return self.conn.recv()

    def close_stage(self) -> dict[str, bytes]:
        status, payload = self.call(("close",))
        if status != "ok":
            raise SecAggError(payload)
        return dict(payload)

    def finish(self) -> dict[str, Any]:
        stats = dict(self.call(("finish",)))
        self.proc.join(timeout=60)
        return stats


# ---- one protocol run --------------------------------------------------------------------


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


def run_point(
    n: int, dims: Sequence[int], dropout: float, seed: int, all_real: bool = False
) -> list[PointResult]:
    """One round for n devices with one server process per d; devices drop after ShareKeys.

    With ``all_real`` every device masks a real d-vector (only sensible for small n and d)
    and the result is checked against the plain sum.
    """
    rng = random.Random(seed)
    gen = np.random.default_rng(seed)
    ids = [f"dev-{i:05d}" for i in range(n)]
    rep_of = {ids[i]: d for i, d in enumerate(dims)}  # representative device -> its d
    plan = planned_dropout(dropout)
    configs = {d: SecAggConfig(FLEET, d, dropout_rate=plan) for d in dims}
    small = SecAggConfig(FLEET, 1, dropout_rate=plan)
    dim_of = {u: rep_of.get(u, dims[0] if all_real else 1) for u in ids}
    authority = Ed25519PrivateKey.generate()
    clients: dict[str, SecAggClient] = {}
    for u in ids:
        key = Ed25519PrivateKey.generate()
        cert = issue_identity_certificate(authority, FLEET, u, key.public_key())
        config = configs.get(dim_of[u], small)
        # Representatives check every neighbour's certificate, as devices do; the others
        # only advance the round, so they skip that (their time is not measured).
        checks = authority.public_key() if u in rep_of or all_real else None
        clients[u] = SecAggClient(u, key, ROUND, config, checks, cert)
    inputs = {u: gen.integers(0, 2**32, dim_of[u], dtype=np.uint64).astype(np.uint32) for u in ids}
    graph_seed = os.urandom(32)
    servers = {d: ServerHandle(configs[d], ids, graph_seed, authority.public_key()) for d in dims}
    rec = Recorder(list(rep_of))

    def to_servers(batch: list[tuple[str, bytes]]) -> None:
        for handle in servers.values():
            handle.call(("msgs", batch))

    def close_all() -> dict[str, bytes]:
        outs = [handle.close_stage() for handle in servers.values()]
        if any(o != outs[0] for o in outs[1:]):
            raise SecAggError("server processes disagree")
        rec.received(outs[0])
        return outs[0]

    to_servers([(u, rec.run(u, "advertise", clients[u].advertise)) for u in ids])
    rosters = close_all()
    shares = []
    for u in ids:
        roster = Roster.from_wire(msgpack.unpackb(rosters[u]))
        shares.append((u, rec.run(u, "share_keys", partial(clients[u].share_keys, roster))))
    to_servers(shares)
    requests = close_all()
    dropped = set(rng.sample([u for u in ids if u not in rep_of], round(dropout * n)))
    real: list[tuple[str, bytes]] = []
    for u in ids:
        if u in dropped:
            continue
        req = MaskedInputRequest.from_wire(msgpack.unpackb(requests[u]))
        raw = rec.run(u, "masked_input", partial(clients[u].masked_input, req, inputs[u]))
        if dim_of[u] > 1:
            real.append((u, raw))
    for d, handle in servers.items():
        mine = [(u, raw) for u, raw in real if dim_of[u] == d]
        fakes = [u for u in ids if u not in dropped and dim_of[u] != d]
        handle.call(("masked", mine, fakes))
    unmask = close_all()
    to_servers(
        [
            (
                u,
                rec.run(
                    u,
                    "unmask",
                    partial(clients[u].unmask, UnmaskRequest.from_wire(msgpack.unpackb(raw))),
                ),
            )
            for u, raw in unmask.items()
        ]
    )
    close_all()
    k, t = configs[dims[0]].graph_params(n)
    results = []
    for rep, d in rep_of.items():
        stats = servers[d].finish()
        if all_real:
            total = np.zeros(d, dtype=np.uint32)
            for u in ids:
                if u not in dropped:
                    total += inputs[u]
            stats["exact"] = hashlib.sha256(total.tobytes()).hexdigest() == stats["result_sha256"]
        results.append(
            PointResult(n, d, dropout, k, t, rec.ms[rep], rec.up[rep], rec.down[rep], stats)
        )
    return results


# ---- Flower ------------------------------------------------------------------------------

FLOWER_DRIVER = r"""
import json, os, sys, time
import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt, encrypt, generate_shared_key)
from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_addition, parameters_mod
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen, share_keys_plaintext_concat, share_keys_plaintext_separate)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key, bytes_to_public_key, generate_key_pairs, private_key_to_bytes,
    public_key_to_bytes)

p = json.loads(sys.stdin.read())
k, t, budget, mod = p["k"], p["t"], p["unit_budget_s"], 1 << 32
calls = {}

def unit(name, fn):
    # Mean seconds of one call of fn: at least one call, more while within the budget.
    done, spent = 0, 0.0
    while done == 0 or spent < budget:
        t0 = time.process_time(); fn(); spent += time.process_time() - t0; done += 1
    calls[name] = done
    return spent / done

def keypair():
    sk, pk = generate_key_pairs()
    return private_key_to_bytes(sk), public_key_to_bytes(pk)

sk1, pk1 = keypair()
sk2, pk2 = keypair()
peer_sk, peer_pk = keypair()
rd_seed = os.urandom(32)
b_shares = create_shares(rd_seed, t, k + 1)
sk1_shares = create_shares(sk1, t, k + 1)
peer_key = generate_shared_key(bytes_to_private_key(sk2), bytes_to_public_key(peer_pk))
blob = encrypt(peer_key, share_keys_plaintext_concat(1, 2, b_shares[1], sk1_shares[1]))

def share_peer():
    key = generate_shared_key(bytes_to_private_key(sk2), bytes_to_public_key(peer_pk))
    encrypt(key, share_keys_plaintext_concat(1, 2, b_shares[1], sk1_shares[1]))

u = {
    "keygen": unit("keygen", keypair),
    "create_seed": unit("create_seed", lambda: create_shares(rd_seed, t, k + 1)),
    "create_sk": unit("create_sk", lambda: create_shares(sk1, t, k + 1)),
    "share_peer": unit("share_peer", share_peer),
    "decrypt": unit("decrypt", lambda: share_keys_plaintext_separate(decrypt(peer_key, blob))),
    "ecdh": unit("ecdh", lambda: generate_shared_key(
        bytes_to_private_key(sk1), bytes_to_public_key(peer_pk))),
    "combine_seed": unit("combine_seed", lambda: combine_shares(b_shares[:t])),
    "combine_sk": unit("combine_sk", lambda: combine_shares(sk1_shares[:t])),
}
out = {"units": u, "calls": calls, "per_d": {}}
S, Dr, P = p["survivors"], p["dropped"], p["pairs"]
for d in p["dims"]:
    acc = [np.zeros(d, dtype=np.int64)]
    mask = lambda: parameters_addition(acc, pseudo_rand_gen(rd_seed, mod, [(d,)]))
    prg = unit(f"prg_add_{d}", mask)
    mod_s = unit(f"mod_{d}", lambda: parameters_mod(acc, mod))
    out["per_d"][str(d)] = {
        "client_share_s": 2 * u["keygen"] + u["create_seed"] + u["create_sk"] + k * u["share_peer"],
        "client_mask_s": k * u["decrypt"] + prg + k * (u["ecdh"] + prg) + mod_s,
        "server_unmask_s": S * (u["combine_seed"] + prg) + Dr * u["combine_sk"]
        + P * (u["ecdh"] + prg) + mod_s,
    }
print(json.dumps(out))
"""


def run_flower(
    points: Sequence[PointResult], dropped: int, unit_budget_s: float
) -> list[dict[str, Any]]:
    """Flower's SecAgg+ costs for the points of one (n, dropout), one dict per point.

    Every Flower call on the path (see the module docstring) is timed in Flower's own
    venv (mean over at least one call and up to ``unit_budget_s`` seconds of calls) and
    multiplied by how often the path makes it for these n, k, t and dropouts.
    """
    first = points[0]
    params = {
        "k": first.k,
        "t": first.t,
        "dims": [p.d for p in points],
        "survivors": first.n - dropped,
        "dropped": dropped,
        "pairs": first.server["pairwise_masks"],
        "unit_budget_s": unit_budget_s,
    }
    proc = subprocess.run(
        [str(FLOWER_PYTHON), "-c", FLOWER_DRIVER],
        input=json.dumps(params),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        error = proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"
        return [{"error": error} for _ in points]
    out = json.loads(proc.stdout)
    return [
        {**out["per_d"][str(p.d)], "units_s": out["units"], "calls": out["calls"]} for p in points
    ]


# ---- reporting ---------------------------------------------------------------------------


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def print_tables(console: Console, results: list[PointResult], command: str) -> None:
    ours = Table(title="fedge SecAgg+ (one representative client; server in its own process)")
    for col in (
        "n",
        "d",
        "drop",
        "k/t",
        "adv ms",
        "share ms",
        "mask ms",
        "unmask ms",
        "KiB up/down",
        "srv add ms",
        "srv unmask",
        "PRG bound",
        "ratio",
        "masks",
        "peak MiB",
    ):
        ours.add_column(col, justify="right")
    for r in results:
        s = r.server
        ours.add_row(
            str(r.n),
            f"{r.d:,}",
            f"{r.dropout:.0%}",
            f"{r.k}/{r.t}",
            f"{r.client_ms['advertise']:.1f}",
            f"{r.client_ms['share_keys']:.0f}",
            f"{r.client_ms['masked_input']:.0f}",
            f"{r.client_ms['unmask']:.1f}",
            f"{r.bytes_up / 1024:.0f}/{r.bytes_down / 1024:.0f}",
            f"{s['add_ms_per_input']:.2f}",
            _fmt_s(s["unmask_s"]),
            _fmt_s(s["prg_bound_s"]),
            f"{s['unmask_s'] / s['prg_bound_s']:.2f}x",
            f"{s['masks']:,}",
            f"{s['peak_mem_mb']:.1f}",
        )
    console.print(ours)
    if not any(r.flower for r in results):
        console.print(f"command: {command}")
        return
    vs = Table(title="Flower 1.42 SecAgg+ code paths (same n, d, k, t, dropouts) vs fedge")
    for col in (
        "n",
        "d",
        "drop",
        "share: flwr / ours",
        "mask: flwr / ours",
        "unmask: flwr / ours",
        "unmask speed-up",
    ):
        vs.add_column(col, justify="right")
    for r in results:
        f = r.flower
        if not f or "error" in f:
            vs.add_row(str(r.n), f"{r.d:,}", f"{r.dropout:.0%}", f.get("error", "-"), "", "", "")
            continue
        vs.add_row(
            str(r.n),
            f"{r.d:,}",
            f"{r.dropout:.0%}",
            f"{_fmt_s(f['client_share_s'])} / {_fmt_s(r.client_ms['share_keys'] / 1e3)}",
            f"{_fmt_s(f['client_mask_s'])} / {_fmt_s(r.client_ms['masked_input'] / 1e3)}",
            f"{_fmt_s(f['server_unmask_s'])} / {_fmt_s(r.server['unmask_s'])}",
            f"{f['server_unmask_s'] / r.server['unmask_s']:.1f}x",
        )
    console.print(vs)
    console.print(f"command: {command}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print rich tables and write JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.secagg", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="n=100, d=100k only (about a minute)")
    parser.add_argument("--n", type=int, nargs="*", help="override the n values")
    parser.add_argument("--d", type=int, nargs="*", help="override the d values")
    parser.add_argument("--dropout", type=float, nargs="*", help="override the dropout rates")
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower comparison")
    parser.add_argument(
        "--flower-budget", type=float, default=0.5, help="seconds of calls per Flower unit cost"
    )
    parser.add_argument("--json", type=Path, default=Path("out/bench/secagg.json"))
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 190))
    ns = args.n or ([100] if args.quick else [100, 500, 1000])
    ds = args.d or ([100_000] if args.quick else [100_000, 1_000_000])
    drops = args.dropout if args.dropout is not None else [0.0, 0.1, 0.3]
    flower = not args.no_flower and FLOWER_PYTHON.exists()
    if not args.no_flower and not flower:
        console.print(f"[yellow]Flower venv not found at {FLOWER_PYTHON}: skipping Flower[/]")

    check = run_point(50, [1000], 0.1, seed=1, all_real=True)[0]
    console.print(
        f"exactness check (n=50, d=1000, 10 % dropout, all clients real): "
        f"{'exact' if check.server['exact'] else 'WRONG'}"
    )
    if not check.server["exact"]:
        return 1
    results: list[PointResult] = []
    started = time.perf_counter()
    for n in ns:
        for dropout in drops:
            points = run_point(n, ds, dropout, seed=n)
            if flower:
                costs = run_flower(points, round(dropout * n), args.flower_budget)
                for point, cost in zip(points, costs, strict=True):
                    point.flower = cost
            results.extend(points)
            elapsed = time.perf_counter() - started
            console.print(f"  done n={n} dropout={dropout:.0%} ({elapsed:.0f} s elapsed)")
    command = "python -m tools.bench.secagg " + shlex.join(sys.argv[1:] if argv is None else argv)
    print_tables(console, results, command.strip())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"command": command.strip(), "points": [asdict(r) for r in results]}, indent=1)
    )
    console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
