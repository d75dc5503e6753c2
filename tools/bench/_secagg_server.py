"""The SecAgg+ benchmark's server process: one SecAggServer per d, fed msgpack bytes over a pipe."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import time
import tracemalloc
from multiprocessing.connection import Connection
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedge.edge_client.errors import SecAggError
from fedge.edge_client.secagg import MaskedInput, SecAggConfig, decode_message
from fedge.edge_client.secagg.messages import Message
from fedge.server.secagg import SecAggServer

ROUND = "bench-1"
FLEET = "bench"
PRG_BOUND_SAMPLE = 1000


def pack(msg: Message) -> bytes:
    return bytes(msgpack.packb(msg.to_wire()))


def unpack(raw: bytes) -> Message:
    return decode_message(msgpack.unpackb(raw))


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


class _Worker:
    """The server side of one d: the live server, the command log and the CPU times so far."""

    def __init__(
        self, config: SecAggConfig, devices: list[str], seed: bytes, enrolment: Ed25519PublicKey
    ):
        self.config, self.devices, self.seed, self.enrolment = config, devices, seed, enrolment
        self.server = self.fresh()
        self.fake = _fake_masked(config.dimension, os.urandom(4 * config.dimension))
        self.log: list[tuple[Any, ...]] = []
        self.masked_receive = 0.0
        self.unmask_seconds = 0.0

    def fresh(self) -> SecAggServer:
        return SecAggServer(
            ROUND,
            self.config,
            self.devices,
            enrolment_public_key=self.enrolment,
            graph_seed=self.seed,
        )

    def feed(self, cmd: tuple[Any, ...]) -> None:
        """A batch of messages (or masked inputs, real and fake) into the server."""
        self.log.append(cmd)
        spent = _feed(self.server, cmd, self.fake)
        if cmd[0] == "masked":
            self.masked_receive += spent

    def close(self, cmd: tuple[Any, ...]) -> tuple[str, Any]:
        """Close the stage: ("ok", the next requests as bytes) or ("error", why)."""
        self.log.append(cmd)
        t0 = time.process_time()
        try:
            requests = self.server.close_stage()
        except SecAggError as exc:
            return ("error", str(exc))
        elapsed = time.process_time() - t0
        if not requests:
            self.unmask_seconds = elapsed
        return ("ok", {u: pack(r) for u, r in requests.items()})

    def peak_memory(self) -> int:
        """tracemalloc peak of the logged round replayed into a fresh server (not timed)."""
        tracemalloc.start()
        replay = self.fresh()
        for old in self.log:
            if old[0] == "close":
                replay.close_stage()
            else:
                _feed(replay, old, self.fake)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    def finish(self) -> dict[str, Any]:
        """The round's server statistics, PRG bound and peak memory."""
        report = self.server.report
        assert report is not None
        result_digest = hashlib.sha256(self.server.result().tobytes()).hexdigest()
        masks = report.self_masks + report.pairwise_masks
        bound = _prg_bound(self.config.dimension, masks)
        peak = self.peak_memory()
        return {
            "unmask_s": self.unmask_seconds,
            "reconstruct_s": report.reconstruct_seconds,
            "expand_s": report.expand_seconds,
            "masks": masks,
            "pairwise_masks": report.pairwise_masks,
            "prg_bound_s": bound,
            "peak_mem_mb": peak / 2**20,
            "add_ms_per_input": 1e3 * self.masked_receive / max(report.survivors, 1),
            "result_sha256": result_digest,
        }


def server_worker(
    conn: Connection,
    config: SecAggConfig,
    devices: list[str],
    seed: bytes,
    enrolment: Ed25519PublicKey,
) -> None:
    """Serve commands from the benchmark driver: msgs, masked, close, finish."""
    worker = _Worker(config, devices, seed, enrolment)
    while True:
        cmd = conn.recv()
        if cmd[0] in ("msgs", "masked"):
            worker.feed(cmd)
            conn.send(None)
        elif cmd[0] == "close":
            conn.send(worker.close(cmd))
        elif cmd[0] == "finish":
            conn.send(worker.finish())
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
