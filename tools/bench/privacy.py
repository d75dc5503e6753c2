"""Privacy benchmark: final accuracy against epsilon, central and distributed DP, in the simulator.

Run ``python -m tools.bench.privacy [--quick] [--reuse]``.

Every row is one real simulation (``firmware_sim.sim.run_sim``: embedded broker, real agents
training ``cnn-fmnist`` on Fashion-MNIST through TFLite, real server; distributed rows also
run SecAgg+) with the same devices, partition, seed, rounds and clients per round. For each
target epsilon the noise multiplier z is calibrated with the job's own accountant so that
exactly the planned rounds fit the budget, and the job carries ``target_eps`` so it would stop
before exceeding it. Columns: mode, target epsilon, calibrated z, epsilon reached after the
last round (from ``summary.json``), rounds committed, final central accuracy on the 10k test
set and the mean of the last three rounds.

Distributed rows account conservatively with the fewest devices whose noise a released sum can
hold (the round's minimum reports); the benchmark sets that minimum to every selected device
(no dropouts are simulated), so both modes are accounted for the same cohort.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedge.edge_client.errors import ConfigError
from fedge.firmware_sim.plots import plot_accuracy_vs_epsilon
from fedge.firmware_sim.sim import SimConfig
from fedge.server.privacy.job_privacy import AccountedPrivacy, job_privacy_for
from fedge.tools.bench._common import (
    QUICK_FLEET,
    FleetSetting,
    command_line,
    machine_load,
    markdown_table,
    print_table,
    quiet_logs,
    run_or_reuse,
    write_json,
)

TARGETS = (1.0, 4.0, 8.0)
MODES = ("central", "distributed")
DOC_PLOT = Path("docs/img/privacy_accuracy_vs_epsilon.png")
COLUMNS = ("mode", "target eps", "z", "eps reached", "rounds", "final acc", "last-3 acc",
           "wall s")


@dataclass(frozen=True)
class Setting(FleetSetting):
    """The federated setting shared by every row: IID shards, one clip norm and delta."""

    partition: str = "iid"
    clip: float = 1.0
    delta: float = 1e-5


FULL = Setting()
QUICK = Setting(**QUICK_FLEET)


def epsilon_function(s: Setting, mode: str, dim: int) -> Callable[[float], float]:
    """epsilon after `s.rounds` rounds as a function of z, for an update of `dim` values,
    from the controller the job builds."""

    def epsilon(z: float) -> float:
        dp = job_privacy_for(
            f"{mode}:z={z!r},clip={s.clip!r},delta={s.delta!r}",
            expected_clients=s.clients_per_round,
            max_clients=s.clients_per_round,
            min_clients=s.clients_per_round,
            dim=dim,
        )
        assert isinstance(dp, AccountedPrivacy)  # a DP spec makes an accounted privacy
        return dp.ensure_accountant(s.devices, rounds_done=0).epsilon_after(s.rounds)

    return epsilon


def calibrate_z(epsilon: Callable[[float], float], target: float, steps: int = 40) -> float:
    """The smallest z (to 0.1 %) whose epsilon after the planned rounds is <= `target`."""
    low, high = 0.05, 0.05
    while epsilon(high) > target:
        low, high = high, high * 2
        if high > 1e3:
            raise ConfigError(f"no noise multiplier below 1000 reaches epsilon {target}")
    for _ in range(steps):
        if high / low < 1.001:
            break
        mid = math.sqrt(low * high)
        if epsilon(mid) > target:
            low = mid
        else:
            high = mid
    return high


def sim_config(s: Setting, dp: str | None, out: Path) -> SimConfig:
    """The simulator configuration of one row (everything but the DP spec is shared)."""
    return SimConfig(out=out, devices=s.devices, rounds=s.rounds, dataset="fashion-mnist",
                     model="cnn-fmnist", partition=s.partition,
                     clients_per_round=s.clients_per_round, over_selection=1.0,
                     min_report_fraction=1.0, availability="always", dropout=0.0,
                     profiles="android-high", seed=s.seed, dp=dp, local_epochs=s.local_epochs,
                     lr=s.lr, progress=False, round_deadline_s=s.round_deadline_s,
                     secagg_stage_timeout_s=30.0)


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    mode: str
    target_epsilon: float | None
    noise_multiplier: float | None
    epsilon: float | None
    rounds: int
    final_accuracy: float
    last3_accuracy: float
    wall_s: float

    def cells(self) -> list[object]:
        return [self.mode, self.target_epsilon, self.noise_multiplier,
                None if self.epsilon is None else round(self.epsilon, 3), self.rounds,
                round(100 * self.final_accuracy, 2), round(100 * self.last3_accuracy, 2),
                round(self.wall_s)]


def make_row(mode: str, target: float | None, z: float | None, summary: dict[str, Any]) -> Row:
    rounds = summary["rounds"]
    if not rounds:
        raise ConfigError(f"{mode} eps={target}: no committed rounds ({summary.get('status')})")
    acc = [float(r["accuracy"]) for r in rounds]
    return Row(mode=mode, target_epsilon=target,
               noise_multiplier=None if z is None else round(z, 4),
               epsilon=rounds[-1]["epsilon"], rounds=len(rounds), final_accuracy=acc[-1],
               last3_accuracy=float(np.mean(acc[-3:])),
               wall_s=float(summary.get("wall_time_s", 0.0)))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="accuracy against epsilon, central and distributed DP")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK.devices} devices, {QUICK.rounds} rounds, "
                        f"{QUICK.clients_per_round} per round, epsilon 8 only")
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--clip", type=float, help="override the L2 clip norm")
    p.add_argument("--targets", help="comma-separated target epsilons (default: 1,4,8)")
    p.add_argument("--modes", default=",".join(MODES), help="central,distributed")
    p.add_argument("--reuse", action="store_true",
                   help="reuse finished runs in OUT/privacy-runs with the identical config")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="results directory")
    p.add_argument("--plot", type=Path,
                   help=f"plot PNG (default: {DOC_PLOT} for full runs, OUT/... for --quick)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Calibrate z per target, run every row, print the table, write JSON, Markdown, plot."""
    args = parse_args(argv)
    quiet_logs()
    base = QUICK if args.quick else FULL
    s = replace(base, rounds=args.rounds or base.rounds, clip=args.clip or base.clip)
    targets = ([float(t) for t in args.targets.split(",")] if args.targets
               else [8.0] if args.quick else list(TARGETS))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= set(MODES):
        raise ConfigError(f"--modes must be among {MODES}, got {modes}")
    name = "privacy-quick" if args.quick else "privacy"
    runs_dir = args.out / f"{name}-runs"
    load_before = machine_load()
    t0 = time.time()
    print(f"[privacy] no DP: {s.rounds} rounds ...", flush=True)
    reference = run_or_reuse(sim_config(s, None, runs_dir / "none"), args.reuse)
    params = int(reference["params"])  # trainable parameters of cnn-fmnist
    rows = [make_row("no DP", None, None, reference)]
    for mode in modes:
        epsilon = epsilon_function(s, mode, params)
        for target in targets:
            z = calibrate_z(epsilon, target)
            spec = f"{mode}:z={z!r},clip={s.clip!r},delta={s.delta!r},target_eps={target!r}"
            print(f"[privacy] {mode} eps={target:g}: z={z:.4f}, {s.rounds} rounds ...", flush=True)
            summary = run_or_reuse(sim_config(s, spec, runs_dir / f"{mode}-eps{target:g}"), args.reuse)
            rows.append(make_row(mode, target, z, summary))
            print(f"[privacy] {mode} eps={target:g}: final accuracy {rows[-1].final_accuracy:.4f}",
                  flush=True)
    plot = args.plot or (args.out / "privacy_quick.png" if args.quick else DOC_PLOT)
    points = [{"epsilon": math.inf, "accuracy": rows[0].final_accuracy, "series": "no DP"}]
    points += [{"epsilon": r.epsilon, "accuracy": r.final_accuracy, "series": r.mode}
               for r in rows[1:]]
    plot_accuracy_vs_epsilon(points, plot)
    table = [r.cells() for r in rows]
    command = command_line("tools.bench.privacy")
    note = (f"cnn-fmnist ({params:,} params) on Fashion-MNIST, {s.devices} devices, "
            f"{s.partition}, {s.clients_per_round} per round (q = "
            f"{s.clients_per_round / s.devices:g}), {s.rounds} rounds, {s.local_epochs} local "
            f"epoch(s), lr {s.lr}, clip {s.clip}, delta {s.delta:g}, seed {s.seed}; accuracies "
            f"in %. z calibrated per row so that {s.rounds} rounds reach the target. Load before "
            f"{load_before['loadavg']}, after {machine_load()['loadavg']}; total "
            f"{time.time() - t0:.0f} s.")
    print_table("privacy: accuracy against epsilon", COLUMNS, table, command, note)
    payload = {"command": command, "setting": asdict(s), "rows": [asdict(r) for r in rows],
               "load_before": load_before, "load_after": machine_load(), "plot": str(plot)}
    path = write_json(args.out, f"{name}.json", payload)
    (args.out / f"{name}.md").write_text(markdown_table(COLUMNS, table) + f"\n\n{note}\n\n"
                                          f"`{command}`\n")
    print(f"wrote {path}, {args.out / f'{name}.md'} and {plot}")


if __name__ == "__main__":
    main()
