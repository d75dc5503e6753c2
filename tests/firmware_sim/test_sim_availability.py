"""Tests of firmware_sim.availability: daily patterns, trace files, next_available consistency."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.errors import ConfigError
from fedge.firmware_sim.availability import DAY_S, Availability, load_trace, pattern_availability

H = 3600.0


@pytest.mark.parametrize("seed", range(40))
def test_night_charging_is_off_at_noon_and_on_at_two(seed: int) -> None:
    av = pattern_availability("night-charging", seed)
    for day in (0, 1, 5):
        assert not av.is_available(day * DAY_S + 12 * H)
        assert av.is_available(day * DAY_S + 2 * H)


def test_night_charging_jitter_differs_between_devices() -> None:
    windows = {pattern_availability("night-charging", (0, i)).intervals for i in range(10)}
    assert len(windows) == 10
    assert pattern_availability("night-charging", (0, 3)) == pattern_availability(
        "night-charging", (0, 3)
    )


def test_office_hours_and_always() -> None:
    office = pattern_availability("office-hours-idle", 1)
    assert office.is_available(13 * H) and not office.is_available(3 * H)
    assert office.next_available(3 * H) > 7 * H
    always = pattern_availability("always", 1)
    assert always.is_available(0.0) and always.is_available(123_456.7)
    assert always.next_unavailable(42.0) == math.inf


def test_random_sessions_are_seeded_and_partial() -> None:
    a = pattern_availability("random-sessions", 5)
    assert a == pattern_availability("random-sessions", 5)
    online = sum(end - start for start, end in a.intervals)
    assert 0 < online < DAY_S


def test_unknown_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown availability pattern"):
        pattern_availability("weekends", 0)


def test_session_across_midnight_ends_next_morning() -> None:
    av = Availability.from_intervals([(0.0, 5 * H), (20 * H, DAY_S)], DAY_S)
    assert av.next_unavailable(23 * H) == DAY_S + 5 * H
    assert av.next_available(6 * H) == 20 * H
    assert av.next_available(DAY_S + 6 * H) == DAY_S + 20 * H


@st.composite
def availabilities(draw: st.DrawFn) -> Availability:
    period = draw(st.sampled_from([None, 100.0, 1000.0]))
    limit = 1000 if period is None else int(period)
    pairs = draw(
        st.lists(st.tuples(st.integers(0, limit - 1), st.integers(1, 50)), min_size=1, max_size=6)
    )
    return Availability.from_intervals(
        [(float(s), float(min(s + d, limit))) for s, d in pairs], period
    )


@settings(max_examples=200, deadline=None)
@given(availabilities(), st.integers(0, 3000))
def test_next_available_and_unavailable_agree_with_is_available(av: Availability, t: int) -> None:
    now = float(t)
    na = av.next_available(now)
    assert na >= now
    probes = (
        [now + (na - now) * k / 40 for k in range(40)] if math.isfinite(na) else [now, now + 1e6]
    )
    assert all(not av.is_available(p) for p in probes) or na == now
    if math.isfinite(na):
        assert av.is_available(na)
    else:
        assert av.period_s is None
    nu = av.next_unavailable(now)
    assert nu >= now
    if math.isfinite(nu):
        assert not av.is_available(nu)
        assert all(av.is_available(now + (nu - now) * k / 40) for k in range(40)) or nu == now


def test_availability_rejects_bad_intervals() -> None:
    with pytest.raises(ConfigError):
        Availability(((5.0, 3.0),))
    with pytest.raises(ConfigError):
        Availability(((0.0, 3.0), (2.0, 4.0)))
    with pytest.raises(ConfigError, match="period"):
        Availability(((0.0, 30.0),), 20.0)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_repeating_trace_loads(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "# phones seen in the field study\n#!repeat_s=86400\ndevice_id,start_s,end_s\n"
        "phone-1,0,3600\nphone-1,1800,7200\n\nphone-2, 79200 , 86400\n",
    )
    trace = load_trace(path)
    assert list(trace) == ["phone-1", "phone-2"]
    assert trace["phone-1"].intervals == ((0.0, 7200.0),)
    assert trace["phone-1"].is_available(DAY_S * 3 + 100)
    assert not trace["phone-1"].is_available(DAY_S * 3 + 7200)
    assert trace["phone-2"].next_available(100.0) == 79200.0


def test_one_shot_trace_ends(tmp_path: Path) -> None:
    trace = load_trace(_write(tmp_path, "device_id,start_s,end_s\nd0,10,20\nd0,50.5,60\n"))
    d0 = trace["d0"]
    assert d0.period_s is None
    assert d0.next_available(25.0) == 50.5
    assert d0.next_available(60.0) == math.inf
    assert not d0.is_available(DAY_S + 15)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no header"),
        ("# only comments\n", "no header"),
        ("device,start,end\nd0,1,2\n", ":1: expected header"),
        ("device_id,start_s,end_s\n", "no intervals"),
        ("device_id,start_s,end_s\nd0,1\n", ":2: expected 3 fields"),
        ("device_id,start_s,end_s\nd0,1,2,3\n", ":2: expected 3 fields"),
        ("device_id,start_s,end_s\nd0,abc,2\n", ":2: start_s must be a number"),
        ("device_id,start_s,end_s\nd0,-1,2\n", ":2: start_s must be a finite number >= 0"),
        ("device_id,start_s,end_s\nd0,1,inf\n", ":2: end_s must be a finite"),
        ("device_id,start_s,end_s\nd0,5,5\n", ":2: end_s 5.0 must be > start_s"),
        ("device_id,start_s,end_s\nbad/id,1,2\n", ":2: invalid device id"),
        ("device_id,start_s,end_s\n,1,2\n", ":2: invalid device id"),
        ("#!repeat_s=100\ndevice_id,start_s,end_s\nd0,50,150\n", ":3: end_s 150.0 exceeds"),
        ("#!repeat_s=0\ndevice_id,start_s,end_s\nd0,1,2\n", ":1: repeat_s must be > 0"),
        ("#!repeats=100\ndevice_id,start_s,end_s\nd0,1,2\n", ":1: the only directive"),
        ("device_id,start_s,end_s\n#!repeat_s=100\nd0,1,2\n", ":2: the only directive"),
        ("#!repeat_s=100\n#!repeat_s=100\ndevice_id,start_s,end_s\n", ":2: the only directive"),
    ],
)
def test_malformed_traces_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_trace(_write(tmp_path, text))


def test_missing_or_binary_trace_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read trace"):
        load_trace(tmp_path / "absent.csv")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="cannot read trace"):
        load_trace(binary)
