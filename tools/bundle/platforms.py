"""Target platforms of a device bundle: machine name and the wheel tags pip may pick for it."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.edge_client.errors import ConfigError

PYTHON_VERSION = "3.11"
IMPLEMENTATION = "cp"


@dataclass(frozen=True)
class Platform:
    """One bundle target: CPython 3.11 on a Linux machine with a minimum glibc."""

    name: str
    machine: str
    """What ``uname -m`` prints on the device (install.sh refuses any other machine)."""
    wheel_tags: tuple[str, ...]
    """Platform tags given to ``pip download --platform`` (pip accepts any of them)."""
    devices: str
    """Which devices the bundle is for (shown in messages and the docs)."""


def _manylinux(machine: str, newest: int, oldest: int, legacy: tuple[str, ...]) -> tuple[str, ...]:
    """Every ``manylinux_2_N`` tag from glibc 2.``newest`` down to 2.``oldest``, then the legacy
    aliases; pip does not expand a ``--platform`` tag to older glibc versions by itself."""
    tags = tuple(f"manylinux_2_{minor}_{machine}" for minor in range(newest, oldest - 1, -1))
    return tags + tuple(f"{name}_{machine}" for name in legacy)


PLATFORMS: dict[str, Platform] = {
    "linux_x86_64": Platform(
        name="linux_x86_64",
        machine="x86_64",
        wheel_tags=_manylinux("x86_64", 28, 5, ("manylinux2014", "manylinux2010", "manylinux1")),
        devices="x86_64 Linux with glibc >= 2.28 (Debian 10+, Ubuntu 18.10+), e.g. an edge PC",
    ),
    "linux_aarch64": Platform(
        name="linux_aarch64",
        machine="aarch64",
        # tflite-runtime 2.14 ships aarch64 wheels only as manylinux_2_34 (glibc 2.34+).
        wheel_tags=_manylinux("aarch64", 34, 17, ("manylinux2014",)),
        devices="64-bit Raspberry Pi OS Bookworm (glibc 2.36) or another aarch64 Linux with "
                "glibc >= 2.34",
    ),
}


def get_platform(name: str) -> Platform:
    """The platform called ``name``.

    Raises
    ------
    ConfigError
        If no bundle can be built for that name.
    """
    try:
        return PLATFORMS[name]
    except KeyError:
        raise ConfigError(
            f"unknown platform {name!r}: choose one of {sorted(PLATFORMS)} (tflite-runtime 2.14 "
            "has no 32-bit ARM wheel, so armv7l devices need 64-bit Raspberry Pi OS)"
        ) from None
