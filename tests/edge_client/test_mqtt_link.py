"""MqttLink against a real Mosquitto: sessions of one event loop share one housekeeping timer."""

from __future__ import annotations

import asyncio

from fedge.edge_client import mqtt_link
from fedge.edge_client.mqtt_link import LinkSettings, MqttLink
from tests.fedge_testing import MosquittoProcess


def _link(broker: MosquittoProcess, name: str, keepalive_s: int = 30) -> MqttLink:
    return MqttLink(LinkSettings(host="127.0.0.1", port=broker.port, client_id=name,
                                 keepalive_s=keepalive_s, subscriptions=(f"t/{name}",)))


async def _ignore(topic: str, payload: bytes) -> None:
    del topic, payload


def test_sessions_of_a_loop_share_one_housekeeping_timer(mosquitto: MosquittoProcess) -> None:
    async def main() -> tuple[int, int]:
        stop = asyncio.Event()
        links = [_link(mosquitto, f"dev-{i}") for i in range(3)]
        tasks = [asyncio.create_task(link.run(_ignore, stop)) for link in links]
        await asyncio.wait_for(asyncio.gather(*(k.connected.wait() for k in links)), 10)
        shared = mqtt_link._housekeeping[asyncio.get_running_loop()]
        during = len(shared.clients)
        stop.set()
        await asyncio.gather(*tasks)
        return during, len(shared.clients)

    during, after = asyncio.run(main())
    assert (during, after) == (3, 0)


def test_the_shared_timer_keeps_idle_sessions_alive(mosquitto: MosquittoProcess) -> None:
    """With a 1 s keepalive Mosquitto drops a silent client at its next check (every ~5 s)."""

    async def main() -> int:
        stop = asyncio.Event()
        link = _link(mosquitto, "idle", keepalive_s=1)
        task = asyncio.create_task(link.run(_ignore, stop))
        await asyncio.wait_for(link.connected.wait(), 10)
        await asyncio.sleep(8.0)  # past Mosquitto's keepalive check, no traffic of our own
        stop.set()
        await task
        return link.stats.connects

    assert asyncio.run(main()) == 1
