"""In-process ingest: the server's own per-update steps, then a real Coordinator.on_message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from fedge.edge_client import codec
from fedge.edge_client.errors import ConfigError
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.protocol.envelope import DEFAULT_LIMITS, ReplayGuard, unpack
from fedge.server.aggregator import StreamingMean
from fedge.tools.bench._ingest_updates import (
    POOL,
    IngestRow,
    bench_coordinator,
    check_round,
    device_ids,
    encode_pool,
    mean_len,
    open_round,
    update_messages,
)


def decode_path(spec: str, shapes: Sequence[tuple[int, ...]], count: int) -> IngestRow:
    """Time the server's per-update steps on ``count`` pre-built messages."""
    seed_of_round = 12345
    messages = update_messages(
        encode_pool(spec, shapes, seed_of_round, POOL, 1), device_ids(count), "0" * 64, 1
    )
    parsed = codec.parse_spec(spec)
    aggregator = StreamingMean(shapes, 10_000)
    replay = ReplayGuard()
    t0, c0 = time.perf_counter(), time.process_time()
    for topic, data in messages:
        _, device_id, _ = topics.parse_device_topic(topic)
        envelope = unpack(data, device_id, DEFAULT_LIMITS)
        replay.check(envelope)
        update = m.parse(envelope, DEFAULT_LIMITS)
        assert isinstance(update, m.Update)
        delta = codec.decode_update(update.payload, parsed, shapes, round_seed=seed_of_round)
        aggregator.add(delta, update.metrics.examples)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if aggregator.count != count:
        raise ConfigError(f"decode path accumulated {aggregator.count} of {count} updates")
    return IngestRow("decode path", spec, count, mean_len(messages), seconds, cpu)


def coordinator_in_process(spec: str, artifact_dir: Path, count: int, state_dir: Path) -> IngestRow:
    """Time a real ``Coordinator.on_message`` on ``count`` pre-built update messages."""

    async def drop(topic: str, data: bytes, qos: int = 1) -> bool:
        return True

    async def run() -> IngestRow:
        coordinator = bench_coordinator(artifact_dir, spec, state_dir, drop, count)
        ids = device_ids(count)
        rnd = open_round(coordinator, ids)
        messages = update_messages(
            encode_pool(spec, coordinator.shapes, rnd.round_seed, POOL, 2),
            ids,
            coordinator.checkpoints.weights_sha,
            rnd.number,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        for topic, data in messages:
            await coordinator.on_message(topic, data)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        coordinator.store.close()
        check_round(rnd, count, f"coordinator {spec}")
        return IngestRow("coordinator", spec, count, mean_len(messages), seconds, cpu)

    return asyncio.run(run())
