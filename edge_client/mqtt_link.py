"""A reconnecting asyncio MQTT session (aiomqtt over paho) shared by devices and the server."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho

Handler = Callable[[str, bytes], Awaitable[None]]
HOUSEKEEPING_MIN_PERIOD_S = 1.0  # aiomqtt's own period for paho's keepalive and timeout checks


class _Housekeeping:
    """One timer per event loop running paho's housekeeping for every session of that loop.

    aiomqtt gives each client its own task waking once a second to call ``loop_misc`` (send
    keepalive pings, notice a dead broker); a process holding thousands of sessions (a
    simulator worker) would wake thousands of times a second. Here one task checks all of
    them every quarter of the shortest keepalive (at least every second): a ping then leaves
    at most a quarter keepalive late, well within the broker's 1.5 keepalives (a session
    with a shorter keepalive than the others is first checked after the current period).
    """

    def __init__(self) -> None:
        self.clients: dict[paho.Client, float] = {}  # client -> its keepalive in seconds
        self._task: asyncio.Task[None] | None = None

    def add(self, client: paho.Client, keepalive_s: float) -> None:
        self.clients[client] = keepalive_s
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, client: paho.Client) -> None:
        self.clients.pop(client, None)

    async def _run(self) -> None:
        while self.clients:
            period = max(HOUSEKEEPING_MIN_PERIOD_S, min(self.clients.values()) / 4)
            await asyncio.sleep(period)
            for client in list(self.clients):
                if client.loop_misc() != paho.MQTT_ERR_SUCCESS:
                    self.discard(client)  # no socket any more: aiomqtt reconnects


_housekeeping: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Housekeeping] = (
    weakref.WeakKeyDictionary()
)


class _Client(aiomqtt.Client):
    """aiomqtt's client, with its per-client housekeeping task moved onto the loop's shared timer
    and a lighter acknowledged publish."""

    async def publish_lean(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish; at QoS 1 or 2 wait (``self.timeout``) for the broker's acknowledgement.

        aiomqtt's ``publish`` does the same, but wraps the wait in ``asyncio.wait_for`` (a
        task per message) and counts all pending calls on every publish, QoS 0 included
        (O(pending)); a server sending a round's tasks, or a process of many devices, feels
        both. The confirmation is registered where aiomqtt's ``on_publish`` callback sets it.
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "could not publish message")
        if qos == 0 or info.is_published():
            return
        confirmation = asyncio.Event()
        self._pending_publishes[info.mid] = confirmation
        try:
            async with asyncio.timeout(self.timeout):
                await confirmation.wait()
        except TimeoutError:
            raise aiomqtt.MqttError("publish was not acknowledged in time") from None
        finally:
            self._pending_publishes.pop(info.mid, None)

    async def _misc_loop(self) -> None:
        """Registered with the shared timer until aiomqtt cancels this when the socket closes."""
        shared = _housekeeping.setdefault(asyncio.get_running_loop(), _Housekeeping())
        shared.add(self._client, self._keepalive)
        try:
            await asyncio.get_running_loop().create_future()  # never set: cancelled on close
        finally:
            shared.discard(self._client)


@dataclass(frozen=True)
class LinkSettings:
    """Where and how to connect."""

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls: bool = False
    keepalive_s: int = 30
    clean_session: bool = False
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_inflight: int = 100
    subscriptions: tuple[str, ...] = ()
    will_topic: str | None = None
    will_payload: bytes | None = None


@dataclass
class LinkStats:
    """Counters of what crossed this link (payload bytes, as MQTT carried them)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    connects: int = 0
    by_topic_kind: dict[str, int] = field(default_factory=dict)


class MqttLink:
    """Keeps one MQTT session alive with exponential backoff and jitter, and dispatches messages."""

    def __init__(
        self,
        settings: LinkSettings,
        *,
        logger: logging.Logger | None = None,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ):
        self.settings = settings
        self.stats = LinkStats()
        self.connected = asyncio.Event()
        self._client: _Client | None = None
        self._log = logger or logging.getLogger("fedge.mqtt")
        self._on_connect = on_connect
        self._rng = rng or random.Random()

    def _tls_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        if s.cert_file and s.key_file:
            ctx.load_cert_chain(str(s.cert_file), str(s.key_file))
        return ctx

    def _client_for(self) -> _Client:
        s = self.settings
        will = None
        if s.will_topic is not None:
            will = aiomqtt.Will(s.will_topic, s.will_payload, qos=1, retain=True)
        return _Client(
            s.host,
            s.port,
            identifier=s.client_id,
            username=s.username,
            password=s.password,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=s.clean_session,
            keepalive=s.keepalive_s,
            will=will,
            tls_context=self._tls_context(),
            max_inflight_messages=s.max_inflight,
            timeout=10,
        )

    async def run(self, handler: Handler, stop: asyncio.Event) -> None:
        """Connect, subscribe and dispatch until ``stop`` is set; reconnect on any failure."""
        delay = self.settings.backoff_initial_s
        while not stop.is_set():
            try:
                async with self._client_for() as client:
                    self._client = client
                    for topic in self.settings.subscriptions:
                        await client.subscribe(topic, qos=1)
                    self.stats.connects += 1
                    self.connected.set()
                    delay = self.settings.backoff_initial_s
                    if self._on_connect is not None:
                        await self._on_connect()
                    reader = asyncio.create_task(self._read(client, handler))
                    stopper = asyncio.create_task(stop.wait())
                    done, _ = await asyncio.wait(
                        {reader, stopper}, return_when=asyncio.FIRST_COMPLETED
                    )
                    stopper.cancel()
                    if reader in done:
                        reader.result()  # re-raise the connection error
                    else:
                        reader.cancel()
                        return
            except aiomqtt.MqttError as exc:
                self._log.info(
                    "mqtt %s: connection lost or refused (%s); retry in %.1fs",
                    self.settings.client_id,
                    exc,
                    delay,
                )
            finally:
                self.connected.clear()
                self._client = None
            if stop.is_set():
                return
            sleep_s = self._rng.uniform(0.5 * delay, delay)  # jitter
            try:
                await asyncio.wait_for(stop.wait(), timeout=sleep_s)
            except TimeoutError:
                pass
            delay = min(delay * 2, self.settings.backoff_max_s)

    async def _read(self, client: aiomqtt.Client, handler: Handler) -> None:
        async for message in client.messages:
            payload = (
                message.payload
                if isinstance(message.payload, bytes)
                else bytes(str(message.payload), "utf-8")
            )
            self.stats.bytes_received += len(payload)
            self.stats.messages_received += 1
            try:
                await handler(message.topic.value, payload)
            except Exception:  # a handler bug must not kill the session
                self._log.exception("handler failed for a message on %s", message.topic.value)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        wait_s: float = 30.0,
    ) -> bool:
        """Publish once connected (waiting up to ``wait_s``); False if it could not be sent.

        QoS 1 waits for the broker's PUBACK; QoS 0 has no acknowledgement to wait for.
        """
        if not self.connected.is_set():
            try:
                await asyncio.wait_for(self.connected.wait(), timeout=wait_s)
            except TimeoutError:
                return False
        client = self._client
        if client is None:
            return False
        try:
            await client.publish_lean(topic, payload, qos, retain)
        except aiomqtt.MqttError as exc:
            self._log.info("publish to %s failed: %s", topic, exc)
            return False
        self.stats.bytes_sent += len(payload)
        self.stats.messages_sent += 1
        return True
