"""A device bundle installs offline into a clean venv and its device joins a TLS round."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from fedge.edge_client.data import save_npz_dataset
from fedge.edge_client.errors import ConfigError
from fedge.server.store import SQLiteStore
from fedge.tools import cli
from fedge.tools.bundle import build_bundle, main
from fedge.tools.provision import ProvisionResult, provision_fleet

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FLEET = "orchard"
DEVICE = "dev-0002"  # not the first device: the bundle must carry this device's own files
JOB = "bundle-e2e"
INSTALL_TIMEOUT_S = 600
ROUND_TIMEOUT_S = 240
SECRET_FILES = {"client.key", "identity.key", "device.toml"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def quiet_port() -> int:
    """A free loopback port below the kernel's ephemeral range: the ports are provisioned a
    minute or two before the broker and the server bind them, and an outgoing connection
    (pip, a client) could take a free ephemeral port in between."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 10_000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> ProvisionResult:
    out = tmp_path_factory.mktemp("provisioned")
    return provision_fleet(out, FLEET, 2, broker_port=quiet_port(),
                           http_url=f"https://127.0.0.1:{quiet_port()}")


@pytest.fixture(scope="module")
def bundle(fleet: ProvisionResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The x86_64 bundle of DEVICE, built through the command's entry point (wheels cached
    under ~/.cache/fedge/wheels: only the first run downloads)."""
    out = tmp_path_factory.mktemp("bundle") / f"{DEVICE}.tar.gz"
    argv = ["--device-id", DEVICE, "--provisioned", str(fleet.out_dir),
            "--platform", "linux_x86_64", "--out", str(out)]
    assert main(argv) == 0
    return out


def members(bundle: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(bundle) as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        fh = tar.extractfile(name)
        assert fh is not None, name
        return fh.read()


def test_bundle_carries_this_devices_files_with_private_modes(bundle: Path,
                                                              fleet: ProvisionResult) -> None:
    entries = members(bundle)
    top = f"fedge-{DEVICE}"
    assert {name.split("/")[0] for name in entries} == {top}
    assert mode(bundle) == 0o600  # the archive holds private keys

    folder = fleet.devices[DEVICE]
    provisioned = {p.name for p in folder.iterdir() if p.is_file()}
    bundled = {n.rsplit("/", 1)[1] for n in entries if n.startswith(f"{top}/config/")}
    assert bundled == provisioned
    for name in provisioned:
        assert read_member(bundle, f"{top}/config/{name}") == (folder / name).read_bytes()
        expected = 0o600 if name in SECRET_FILES else 0o644
        assert entries[f"{top}/config/{name}"].mode == expected, name
    assert entries[f"{top}/config"].mode == 0o700
    assert entries[f"{top}/install.sh"].mode == 0o755
    cert = x509.load_pem_x509_certificate(read_member(bundle, f"{top}/config/client.crt"))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEVICE

    wheels = [n.rsplit("/", 1)[1] for n in entries if n.startswith(f"{top}/wheels/")]
    for prefix in ("fedge-", "tflite_runtime-2.14.0-cp311-cp311-manylinux", "numpy-",
                   "cryptography-", "msgpack-", "paho_mqtt-", "aiomqtt-", "h11-"):
        assert any(w.startswith(prefix) for w in wheels), (prefix, wheels)
    assert not any(w.startswith(("tensorflow", "fastapi", "amqtt")) for w in wheels), wheels
    assert all(w.endswith(".whl") and ("x86_64" in w or "-none-any" in w) for w in wheels), wheels

    sums = read_member(bundle, f"{top}/SHA256SUMS").decode().splitlines()
    assert len(sums) == len([m for m in entries.values() if m.isfile()]) - 1
    for line in sums:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256(read_member(bundle, f"{top}/{name}")).hexdigest() == digest

    unit = read_member(bundle, f"{top}/fedge-device.service").decode()
    for line in ("After=network-online.target", "User=@USER@", "Restart=always",
                 "ExecStart=@PREFIX@/venv/bin/fedge device --config @PREFIX@/device.toml",
                 "RestartSec=5", "RestartMaxDelaySec=300", "ReadWritePaths=@PREFIX@/state"):
        assert line in unit.splitlines(), line
    meta = json.loads(read_member(bundle, f"{top}/bundle.json"))
    assert (meta["device_id"], meta["fleet"], meta["platform"]) == (DEVICE, FLEET, "linux_x86_64")


@pytest.mark.parametrize(("device", "platform", "where", "message"), [
    ("dev-9999", "linux_x86_64", "fleet", "unknown device 'dev-9999'"),
    ("dev-0001", "linux_armv7l", "fleet", "unknown platform 'linux_armv7l'"),
    ("dev-0001", "linux_aarch64", "missing", "is not a provisioned fleet"),
    ("../server", "linux_x86_64", "fleet", "invalid device id"),
])
def test_bad_arguments_are_config_errors(fleet: ProvisionResult, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], device: str,
                                         platform: str, where: str, message: str) -> None:
    provisioned = fleet.out_dir if where == "fleet" else tmp_path / "nothing-here"
    out = tmp_path / "b.tar.gz"
    with pytest.raises(ConfigError, match=message):
        build_bundle(device, provisioned, platform, out)
    argv = ["bundle", "--device-id", device, "--provisioned", str(provisioned),
            "--platform", platform, "--out", str(out)]
    assert cli.main(argv) == 2  # `fedge bundle ...` as a user types it
    assert message in capsys.readouterr().err
    assert not out.exists()


class ConnectionTrap:
    """A loopback listener standing in for any package index or proxy: counts who connects."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def offline_env(trap: ConnectionTrap) -> dict[str, str]:
    """The test's environment minus this venv, pip configuration and proxies; any index or
    proxy request goes to the trap."""
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON")) and k != "VIRTUAL_ENV"
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and p != venv_bin)
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": f"{trap.url}/simple",
            "http_proxy": trap.url, "https_proxy": trap.url,
            "HTTP_PROXY": trap.url, "HTTPS_PROXY": trap.url}
    return env


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in reversed(procs):
        stop(proc)


def write_job(path: Path, artifact: Path) -> Path:
    path.write_text(f"""
[job]
name = "{JOB}"
fleet = "{FLEET}"
artifact = "{artifact}"
rounds = 1
seed = 1

[selection]
target_reports = 1
min_reports = 1
over_selection = 1.0
selection_timeout_s = 90.0
round_deadline_s = 90.0
retry_window_s = 1.0
quiet_period_s = 0.2

[training]
local_epochs = 1
lr = 0.1
""")
    return path


def extract(bundle: Path, dest: Path) -> Path:
    """``tar xzf`` as on the device (GNU tar keeps folder modes; Python's data filter does not)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "xzf", str(bundle), "-C", str(dest)], check=True, timeout=120)
    return dest / f"fedge-{DEVICE}"


def install(bundle: Path, root: Path) -> Path:
    """Extract the bundle into a clean folder and run its install.sh offline; returns the prefix."""
    extracted = extract(bundle, root / "extracted")
    prefix = root / "opt-fedge"
    trap = ConnectionTrap()
    try:
        done = subprocess.run(
            [str(extracted / "install.sh"), "--prefix", str(prefix), "--no-systemd"],
            env=offline_env(trap), cwd=root, capture_output=True, timeout=INSTALL_TIMEOUT_S,
            check=False)
    finally:
        trap.close()
    log = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, log
    assert trap.connections == 0, f"install.sh reached for an index or proxy:\n{log}"
    assert "--no-systemd: no service installed" in log
    return prefix


def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"server did not finish the job in {timeout_s} s:\n"
                             f"{log.read_text()[-4000:]}") from None


def wait_selecting(server: subprocess.Popen[bytes], state: Path, log: Path) -> None:
    """Until the server has opened round 1 (so it is subscribed and will answer a check-in)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited with {server.returncode}:\n{log.read_text()}")
        if (state / "fedge.db").exists():
            store = SQLiteStore(state / "fedge.db")
            try:
                if store.rounds(JOB):
                    return
            finally:
                store.close()
        time.sleep(0.2)
    raise AssertionError(f"server opened no round in 120 s:\n{log.read_text()}")


def test_installed_device_trains_a_round_over_tls_with_acls(
        bundle: Path, fleet: ProvisionResult, tmp_path: Path,
        start_mosquitto: Callable[[Path, int], subprocess.Popen[bytes]], mlp_artifact: Path,
        digits: tuple[np.ndarray, ...], processes: list[subprocess.Popen[bytes]]) -> None:
    prefix = install(bundle, tmp_path)
    for name in SECRET_FILES:
        assert mode(prefix / name) == 0o600, name
    venv_python = prefix / "venv" / "bin" / "python"
    probe = ("import importlib.util as u, sys; "
             "sys.exit(0 if u.find_spec('tflite_runtime') and not u.find_spec('tensorflow') "
             "and not u.find_spec('fastapi') else 1)")
    assert subprocess.run([str(venv_python), "-c", probe], timeout=60).returncode == 0

    x, y, x_test, y_test = digits
    save_npz_dataset(prefix / "data" / "train" / "shard.npz", x[:300], y[:300])
    save_npz_dataset(prefix / "data" / "test" / "shard.npz", x_test[:100], y_test[:100])

    start_mosquitto(fleet.mosquitto_conf, int(urlparse(fleet.broker_url).port or 0))
    state = tmp_path / "server-state"
    server_log = tmp_path / "server.log"
    job = write_job(tmp_path / "job.toml", mlp_artifact)
    with server_log.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "fedge.tools.cli", "server", "--config", str(fleet.server_config),
             "--job", str(job), "--state-dir", str(state)],
            cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    processes.append(server)
    wait_selecting(server, state, server_log)
    device_log = tmp_path / "device.log"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PYTHON", "PIP_")) and k != "VIRTUAL_ENV"}
    with device_log.open("wb") as sink:
        device = subprocess.Popen(
            [str(prefix / "venv" / "bin" / "fedge"), "device", "--config",
             str(prefix / "device.toml")],
            cwd=prefix, env=clean, stdout=sink, stderr=subprocess.STDOUT)
    processes.append(device)

    code = wait_exit(server, ROUND_TIMEOUT_S, server_log)
    logs = f"server:\n{server_log.read_text()[-3000:]}\ndevice:\n{device_log.read_text()[-3000:]}"
    assert code == 0, logs
    assert device.poll() is None, f"the device agent died:\n{logs}"

    store = SQLiteStore(state / "fedge.db")
    try:
        assert store.job(JOB)["status"] == "finished", logs  # type: ignore[index]
        rounds = [r for r in store.rounds(JOB) if r["state"] == "committed"]
        assert [r["round"] for r in rounds] == [1], logs
        participants = store.participants(rounds[0]["rid"])
    finally:
        store.close()
    assert [(p["device_id"], p["status"]) for p in participants] == [(DEVICE, "reported")], logs
    assert participants[0]["examples"] == 300
    broker_log = (fleet.mosquitto_conf.parent / "mosquitto.log").read_text()
    assert f"u'{DEVICE}'" in broker_log  # the broker took the certificate's CN as user name
    stop(device)
    assert device.returncode == 0, logs
    assert (prefix / "state").is_dir() and any((prefix / "state").iterdir())


def test_extracted_files_keep_their_modes(bundle: Path, tmp_path: Path) -> None:
    config = extract(bundle, tmp_path) / "config"
    assert mode(config) == 0o700
    for path in config.iterdir():
        assert mode(path) == (0o600 if path.name in SECRET_FILES else 0o644), path.name
