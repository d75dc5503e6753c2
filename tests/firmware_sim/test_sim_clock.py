"""Tests of firmware_sim.clock: manual stepping and scaled wall time."""

from __future__ import annotations

import asyncio

import pytest

from fedge.edge_client.errors import ConfigError
from fedge.firmware_sim.clock import ManualClock, ScaledClock


def test_manual_clock_wakes_sleepers_in_deadline_order() -> None:
    async def scenario() -> list[str]:
        clock = ManualClock(start_s=100.0)
        woke: list[str] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append(f"{name}@{clock.now():g}")

        tasks = [asyncio.create_task(sleeper("b", 20)), asyncio.create_task(sleeper("a", 10))]
        await asyncio.sleep(0)
        assert clock.sleepers == 2
        clock.advance(5)
        await asyncio.sleep(0)
        assert woke == []
        clock.advance(5)
        await asyncio.sleep(0)
        assert woke == ["a@110"]
        clock.advance(100)
        await asyncio.gather(*tasks)
        assert clock.sleepers == 0
        await clock.sleep(0)
        return woke

    assert asyncio.run(scenario()) == ["a@110", "b@210"]


def test_manual_clock_never_runs_backwards() -> None:
    clock = ManualClock()
    with pytest.raises(ConfigError, match="advances"):
        clock.advance(-1)
    clock.advance(0)
    assert clock.now() == 0.0


def test_cancelled_sleeper_does_not_break_advance() -> None:
    async def scenario() -> int:
        clock = ManualClock()
        task = asyncio.create_task(clock.sleep(10))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        clock.advance(20)
        return clock.sleepers

    assert asyncio.run(scenario()) == 0


def test_scaled_clock_runs_simulated_time_faster() -> None:
    clock = ScaledClock(speedup=36_000.0, start_s=20 * 3600.0)
    assert clock.to_wall(3600.0) == pytest.approx(0.1)

    async def scenario() -> float:
        before = clock.now()
        await clock.sleep(1800.0)
        return clock.now() - before

    assert asyncio.run(scenario()) >= 1800.0 - 0.01
    assert clock.now() >= 20 * 3600.0 + 1800.0 - 0.01


@pytest.mark.parametrize("speedup", [0.0, -2.0, float("inf"), float("nan")])
def test_scaled_clock_rejects_bad_speedups(speedup: float) -> None:
    with pytest.raises(ConfigError, match="speedup"):
        ScaledClock(speedup)
