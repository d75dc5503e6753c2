"""Ingest through a real Mosquitto: publisher processes, the server's link, a real Coordinator."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from fedge.edge_client.errors import ConfigError
from fedge.edge_client.mqtt_link import LinkSettings, MqttLink
from fedge.edge_client.protocol import topics
from fedge.server.coordinator import Coordinator
from fedge.server.rounds import RoundRun
from fedge.tools.bench._common import BENCH_FLEET, Mosquitto
from fedge.tools.bench._ingest_updates import (
    POOL,
    IngestRow,
    bench_coordinator,
    check_round,
    device_ids,
    encode_pool,
    open_round,
    update_messages,
)


@dataclass(frozen=True)
class PublisherArgs:
    """What one publisher process needs to build and send its share of the updates."""

    index: int
    port: int
    spec: str
    shapes: tuple[tuple[int, ...], ...]
    round_seed: int
    base_weights: str
    devices: tuple[str, ...]


def publisher_main(args: PublisherArgs, ready: Any, go: Any, results: Any) -> None:
    """Process entry: build the messages, wait for ``go``, publish them all at QoS 1."""
    payloads = encode_pool(args.spec, args.shapes, args.round_seed, POOL, 100 + args.index)
    messages = update_messages(payloads, args.devices, args.base_weights, 1)
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{args.index}",
        protocol=paho.MQTTv311,
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", args.port, keepalive=60)
    client.loop_start()
    try:
        ready.set()
        if not go.wait(timeout=300):
            results.put({"index": args.index, "error": "never released"})
            return
        t0 = time.perf_counter()
        infos = [client.publish(topic, data, qos=1) for topic, data in messages]
        for info in infos:
            info.wait_for_publish(timeout=120)
        results.put(
            {
                "index": args.index,
                "sent": sum(i.is_published() for i in infos),
                "seconds": time.perf_counter() - t0,
            }
        )
    finally:
        client.disconnect()
        client.loop_stop()


class _TimedServer:
    """The server's MqttLink in front of a Coordinator, timing the handler and the Ack waits."""

    def __init__(self, port: int):
        self.link = MqttLink(
            LinkSettings(
                host="127.0.0.1",
                port=port,
                client_id=f"fedge-server-{BENCH_FLEET}",
                subscriptions=(
                    topics.server_up_filter(BENCH_FLEET),
                    topics.server_presence_filter(BENCH_FLEET),
                ),
                max_inflight=1000,
            )
        )
        self.coordinator: Coordinator | None = None
        self.handler_s = 0.0
        self.ack_s = 0.0

    async def publish(self, topic: str, data: bytes, qos: int = 1) -> bool:
        t = time.perf_counter()
        try:
            return await self.link.publish(topic, data, qos=qos)
        finally:
            self.ack_s += time.perf_counter() - t

    async def handle(self, topic: str, data: bytes) -> None:
        assert self.coordinator is not None
        t = time.perf_counter()
        try:
            await self.coordinator.on_message(topic, data)
        finally:
            self.handler_s += time.perf_counter() - t


class _Publishers:
    """K publisher processes, each with its share of the devices, released together."""

    def __init__(self, count: int):
        self.ctx = mp.get_context("spawn")
        self.ready = [self.ctx.Event() for _ in range(count)]
        self.go = self.ctx.Event()
        self.results = self.ctx.Queue()
        self.procs: list[Any] = []

    def start(
        self, port: int, spec: str, coordinator: Coordinator, rnd: RoundRun, ids: list[str]
    ) -> None:
        """Start one process per share of ``ids``; they build their messages, then wait."""
        k = len(self.ready)
        self.procs = [
            self.ctx.Process(
                target=publisher_main,
                daemon=True,
                args=(
                    PublisherArgs(
                        i,
                        port,
                        spec,
                        tuple(coordinator.shapes),
                        rnd.round_seed,
                        coordinator.checkpoints.weights_sha,
                        tuple(ids[i::k]),
                    ),
                    self.ready[i],
                    self.go,
                    self.results,
                ),
            )
            for i in range(k)
        ]
        for proc in self.procs:
            proc.start()

    async def release(self, rnd: RoundRun, timeout_s: float) -> tuple[float, float]:
        """Release them once all are ready; wall and CPU seconds until the round had enough."""
        for event in self.ready:
            if not await asyncio.to_thread(event.wait, 120):
                raise ConfigError("a publisher process did not get ready within 120 s")
        t0, c0 = time.perf_counter(), time.process_time()
        self.go.set()
        try:
            await asyncio.wait_for(rnd.enough.wait(), timeout=timeout_s)
        except TimeoutError:
            pass
        return time.perf_counter() - t0, time.process_time() - c0

    def join(self) -> None:
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


def through_mosquitto(
    spec: str,
    artifact_dir: Path,
    count: int,
    publishers: int,
    broker: Mosquitto,
    state_dir: Path,
    timeout_s: float = 180.0,
) -> IngestRow:
    """Updates/s from K publisher processes, through Mosquitto, into a real Coordinator."""
    pubs = _Publishers(publishers)

    async def run() -> IngestRow:
        stop = asyncio.Event()
        server = _TimedServer(broker.port)
        coordinator = bench_coordinator(artifact_dir, spec, state_dir, server.publish, count)
        server.coordinator = coordinator
        ids = device_ids(count)
        rnd = open_round(coordinator, ids)
        link_task = asyncio.create_task(server.link.run(server.handle, stop))
        await asyncio.wait_for(server.link.connected.wait(), timeout=30)
        pubs.start(broker.port, spec, coordinator, rnd, ids)
        try:
            seconds, cpu = await pubs.release(rnd, timeout_s)
            check_round(rnd, count, f"mosquitto {spec}")
            size = round(rnd.uplink_bytes / max(len(rnd.reports), 1))
            return IngestRow(
                f"mosquitto K={publishers}",
                spec,
                count,
                size,
                seconds,
                cpu,
                server.handler_s,
                server.ack_s,
            )
        finally:
            pubs.join()
            stop.set()
            await link_task
            coordinator.store.close()

    return asyncio.run(run())
