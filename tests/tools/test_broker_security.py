"""Generated broker files enforce TLS, authentication and per-device ACLs on a real Mosquitto."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from fedge.edge_client.protocol import topics
from fedge.tools.provision import ProvisionResult, add_devices, provision_fleet

pytestmark = pytest.mark.mosquitto

StartMosquitto = Callable[[Path, int], subprocess.Popen[bytes]]

FLEET = "sec"
WAIT_S = 5.0
A, B = "dev-0001", "dev-0002"
# The broker drops the connection during or right after the TLS handshake: no CONNACK at all.
TLS_REFUSED = ("disconnect", "error")


@dataclass(frozen=True)
class Account:
    """How one client authenticates: TLS files plus optional user name and password."""

    ca_file: Path | None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None


def device_account(result: ProvisionResult, device_id: str) -> Account:
    raw = tomllib.loads((result.devices[device_id] / "device.toml").read_text())["broker"]
    return _account(result.devices[device_id], raw)


def server_account_of(result: ProvisionResult) -> Account:
    raw = tomllib.loads(result.server_config.read_text())["broker"]
    return _account(result.server_config.parent, raw)


def _account(folder: Path, raw: dict[str, str]) -> Account:
    def path(key: str) -> Path | None:
        return folder / raw[key] if key in raw else None

    return Account(
        ca_file=path("ca_file"),
        cert_file=path("cert_file"),
        key_file=path("key_file"),
        username=raw.get("username"),
        password=raw.get("password"),
    )


class Probe:
    """A paho-mqtt 2 client (MQTT 3.1.1) whose callbacks feed queues the test can wait on."""

    def __init__(self, client_id: str, account: Account, *, tls: bool = True) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        if tls:
            self.client.tls_set(
                ca_certs=str(account.ca_file),
                certfile=str(account.cert_file) if account.cert_file else None,
                keyfile=str(account.key_file) if account.key_file else None,
            )
        if account.username is not None:
            self.client.username_pw_set(account.username, account.password)
        self.outcome: queue.Queue[tuple[str, object]] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self.outcome.put(("connack", rc))
        self.client.on_disconnect = lambda c, u, f, rc, p: self.outcome.put(("disconnect", rc))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(list(rcs))
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.started = False

    def connect(self, port: int) -> tuple[str, object]:
        """Connect and wait for the first outcome: ("connack", code), ("disconnect", code),
        ("error", exception) or ("timeout", None)."""
        try:
            self.client.connect("127.0.0.1", port, keepalive=30)
        except OSError as exc:  # includes ssl.SSLError
            return ("error", exc)
        self.client.loop_start()
        self.started = True
        try:
            return self.outcome.get(timeout=WAIT_S)
        except queue.Empty:
            return ("timeout", None)

    def accepted(self, port: int) -> bool:
        kind, code = self.connect(port)
        return kind == "connack" and isinstance(code, ReasonCode) and not code.is_failure

    def subscribe(self, *filters: str) -> list[ReasonCode]:
        self.client.subscribe([(f, 1) for f in filters])
        return self.subacks.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def receive_until(self, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including the first message carrying ``payload``."""
        seen: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + WAIT_S
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{payload!r} never arrived; got {seen}"
            try:
                seen.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                continue
            if seen[-1][1] == payload:
                return seen

    def close(self) -> None:
        if self.started:
            self.client.disconnect()
            self.client.loop_stop()


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for probe in made:
        probe.close()


def connected(probes: list[Probe], port: int, client_id: str, account: Account) -> Probe:
    probe = Probe(client_id, account)
    probes.append(probe)
    kind, code = probe.connect(port)
    assert kind == "connack" and isinstance(code, ReasonCode) and not code.is_failure, (kind, code)
    return probe


@dataclass(frozen=True)
class Broker:
    result: ProvisionResult
    port: int
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def cert_broker(
    tmp_path_factory: pytest.TempPathFactory,
    start_mosquitto: StartMosquitto,
    free_port: Callable[[], int],
) -> Broker:
    port = free_port()
    out = tmp_path_factory.mktemp("cert-fleet")
    result = provision_fleet(out, FLEET, 2, broker_port=port)
    return Broker(result, port, start_mosquitto(result.mosquitto_conf, port))


@pytest.fixture(scope="module")
def password_broker(
    tmp_path_factory: pytest.TempPathFactory,
    start_mosquitto: StartMosquitto,
    free_port: Callable[[], int],
) -> Broker:
    port = free_port()
    out = tmp_path_factory.mktemp("password-fleet")
    result = provision_fleet(out, FLEET, 2, broker_port=port, auth="password")
    return Broker(result, port, start_mosquitto(result.mosquitto_conf, port))


def test_device_cannot_read_another_devices_down_topic(
    cert_broker: Broker, probes: list[Probe]
) -> None:
    res, port = cert_broker.result, cert_broker.port
    server = connected(probes, port, "server", server_account_of(res))
    dev_a = connected(probes, port, A, device_account(res, A))
    dev_b = connected(probes, port, B, device_account(res, B))
    # Mosquitto's acl_file never refuses a subscription (its SUBACK grants it); the read ACL
    # filters what is delivered. Either way A must never receive B's messages.
    codes = dev_a.subscribe(topics.device_down(FLEET, B), f"fedge/v1/{FLEET}/dev/+/down", "#")
    assert len(codes) == 3
    dev_a.subscribe(topics.device_down(FLEET, A))
    dev_b.subscribe(topics.device_down(FLEET, B))

    server.publish(topics.device_down(FLEET, B), b"for-b-only")
    server.publish(topics.device_down(FLEET, A), b"sentinel-a")

    assert (topics.device_down(FLEET, B), b"for-b-only") in dev_b.receive_until(b"for-b-only")
    got_a = dev_a.receive_until(b"sentinel-a")
    assert all(payload != b"for-b-only" for _, payload in got_a), got_a


def test_device_cannot_publish_as_another_device(cert_broker: Broker, probes: list[Probe]) -> None:
    res, port = cert_broker.result, cert_broker.port
    server = connected(probes, port, "server", server_account_of(res))
    dev_a = connected(probes, port, A, device_account(res, A))
    dev_b = connected(probes, port, B, device_account(res, B))
    server.subscribe(f"fedge/v1/{FLEET}/#")
    dev_b.subscribe(topics.device_down(FLEET, B), topics.broadcast(FLEET))

    forged = [
        topics.device_up(FLEET, B),
        topics.device_presence(FLEET, B),
        topics.device_down(FLEET, B),
        topics.broadcast(FLEET),
    ]
    for topic in forged:
        dev_a.publish(topic, b"forged")  # Mosquitto acknowledges, then silently drops it
    dev_a.publish(topics.device_up(FLEET, A), b"sentinel-up")

    got_server = server.receive_until(b"sentinel-up")
    assert all(payload != b"forged" for _, payload in got_server), got_server
    # A's packets were all processed before its sentinel reached the server, so a forged
    # down/broadcast message would already sit in B's queue ahead of this one.
    server.publish(topics.device_down(FLEET, B), b"sentinel-b")
    got_b = dev_b.receive_until(b"sentinel-b")
    assert all(payload != b"forged" for _, payload in got_b), got_b


def test_username_cannot_override_certificate_identity(
    cert_broker: Broker, probes: list[Probe]
) -> None:
    res, port = cert_broker.result, cert_broker.port
    server_acct = server_account_of(res)
    server = connected(probes, port, "server", server_acct)
    a = device_account(res, A)
    # A's certificate, but claiming the server's user name: the CN still decides.
    impostor = connected(
        probes,
        port,
        A,
        Account(a.ca_file, a.cert_file, a.key_file, username=server_acct.username),
    )
    impostor.subscribe(f"fedge/v1/{FLEET}/#")
    server.publish(topics.device_down(FLEET, B), b"for-b-only")
    server.publish(topics.device_down(FLEET, A), b"sentinel-a")
    got = impostor.receive_until(b"sentinel-a")
    assert all(payload != b"for-b-only" for _, payload in got), got


def test_device_uses_its_own_topics(cert_broker: Broker, probes: list[Probe]) -> None:
    res, port = cert_broker.result, cert_broker.port
    server = connected(probes, port, "server", server_account_of(res))
    dev_a = connected(probes, port, A, device_account(res, A))
    server.subscribe(topics.server_up_filter(FLEET), topics.server_presence_filter(FLEET))
    wake_a = topics.wake(FLEET, topics.wake_group(A))
    codes = dev_a.subscribe(topics.device_down(FLEET, A), topics.broadcast(FLEET), wake_a)
    assert [c.value for c in codes] == [1, 1, 1]

    server.publish(topics.device_down(FLEET, A), b"task")
    server.publish(wake_a, b"round-open")
    server.publish(topics.broadcast(FLEET), b"model")
    got_a = dev_a.receive_until(b"model")
    assert (topics.device_down(FLEET, A), b"task") in got_a
    assert (wake_a, b"round-open") in got_a

    dev_a.publish(topics.device_presence(FLEET, A), b"online", retain=True)
    dev_a.publish(topics.device_up(FLEET, A), b"update")
    got_server = server.receive_until(b"update")
    assert (topics.device_presence(FLEET, A), b"online") in got_server


def test_server_account_does_everything_in_its_fleet(
    cert_broker: Broker, probes: list[Probe]
) -> None:
    res, port = cert_broker.result, cert_broker.port
    server = connected(probes, port, "server", server_account_of(res))
    server.subscribe(f"fedge/v1/{FLEET}/#")
    every_kind = [
        topics.device_up(FLEET, B),
        topics.device_presence(FLEET, B),
        topics.device_down(FLEET, B),
        topics.broadcast(FLEET),
        f"fedge/v1/{FLEET}/control/anything",
    ]
    for i, topic in enumerate(every_kind):
        server.publish(topic, f"s{i}".encode())
    sent = [(topic, f"s{i}".encode()) for i, topic in enumerate(every_kind)]
    got = server.receive_until(sent[-1][1])
    # Retained presence left by other tests may come first; ours arrive complete and in order.
    assert [msg for msg in got if msg in sent] == sent


def test_clients_without_fleet_certificate_are_refused(
    cert_broker: Broker, tmp_path: Path, probes: list[Probe]
) -> None:
    res, port = cert_broker.result, cert_broker.port
    a = device_account(res, A)
    no_cert = Probe("no-cert", Account(a.ca_file))
    probes.append(no_cert)
    assert no_cert.connect(port)[0] in TLS_REFUSED

    other = provision_fleet(tmp_path / "other", FLEET, 1, broker_port=port)
    foreign = device_account(other, "dev-0001")
    # Trust our broker, but present a device certificate signed by another CA.
    stranger = Probe("stranger", Account(a.ca_file, foreign.cert_file, foreign.key_file))
    probes.append(stranger)
    assert stranger.connect(port)[0] in TLS_REFUSED

    plain = Probe("plain", Account(None, username=A), tls=False)
    probes.append(plain)
    assert plain.connect(port)[0] in TLS_REFUSED

    # Positive control: the same broker accepts the real device.
    connected(probes, port, A, a)


def test_added_devices_connect_without_broker_restart(
    cert_broker: Broker, probes: list[Probe]
) -> None:
    res, port = cert_broker.result, cert_broker.port
    (new_id,) = add_devices(res.out_dir, 1)
    new_folder = res.out_dir / "devices" / new_id
    raw = tomllib.loads((new_folder / "device.toml").read_text())["broker"]
    server = connected(probes, port, "server", server_account_of(res))
    dev_new = connected(probes, port, new_id, _account(new_folder, raw))
    connected(probes, port, A, device_account(res, A))
    dev_new.subscribe(topics.device_down(FLEET, new_id))
    server.publish(topics.device_down(FLEET, new_id), b"hello-new")
    assert dev_new.receive_until(b"hello-new")[-1][0] == topics.device_down(FLEET, new_id)


def test_password_mode_checks_passwords(password_broker: Broker, probes: list[Probe]) -> None:
    res, port = password_broker.result, password_broker.port
    a = device_account(res, A)
    assert a.cert_file is None and a.password
    wrong = Probe("wrong", Account(a.ca_file, username=A, password=a.password + "x"))
    probes.append(wrong)
    kind, code = wrong.connect(port)
    assert kind == "connack" and isinstance(code, ReasonCode) and code.is_failure, (kind, code)

    stranger = Probe("nobody", Account(a.ca_file, username="dev-9999", password=a.password))
    probes.append(stranger)
    assert not stranger.accepted(port)

    plain = Probe("plain", a, tls=False)
    probes.append(plain)
    assert plain.connect(port)[0] in TLS_REFUSED

    connected(probes, port, A, a)
    connected(probes, port, "server", server_account_of(res))


def test_password_mode_enforces_the_same_acl(password_broker: Broker, probes: list[Probe]) -> None:
    res, port = password_broker.result, password_broker.port
    server = connected(probes, port, "server", server_account_of(res))
    dev_a = connected(probes, port, A, device_account(res, A))
    dev_a.subscribe("#")
    server.publish(topics.device_down(FLEET, B), b"for-b-only")
    server.publish(topics.broadcast(FLEET), b"sentinel")
    got = dev_a.receive_until(b"sentinel")
    assert got == [(topics.broadcast(FLEET), b"sentinel")]


def test_password_mode_add_devices_after_reload(
    password_broker: Broker, probes: list[Probe]
) -> None:
    res, port = password_broker.result, password_broker.port
    (new_id,) = add_devices(res.out_dir, 1)
    new_folder = res.out_dir / "devices" / new_id
    raw = tomllib.loads((new_folder / "device.toml").read_text())["broker"]
    os.kill(password_broker.process.pid, signal.SIGHUP)  # reload password file and ACL
    deadline = time.monotonic() + WAIT_S
    accepted = False
    while not accepted and time.monotonic() < deadline:
        probe = Probe(new_id, _account(new_folder, raw))
        probes.append(probe)
        accepted = probe.accepted(port)
    assert accepted, f"{new_id} refused after SIGHUP"
    connected(probes, port, A, device_account(res, A))
