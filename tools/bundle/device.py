"""The provisioned files of one device that go into its bundle, with the modes they keep."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from fedge.edge_client.config import DeviceConfig, load_device_config
from fedge.edge_client.errors import ConfigError, ProtocolError
from fedge.edge_client.names import check_name

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
CONFIG_FILE = "device.toml"


@dataclass(frozen=True)
class DeviceFile:
    """One file of the device folder: its content and the mode it keeps in the bundle."""

    name: str
    data: bytes
    mode: int


@dataclass(frozen=True)
class DeviceFolder:
    """A provisioned device: its parsed config and every file of its folder."""

    config: DeviceConfig
    files: tuple[DeviceFile, ...]


def _is_secret(path: Path) -> bool:
    """Keys, the config (it holds the MQTT password in password mode) and anything the
    provisioner already kept private stay 0600."""
    private = stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    return private or path.suffix == ".key" or path.name == CONFIG_FILE


def _known_devices(provisioned: Path) -> list[str]:
    return sorted(p.parent.name for p in (provisioned / "devices").glob(f"*/{CONFIG_FILE}"))


def _check_references(config: DeviceConfig, folder: Path) -> None:
    """Every file device.toml names must be in the folder: the bundle carries nothing else."""
    referenced = (config.broker.ca_file, config.broker.cert_file, config.broker.key_file,
                  config.identity_key_file, config.server_signing_key_file,
                  config.enrolment_key_file)
    for path in referenced:
        if path is None:
            continue
        if path.resolve().parent != folder.resolve():
            raise ConfigError(f"{folder / CONFIG_FILE} refers to {path}, outside the device "
                              "folder: the bundle only carries that folder's files")
        if not path.is_file():
            raise ConfigError(f"{folder / CONFIG_FILE} refers to {path.name}, which is missing")


def read_device_folder(provisioned: Path, device_id: str) -> DeviceFolder:
    """Read ``provisioned/devices/<device_id>`` as written by ``fedge provision``.

    Parameters
    ----------
    provisioned : Path
        The directory given to ``fedge provision --out``.
    device_id : str
        The device to bundle.

    Returns
    -------
    DeviceFolder
        The parsed ``device.toml`` and the folder's regular files (sub-folders such as a
        device's own ``data/`` or ``state/`` are left out).

    Raises
    ------
    ConfigError
        If the directory is not a provisioned fleet, the device is unknown, or its
        ``device.toml`` is invalid or names another device.
    """
    provisioned = Path(provisioned).expanduser()
    if not (provisioned / "devices").is_dir():
        raise ConfigError(f"{provisioned} is not a provisioned fleet (no devices/ folder): "
                          "run `fedge provision --out DIR ...` first")
    try:
        check_name("device id", device_id)
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc
    folder = provisioned / "devices" / device_id
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        known = _known_devices(provisioned)
        raise ConfigError(f"unknown device {device_id!r} in {provisioned}: provisioned devices "
                          f"are {known[:20]}{' ...' if len(known) > 20 else ''}")
    config = load_device_config(config_path)
    if config.device_id != device_id:
        raise ConfigError(f"{config_path} is for device {config.device_id!r}, not {device_id!r}")
    _check_references(config, folder)
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
            mode = SECRET_MODE if _is_secret(path) else PUBLIC_MODE
            files.append(DeviceFile(path.name, path.read_bytes(), mode))
    return DeviceFolder(config, tuple(files))
