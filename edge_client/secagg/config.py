"""Settings of one secure-aggregation round, shared by server and devices."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Self

from fedge.edge_client.errors import ProtocolError, SecAggError
from fedge.edge_client.names import check_name
from fedge.edge_client.secagg.graph import choose_graph_params, complete_graph_params

MAX_DIMENSION = 1 << 28  # 1 GiB of uint32: far above any model a device trains
_PPM = 1_000_000


class GraphKind(Enum):
    """Who shares with whom: SecAgg+ (sparse Harary graph) or classic SecAgg (everyone)."""

    HARARY = "harary"
    COMPLETE = "complete"


@dataclass(frozen=True)
class SecAggConfig:
    """Round settings; security-relevant fields should come from fleet policy, not the server.

    Attributes
    ----------
    fleet
        Fleet name, bound into identity certificates.
    dimension
        Length d of every input vector (uint32 ring elements, the weight included).
    dropout_rate, corrupt_fraction
        Planned fraction of devices dropping out during the round and tolerated fraction
        of devices colluding with the server; both drive the choice of (k, t). Carried
        at parts-per-million precision.
    security_bits, correctness_bits
        -log2 of the tolerated failure probability of privacy and of the round.
    graph
        :class:`GraphKind`: HARARY (SecAgg+) or COMPLETE (classic SecAgg).
    min_clients
        Devices refuse a roster with fewer devices than this.
    """

    fleet: str
    dimension: int
    dropout_rate: float = 0.1
    corrupt_fraction: float = 0.0
    security_bits: int = 40
    correctness_bits: int = 20
    graph: GraphKind = GraphKind.HARARY
    min_clients: int = 3

    def __post_init__(self) -> None:
        try:
            check_name("fleet", self.fleet)
        except ProtocolError as exc:
            raise SecAggError(str(exc)) from exc
        if not _is_int(self.dimension) or not 1 <= self.dimension <= MAX_DIMENSION:
            raise SecAggError(f"dimension must be an int in [1, {MAX_DIMENSION}]")
        for name in ("dropout_rate", "corrupt_fraction"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise SecAggError(f"{name} must be a number in [0, 1), got {value!r}")
            object.__setattr__(self, name, round(value * _PPM) / _PPM)
        for name in ("security_bits", "correctness_bits"):
            if not _is_int(getattr(self, name)) or not 1 <= getattr(self, name) <= 256:
                raise SecAggError(f"{name} must be an int in [1, 256]")
        if not isinstance(self.graph, GraphKind):
            raise SecAggError(f"graph must be a GraphKind, got {self.graph!r}")
        if not _is_int(self.min_clients) or self.min_clients < 2:
            raise SecAggError("min_clients must be an int >= 2")

    def graph_params(self, n: int) -> tuple[int, int]:
        """(k, t) for a roster of n devices; both sides compute it, neither trusts the other."""
        if self.graph is GraphKind.COMPLETE:
            return complete_graph_params(n, self.corrupt_fraction)
        return choose_graph_params(
            n, self.dropout_rate, self.corrupt_fraction, self.security_bits, self.correctness_bits
        )

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-friendly dict (rates as integer parts per million)."""
        return {
            "fleet": self.fleet,
            "dim": self.dimension,
            "dropout_ppm": round(self.dropout_rate * _PPM),
            "corrupt_ppm": round(self.corrupt_fraction * _PPM),
            "sec_bits": self.security_bits,
            "cor_bits": self.correctness_bits,
            "graph": self.graph.value,
            "min_clients": self.min_clients,
        }

    @classmethod
    def from_wire(cls, d: Any) -> Self:
        """Validate and decode; raises SecAggError on anything malformed."""
        keys = {"fleet", "dim", "dropout_ppm", "corrupt_ppm", "sec_bits", "cor_bits"}
        keys |= {"graph", "min_clients"}
        if not isinstance(d, dict) or set(d) != keys:
            raise SecAggError(f"secagg config must be a dict with keys {sorted(keys)}")
        for key in keys - {"fleet", "graph"}:
            if not _is_int(d[key]):
                raise SecAggError(f"secagg config: {key} must be an int")
        try:
            graph = GraphKind(d["graph"])
        except ValueError as exc:
            raise SecAggError(f"secagg config: unknown graph {d['graph']!r}") from exc
        return cls(
            fleet=d["fleet"],
            dimension=d["dim"],
            dropout_rate=d["dropout_ppm"] / _PPM,
            corrupt_fraction=d["corrupt_ppm"] / _PPM,
            security_bits=d["sec_bits"],
            correctness_bits=d["cor_bits"],
            graph=graph,
            min_clients=d["min_clients"],
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
