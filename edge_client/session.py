"""The device's MQTT session: link, presence and last will, the checked inbox, send and receive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fedge.edge_client.config import DeviceConfig
from fedge.edge_client.errors import ProtocolError
from fedge.edge_client.mqtt_link import LinkSettings, MqttLink
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol import topics
from fedge.edge_client.protocol.envelope import DEFAULT_LIMITS, SERVER_ID, ReplayGuard, unpack

log = logging.getLogger("fedge.device")


@dataclass(frozen=True)
class Inbound:
    """A message from the server as the session's inbox holds it."""

    message: m.Message
    job_id: str | None
    round_id: int | None
    raw: bytes  # the packed envelope as it arrived


def link_settings(config: DeviceConfig) -> LinkSettings:
    """The device's MQTT session: its own topics, a persistent session, presence as last will."""
    dev, b = config.device_id, config.broker
    presence_off = m.make(m.Presence(online=False, profile=config.profile)).pack()
    return LinkSettings(
        host=b.host,
        port=b.port,
        client_id=dev,
        username=b.username,
        password=b.password,
        ca_file=b.ca_file,
        cert_file=b.cert_file,
        key_file=b.key_file,
        tls=b.tls,
        keepalive_s=b.keepalive_s,
        clean_session=False,
        subscriptions=(
            topics.device_down(config.fleet, dev),
            topics.broadcast(config.fleet),
            topics.wake(config.fleet, topics.wake_group(dev)),
        ),
        will_topic=topics.device_presence(config.fleet, dev),
        will_payload=presence_off,
    )


class DeviceSession:
    """Everything the agent says to and hears from the server goes through here.

    The link keeps itself connected; messages that arrive are checked (signature of the server,
    limits, replays) and queued, so the agent only ever sees typed messages it asked for.
    """

    def __init__(self, config: DeviceConfig, rng: random.Random):
        self.config = config
        self.device_id: str = config.device_id
        self.inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self.replay = ReplayGuard()
        self.job_state: str | None = None
        self._stop = asyncio.Event()
        settings = link_settings(config)
        self._own_topics = set(settings.subscriptions)
        self.link = MqttLink(settings, logger=log, on_connect=self._announce, rng=rng)

    @property
    def live(self) -> bool:
        """Connected and not stopping."""
        return not self._stop.is_set() and self.link.connected.is_set()

    @contextlib.asynccontextmanager
    async def running(self, stop: asyncio.Event) -> AsyncIterator[None]:
        """Keep the link up until ``stop`` is set (and the body has ended).

        The frequent waits (for a message, a pause) use the session's own copy of ``stop``: a
        simulator shares one ``stop`` among thousands of agents, and every wait on an event
        costs O(its waiters) to clean up. The link watches ``stop`` itself.
        """
        self._stop = asyncio.Event()
        relay = asyncio.create_task(self._relay_stop(stop))
        link_task = asyncio.create_task(self.link.run(self._on_mqtt, stop))
        try:
            yield
        finally:
            await link_task  # ends once ``stop`` is set (relayed)
            relay.cancel()

    async def _relay_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stop.set()

    async def until_connected(self, stop: asyncio.Event) -> bool:
        """Wait for the link to be up; False if ``stop`` came first."""
        connected = asyncio.create_task(self.link.connected.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({connected, stopped}, return_when=asyncio.FIRST_COMPLETED)
        connected.cancel()
        stopped.cancel()
        return not stop.is_set()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when the session is stopped."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _announce(self) -> None:
        presence = m.make(m.Presence(online=True, profile=self.config.profile)).pack()
        await self.link.publish(
            topics.device_presence(self.config.fleet, self.device_id),
            presence,
            retain=True,
            wait_s=1,
        )

    async def _on_mqtt(self, topic: str, payload: bytes) -> None:
        if topic not in self._own_topics:
            log.debug("device %s: ignored a message on %s (not subscribed)", self.device_id, topic)
            return
        try:
            envelope = unpack(payload, SERVER_ID, DEFAULT_LIMITS)
            self.replay.check(envelope)
            message = m.parse(envelope)
        except ProtocolError as exc:
            log.warning("device %s refused a message on %s: %s", self.device_id, topic, exc)
            return
        if isinstance(message, m.JobState):
            self.job_state = message.state
        await self.inbox.put(Inbound(message, envelope.job_id, envelope.round_id, payload))

    async def send(
        self, message: m.Message, job_id: str | None = None, round_id: int | None = None
    ) -> int:
        """Publish ``message`` on the device's uplink; its size in bytes.

        Raises
        ------
        ConnectionError
            If the link is down (and stays down while the publish waits).
        """
        data = m.make(message, job_id=job_id, round_id=round_id).pack()
        ok = await self.link.publish(topics.device_up(self.config.fleet, self.device_id), data)
        if not ok:
            raise ConnectionError("not connected")
        return len(data)

    async def receive(self, kinds: tuple[type[m.Message], ...], timeout_s: float) -> Inbound | None:
        """The next message of one of ``kinds`` within ``timeout_s``; None on timeout or stop.

        Messages of other kinds are dropped on the way (an error report from the server is
        logged first).
        """
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            getter = asyncio.ensure_future(self.inbox.get())
            stopper = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait(
                {getter, stopper}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            stopper.cancel()
            if getter not in done:
                getter.cancel()
                return None
            item = getter.result()
            if isinstance(item.message, kinds):
                return item
            if isinstance(item.message, m.ErrorReport):
                log.warning(
                    "device %s: server says %s: %s",
                    self.device_id,
                    item.message.code,
                    item.message.message,
                )
        return None
