"""Device selection with over-selection, eligibility rules and pace steering (retry windows)."""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import deque
from dataclasses import dataclass

from fedge.edge_client.eligibility import ineligibility as device_ineligibility
from fedge.edge_client.protocol import topics
from fedge.edge_client.protocol.messages import CheckIn
from fedge.server.job import SelectionConfig

# Check-ins wanted per device wanted: selection closes at this many waiting (choice for the
# seeded draw), and wakes a little more (`WAKE_SLACK`) so that the count is usually reached.
CLOSE_FACTOR = 1.15
WAKE_SLACK = 1.1
# A round that would wake at least this share of the fleet wakes all of it and waits for every
# answer: little to save, and the cohort of a small, always-available fleet depends only on
# the seed.
WAKE_ALL_SHARE = 0.5


def round_rng(
    seed: int, job_id: str, round_number: int, attempt: int, purpose: str
) -> random.Random:
    """A deterministic RNG for one purpose of one round attempt."""
    material = f"{seed}/{job_id}/{round_number}/{attempt}/{purpose}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))


def round_seed(seed: int, job_id: str, round_number: int, attempt: int) -> int:
    """The seed a round hands to devices (shared random-k index sets, SecAgg+ graph)."""
    return round_rng(seed, job_id, round_number, attempt, "round-seed").getrandbits(62)


def ineligibility(checkin: CheckIn, selection: SelectionConfig) -> str | None:
    """Why a checked-in device may not train in this job now, or None when it may."""
    why = device_ineligibility(checkin.eligibility, selection.eligibility)
    if why is None and checkin.examples <= 0:
        return "no local training examples"
    return why


@dataclass(frozen=True)
class WakePlan:
    """Where a round-open goes: the whole fleet (``groups`` None) or some wake groups, and the
    probability with which a waiting device that receives it checks in early."""

    groups: tuple[int, ...] | None
    probability: float
    woken: float  # devices expected to check in early: the share reached times the probability

    @property
    def everyone(self) -> bool:
        """Whether every online device was asked to check in."""
        return self.groups is None and self.probability >= 1.0

    def topics(self, fleet: str) -> list[str]:
        """The topics to publish the round-open on."""
        if self.groups is None:
            return [topics.broadcast(fleet)]
        return [topics.wake(fleet, g) for g in self.groups]


@dataclass
class WaitingDevice:
    """A checked-in, eligible device waiting for the next selection."""

    device_id: str
    checkin: CheckIn
    since: float


class SelectionPool:
    """Checked-in devices waiting for a task, and the retry windows handed to the rest."""

    def __init__(self, rules: SelectionConfig):
        self.rules = rules
        self.waiting: dict[str, WaitingDevice] = {}
        self.last_added = 0.0
        self._recent_checkins: deque[float] = deque()
        # eligible check-ins per device a round-open reaches (learned; see `observe_response`)
        self.response_rate = 1.0

    def add(self, device_id: str, checkin: CheckIn) -> None:
        self.last_added = time.time()
        self.waiting[device_id] = WaitingDevice(device_id, checkin, self.last_added)
        self._note_checkin()

    def should_close(
        self, want: int, minimum: int, reachable: int, waited_s: float, woke_everyone: bool = False
    ) -> bool:
        """Close selection when enough devices wait and no more are coming, `CLOSE_FACTOR`
        times the demand waits, or at the timeout with at least the minimum (below the
        minimum the round keeps waiting in SELECTING: a fleet offline at night is no error).

        "No more are coming" means every reachable (online) device has checked in, or no
        check-in arrived for the quiet period; this keeps selection deterministic for a
        fleet that is fully available, and fast for one that is not.
        """
        n = len(self.waiting)
        if n >= reachable and n >= minimum:
            return True  # every online device is waiting: nobody else can come
        if n >= CLOSE_FACTOR * want and not (woke_everyone or self.rules.wake_all):
            return True  # ample choice: a large fleet's check-ins never leave a quiet gap
        if n >= want and time.time() - self.last_added >= self.rules.quiet_period_s:
            return True
        return waited_s >= self.rules.selection_timeout_s and n >= minimum

    def wake_probability(self, want: int, online: int) -> float:
        """Share of the online devices a round-open should wake: enough for `CLOSE_FACTOR`
        times the demand to check in (plus `WAKE_SLACK`), at the learned response rate.
        Selection closes once that many wait, and every extra check-in costs a reply.

        Every device with `wake_all` (then selection only depends on the seed: benchmarks
        comparing settings on the same clients use it), or from `WAKE_ALL_SHARE` up.
        """
        if self.rules.wake_all or online <= 0:
            return 1.0
        share = CLOSE_FACTOR * WAKE_SLACK * want / (online * self.response_rate)
        return 1.0 if share >= WAKE_ALL_SHARE else share

    def observe_response(self, woken: float, want: int) -> None:
        """Learn the response rate from the selection that just closed (before `select`).

        ``woken``: devices the round-open was expected to reach. Online devices that are
        unavailable or ineligible do not answer, so the rate can be well below 1 (a fleet
        that trains only while charging at night). A selection that closed on its count
        stopped listening early: its rate is a lower bound, so it may only raise the
        estimate; otherwise every answer came in and the estimate moves halfway to it.
        """
        if woken < 1.0:
            return
        observed = min(max(len(self.waiting) / woken, 0.05), 1.0)
        if len(self.waiting) >= CLOSE_FACTOR * want:
            self.response_rate = max(self.response_rate, observed)
        else:
            self.response_rate = (self.response_rate + observed) / 2

    def wake_plan(self, rng: random.Random, want: int, online: int, grouped: bool) -> WakePlan:
        """Wake about `wake_probability` of the fleet, through as few wake groups as needed.

        With ``grouped``, the round-open goes to ``ceil(share x WAKE_GROUPS)`` wake groups
        drawn with ``rng``, with the probability raised so that the expected number of woken
        devices is the same: the broker then delivers it to that share of the fleet instead of
        every device. Without it (DP jobs: waking by group would correlate which devices can
        be sampled) the whole fleet gets it, each device deciding on its own.
        """
        share = self.wake_probability(want, online)
        if not grouped or share >= 1.0:
            return WakePlan(None, share, share * online)
        count = math.ceil(share * topics.WAKE_GROUPS)  # 0 < share < 1: 1 to WAKE_GROUPS
        groups = tuple(sorted(rng.sample(range(topics.WAKE_GROUPS), count)))
        # the probability is <= 1 as count >= share x WAKE_GROUPS
        return WakePlan(groups, share * topics.WAKE_GROUPS / count, share * online)

    def remove(self, device_id: str) -> None:
        self.waiting.pop(device_id, None)

    def _note_checkin(self) -> None:
        now = time.time()
        self._recent_checkins.append(now)
        horizon = now - 60.0
        while self._recent_checkins and self._recent_checkins[0] < horizon:
            self._recent_checkins.popleft()

    def select(self, rng: random.Random, count: int) -> tuple[list[str], list[str]]:
        """Pick ``count`` waiting devices (seeded); return (selected, not selected)."""
        ids = sorted(self.waiting)
        chosen = sorted(rng.sample(ids, min(count, len(ids))))
        chosen_set = set(chosen)
        rest = [d for d in ids if d not in chosen_set]
        self.waiting.clear()
        return chosen, rest

    def retry_window(self, rng: random.Random, eta_s: float, demand: int, online: int = 0) -> float:
        """Pace steering: spread the next check-ins so about ``demand`` arrive near the next round.

        With a large fleet each device is told to come back later than the next round (a
        longer window), so that the broker and server see a steady check-in rate instead of
        the whole fleet at every round. The devices expected back are the larger of the recent
        check-in rate over ``eta_s`` and the ``online`` fleet (every online device that is not
        training comes back after its window; the rate alone undercounts them when ``eta_s``
        is short, and a short window then keeps the whole fleet checking in).
        """
        rate = len(self._recent_checkins) / 60.0  # check-ins per second over the last minute
        expected = max(rate * max(eta_s, 1.0), float(online))
        surplus = max(expected / max(demand, 1) - 2.0, 0.0)
        spread = min(surplus, 10.0) * max(eta_s, self.rules.retry_window_s)
        base = max(eta_s, 0.5)
        return round(base + rng.uniform(0.0, max(spread, 0.25 * base)), 3)
