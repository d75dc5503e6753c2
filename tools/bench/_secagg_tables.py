"""The SecAgg+ benchmark's tables: fedge's costs per point, then Flower's beside them."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fedge.tools.bench._secagg_round import PointResult

OURS_COLUMNS = (
    "n",
    "d",
    "drop",
    "k/t",
    "adv ms",
    "share ms",
    "mask ms",
    "unmask ms",
    "KiB up/down",
    "srv add ms",
    "srv unmask",
    "PRG bound",
    "ratio",
    "masks",
    "peak MiB",
)
FLOWER_COLUMNS = (
    "n",
    "d",
    "drop",
    "share: flwr / ours",
    "mask: flwr / ours",
    "unmask: flwr / ours",
    "unmask speed-up",
)


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ours_table(results: list[PointResult]) -> Table:
    """fedge's client stages, bytes and server costs, one row per point."""
    ours = Table(title="fedge SecAgg+ (one representative client; server in its own process)")
    for col in OURS_COLUMNS:
        ours.add_column(col, justify="right")
    for r in results:
        s = r.server
        ours.add_row(
            str(r.n),
            f"{r.d:,}",
            f"{r.dropout:.0%}",
            f"{r.k}/{r.t}",
            f"{r.client_ms['advertise']:.1f}",
            f"{r.client_ms['share_keys']:.0f}",
            f"{r.client_ms['masked_input']:.0f}",
            f"{r.client_ms['unmask']:.1f}",
            f"{r.bytes_up / 1024:.0f}/{r.bytes_down / 1024:.0f}",
            f"{s['add_ms_per_input']:.2f}",
            _fmt_s(s["unmask_s"]),
            _fmt_s(s["prg_bound_s"]),
            f"{s['unmask_s'] / s['prg_bound_s']:.2f}x",
            f"{s['masks']:,}",
            f"{s['peak_mem_mb']:.1f}",
        )
    return ours


def flower_table(results: list[PointResult]) -> Table:
    """Flower's costs for the same points beside ours (an error row where Flower failed)."""
    vs = Table(title="Flower 1.42 SecAgg+ code paths (same n, d, k, t, dropouts) vs fedge")
    for col in FLOWER_COLUMNS:
        vs.add_column(col, justify="right")
    for r in results:
        f = r.flower
        if not f or "error" in f:
            vs.add_row(str(r.n), f"{r.d:,}", f"{r.dropout:.0%}", f.get("error", "-"), "", "", "")
            continue
        vs.add_row(
            str(r.n),
            f"{r.d:,}",
            f"{r.dropout:.0%}",
            f"{_fmt_s(f['client_share_s'])} / {_fmt_s(r.client_ms['share_keys'] / 1e3)}",
            f"{_fmt_s(f['client_mask_s'])} / {_fmt_s(r.client_ms['masked_input'] / 1e3)}",
            f"{_fmt_s(f['server_unmask_s'])} / {_fmt_s(r.server['unmask_s'])}",
            f"{f['server_unmask_s'] / r.server['unmask_s']:.1f}x",
        )
    return vs


def print_tables(console: Console, results: list[PointResult], command: str) -> None:
    """Our table, Flower's when any point has Flower costs, then the command."""
    console.print(ours_table(results))
    if any(r.flower for r in results):
        console.print(flower_table(results))
    console.print(f"command: {command}")
