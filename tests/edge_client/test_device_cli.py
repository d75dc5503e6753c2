"""The device install's `fedge` command: `fedge device --config PATH` and nothing else."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedge.edge_client import cli, device_main, event_loop
from fedge.edge_client.errors import ConfigError

Runner = Callable[[Callable[[asyncio.Event], object]], object]


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["device", "--config", "dev/device.toml"], False),
        (["-v", "device", "--config", "dev/device.toml"], True),
        (["device", "--config", "dev/device.toml", "--verbose"], True),
    ],
)
def test_parses_device_config(argv: list[str], verbose: bool) -> None:
    args = cli.build_parser().parse_args(argv)
    assert (args.command, args.config, args.verbose) == ("device", Path("dev/device.toml"), verbose)


def test_main_runs_the_device_until_a_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path, Runner]] = []

    def fake_run_device(path: Path, runner: Runner) -> int:
        calls.append((path, runner))
        return 0

    monkeypatch.setattr(device_main, "run_device", fake_run_device)
    assert cli.main(["device", "--config", "/opt/fedge/device.toml"]) == 0
    assert calls == [(Path("/opt/fedge/device.toml"), event_loop.run_until_signal)]


@pytest.mark.parametrize("command", ["server", "sim", "export", "provision", "bundle", "frob"])
def test_other_commands_are_refused_clearly(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--config", "x.toml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"'{command}'" in err and "not available on this device install" in err
    assert "fedge device --config PATH" in err


def test_help_and_missing_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "device" in capsys.readouterr().out
    for argv in ([], ["device"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2


def test_a_bad_config_is_an_error_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(path: Path, runner: Runner) -> int:
        raise ConfigError(f"device config not found: {path}")

    monkeypatch.setattr(device_main, "run_device", refuse)
    assert cli.main(["device", "--config", "nowhere.toml"]) == 2
    assert "fedge: error: device config not found: nowhere.toml" in capsys.readouterr().err


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    """Put SIGINT/SIGTERM back afterwards: uvloop leaves its handlers installed when it closes."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("own_signal_handlers")
def test_run_until_signal_sets_stop_on_sigterm() -> None:
    async def agent(stop: asyncio.Event) -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), timeout=10)
        return "stopped"

    assert event_loop.run_until_signal(agent) == "stopped"


@pytest.mark.usefixtures("own_signal_handlers")
def test_run_until_signal_needs_an_awaitable() -> None:
    with pytest.raises(TypeError, match="not an awaitable"):
        event_loop.run_until_signal(lambda stop: None)
