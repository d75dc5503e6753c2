"""Selection: eligibility rules, seeded selection, pace-steering windows, wake groups, closing."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.errors import ProtocolError
from fedge.edge_client.protocol.messages import CheckIn, Eligibility
from fedge.edge_client.protocol.topics import WAKE_GROUPS, wake, wake_group
from fedge.server.job import SelectionConfig
from fedge.server.selection import (
    CLOSE_FACTOR,
    WAKE_ALL_SHARE,
    WAKE_SLACK,
    SelectionPool,
    WakePlan,
    ineligibility,
    round_rng,
    round_seed,
)


def checkin(examples: int = 100, **eligibility: Any) -> CheckIn:
    return CheckIn(eligibility=replace(Eligibility(), **eligibility), runtime="tflite_runtime",
                   runtime_version="2.14.0", examples=examples)


STRICT = SelectionConfig(require_charging=True, require_unmetered=True, require_idle=True,
                         min_battery=0.5, min_free_memory_mb=256)


@pytest.mark.parametrize("device, reason", [
    (checkin(charging=False), "not charging"),
    (checkin(unmetered=False), "metered"),
    (checkin(idle=False), "not idle"),
    (checkin(battery=0.49), "battery 49% below 50%"),
    (checkin(free_memory_mb=255), "free memory 255 MB below 256 MB"),
    (checkin(examples=0), "no local training examples"),
])
def test_each_rule_excludes_a_device(device: CheckIn, reason: str) -> None:
    why = ineligibility(device, STRICT)
    assert why is not None and reason in why


def test_eligible_device_and_lenient_rules() -> None:
    assert ineligibility(checkin(battery=0.5, free_memory_mb=256), STRICT) is None
    lenient = SelectionConfig()
    assert ineligibility(checkin(charging=False, unmetered=False, idle=False, battery=0.0,
                                 free_memory_mb=0), lenient) is None


def test_round_rng_is_deterministic_and_separated_by_purpose() -> None:
    def draw(*args: object) -> list[float]:
        rng = round_rng(*args)  # type: ignore[arg-type]
        return [rng.random() for _ in range(4)]

    assert draw(1, "job", 3, 1, "select") == draw(1, "job", 3, 1, "select")
    variants = [draw(2, "job", 3, 1, "select"), draw(1, "job2", 3, 1, "select"),
                draw(1, "job", 4, 1, "select"), draw(1, "job", 3, 2, "select"),
                draw(1, "job", 3, 1, "other")]
    assert all(v != draw(1, "job", 3, 1, "select") for v in variants)
    seeds = {round_seed(0, "job", r, a) for r in range(20) for a in range(3)}
    assert len(seeds) == 60 and all(0 <= s < 2**62 for s in seeds)


def pool_with(ids: list[str], rules: SelectionConfig | None = None) -> SelectionPool:
    pool = SelectionPool(rules or SelectionConfig())
    for d in ids:
        pool.add(d, checkin())
    return pool


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.from_regex(r"dev-[0-9]{1,4}", fullmatch=True), unique=True, max_size=40),
       count=st.integers(0, 50), seed=st.integers(0, 2**32), order_seed=st.integers(0, 1000))
def test_seeded_selection_is_deterministic_and_partitions_the_pool(
        ids: list[str], count: int, seed: int, order_seed: int) -> None:
    first = pool_with(ids)
    shuffled = list(ids)
    random.Random(order_seed).shuffle(shuffled)
    second = pool_with(shuffled)  # same devices, checked in in another order
    chosen, rest = first.select(random.Random(seed), count)
    assert (chosen, rest) == second.select(random.Random(seed), count)
    assert len(chosen) == min(count, len(ids))
    assert sorted(chosen + rest) == sorted(ids) and not set(chosen) & set(rest)
    assert chosen == sorted(chosen)
    assert first.waiting == {}


def test_different_rounds_select_different_devices() -> None:
    ids = [f"dev-{i:03d}" for i in range(100)]
    picks = {tuple(pool_with(ids).select(round_rng(0, "job", r, 1, "select-train"), 10)[0])
             for r in range(1, 6)}
    assert len(picks) == 5


def test_a_device_checking_in_twice_waits_once_and_remove_forgets_it() -> None:
    pool = pool_with(["a", "b", "a"])
    assert sorted(pool.waiting) == ["a", "b"]
    pool.remove("a")
    pool.remove("never-seen")
    assert sorted(pool.waiting) == ["b"]


def retry_windows(checkins: int, eta_s: float, demand: int, seed: int = 7) -> list[float]:
    pool = pool_with([f"dev-{i}" for i in range(checkins)], SelectionConfig(retry_window_s=10.0))
    rng = random.Random(seed)
    return [pool.retry_window(rng, eta_s, demand) for _ in range(200)]


def test_retry_windows_grow_with_the_checkin_rate() -> None:
    levels = [1, 30, 120, 600, 3000]
    windows = {n: retry_windows(n, eta_s=5.0, demand=10) for n in levels}
    for low, high in zip(levels, levels[1:], strict=False):
        # same random draws, larger spread: every window is at least as long
        assert all(a <= b for a, b in zip(windows[low], windows[high], strict=True)), (low, high)
    mean = {n: sum(w) / len(w) for n, w in windows.items()}
    assert mean[3000] > 5 * mean[1]


@pytest.mark.parametrize("checkins", [1, 100, 5000])
@pytest.mark.parametrize("eta_s", [0.0, 3.0, 60.0])
def test_retry_window_bounds(checkins: int, eta_s: float) -> None:
    base = max(eta_s, 0.5)
    for w in retry_windows(checkins, eta_s, demand=10):
        assert base <= w <= base + 10 * max(eta_s, 10.0) + 1e-9


def test_small_fleet_comes_back_right_after_the_round() -> None:
    windows = retry_windows(5, eta_s=20.0, demand=10)
    assert all(20.0 <= w <= 25.0 for w in windows)


def test_an_online_fleet_far_above_demand_gets_long_windows_even_at_a_low_rate() -> None:
    # a connecting fleet: few recent check-ins, a short eta, but 10,000 devices online that
    # would all come back after a short window
    pool = pool_with(["a"], SelectionConfig(retry_window_s=2.0))
    rng = random.Random(3)
    windows = [pool.retry_window(rng, 1.0, demand=1000, online=10_000) for _ in range(200)]
    assert all(1.0 <= w <= 1.0 + 8 * 2.0 for w in windows)
    assert sum(windows) / len(windows) > 5.0
    small = [pool.retry_window(rng, 1.0, demand=1000, online=1500) for _ in range(200)]
    assert all(1.0 <= w <= 1.25 for w in small)


WAKE = CLOSE_FACTOR * WAKE_SLACK  # devices woken per device wanted, at a response rate of 1


@pytest.mark.parametrize("want, online, expected", [
    (10, 0, 1.0), (10, 12, 1.0), (10, math.floor(WAKE * 10 / WAKE_ALL_SHARE), 1.0),
    (10, 100, WAKE / 10), (1, 3000, WAKE / 3000)])
def test_wake_probability(want: int, online: int, expected: float) -> None:
    assert SelectionPool(SelectionConfig()).wake_probability(want, online) == pytest.approx(expected)
    assert SelectionPool(SelectionConfig(wake_all=True)).wake_probability(want, online) == 1.0


def test_a_fleet_that_answers_less_is_woken_more() -> None:
    pool = pool_with([f"d{i}" for i in range(40)])  # 40 of 100 woken answered (no count close)
    pool.observe_response(woken=100.0, want=50)
    assert pool.response_rate == pytest.approx(0.7)  # halfway from 1.0 to 0.4
    assert pool.wake_probability(50, 1000) == pytest.approx(WAKE * 50 / (1000 * 0.7))
    pool.observe_response(woken=100.0, want=50)
    assert pool.response_rate == pytest.approx(0.55)
    nobody = SelectionPool(SelectionConfig())
    for _ in range(20):
        nobody.observe_response(woken=100.0, want=50)
    assert nobody.response_rate == pytest.approx(0.05, rel=1e-3)  # floor: no unbounded wake
    assert nobody.wake_probability(50, 100_000) == pytest.approx(WAKE * 50 / 5000, rel=1e-3)
    before = nobody.response_rate
    nobody.observe_response(woken=0.5, want=50)  # nobody was woken: nothing learned
    assert nobody.response_rate == before


def test_a_selection_closed_on_its_count_only_raises_the_rate() -> None:
    n = math.ceil(CLOSE_FACTOR * 10)  # CLOSE_FACTOR x 10 wanted: closed on count
    full = pool_with([f"d{i}" for i in range(n)])
    full.response_rate = 0.5
    full.observe_response(woken=100.0, want=10)  # n / 100 is a lower bound, not a measurement
    assert full.response_rate == 0.5
    full.observe_response(woken=n / 0.65, want=10)  # n of n / 0.65: the rate is at least 0.65
    assert full.response_rate == pytest.approx(0.65)


def test_should_close() -> None:
    quiet = SelectionConfig(quiet_period_s=0.0, selection_timeout_s=30.0)
    busy = SelectionConfig(quiet_period_s=3600.0, selection_timeout_s=30.0)
    # every reachable device waits (and at least the minimum): nobody else can come
    assert pool_with(["a", "b", "c"], busy).should_close(10, 3, reachable=3, waited_s=0.0)
    assert not pool_with(["a", "b"], busy).should_close(10, 3, reachable=2, waited_s=0.0)
    # enough devices and the check-ins went quiet
    assert pool_with(list("abcde"), quiet).should_close(5, 2, reachable=50, waited_s=0.0)
    assert not pool_with(list("abcde"), busy).should_close(5, 2, reachable=50, waited_s=0.0)
    assert not pool_with(list("abcd"), quiet).should_close(5, 2, reachable=50, waited_s=0.0)
    # CLOSE_FACTOR x the demand waits: close while check-ins keep coming (a large fleet)
    ample = [f"d{i}" for i in range(math.ceil(CLOSE_FACTOR * 10))]
    assert pool_with(ample, busy).should_close(10, 2, reachable=5000, waited_s=0.0)
    assert not pool_with(ample[:-1], busy).should_close(10, 2, reachable=5000, waited_s=0.0)
    everyone = replace(busy, wake_all=True)  # waits for every device (same clients every run)
    assert not pool_with(ample, everyone).should_close(10, 2, 5000, waited_s=0.0)
    small = pool_with(ample, busy)  # a round-open that went to every device waits for all
    plan = small.wake_plan(random.Random(0), 10, online=20, grouped=True)
    assert plan.everyone and not small.should_close(10, 2, 20, 0.0, woke_everyone=plan.everyone)
    # the timeout closes with at least the minimum, never below it
    assert pool_with(list("ab"), busy).should_close(5, 2, reachable=50, waited_s=30.0)
    assert not pool_with(list("a"), busy).should_close(5, 2, reachable=50, waited_s=30.0)
    assert not pool_with(list("ab"), busy).should_close(5, 2, reachable=50, waited_s=29.9)


@settings(max_examples=100, deadline=None)
@given(want=st.integers(1, 2000), online=st.integers(1, 50_000), seed=st.integers(0, 1000))
def test_wake_plan_wakes_the_same_expected_share_through_few_groups(want: int, online: int,
                                                                    seed: int) -> None:
    pool = SelectionPool(SelectionConfig())
    share = pool.wake_probability(want, online)
    plan = pool.wake_plan(random.Random(seed), want, online, grouped=True)
    if share >= 1.0:
        assert plan == WakePlan(None, 1.0, online)
        return
    assert plan.groups is not None and len(set(plan.groups)) == len(plan.groups)
    assert all(0 <= g < WAKE_GROUPS for g in plan.groups)
    # expected woken devices: the groups' share of the fleet times the raised probability
    assert len(plan.groups) / WAKE_GROUPS * plan.probability == pytest.approx(share)
    assert plan.woken == pytest.approx(share * online)
    assert len(plan.groups) == max(1, math.ceil(share * WAKE_GROUPS))
    assert plan.topics("farm") == [f"fedge/v1/farm/wake/{g}" for g in plan.groups]


def test_wake_plan_without_groups_goes_to_the_whole_fleet() -> None:
    plan = SelectionPool(SelectionConfig()).wake_plan(random.Random(0), 10, 1000, grouped=False)
    assert plan == WakePlan(None, pytest.approx(WAKE / 100), pytest.approx(WAKE * 10))
    assert plan.topics("farm") == ["fedge/v1/farm/broadcast"]


def test_wake_groups_split_a_fleet_evenly_and_stay_put() -> None:
    ids = [f"dev-{i:05d}" for i in range(10_000)]
    counts = Counter(wake_group(d) for d in ids)
    assert set(counts) == set(range(WAKE_GROUPS))
    assert max(counts.values()) < 1.4 * 10_000 / WAKE_GROUPS  # 156 expected per group
    assert [wake_group(d) for d in ids[:50]] == [wake_group(d) for d in ids[:50]]
    with pytest.raises(ProtocolError, match="wake group"):
        wake("farm", WAKE_GROUPS)
