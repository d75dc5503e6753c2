"""Prometheus metrics read from the store at scrape time (so they survive restarts)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fedge.server.control import LiveRound, ServerControl
from fedge.server.store import StoreReader
from fedge.server.web.api_models import LIVE_STATES

ROUND_SECONDS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
AGGREGATION_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


def histogram_buckets(values: Sequence[float], bounds: Sequence[float]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs of ``values`` over ``bounds`` plus ``+Inf``."""
    out = [(repr(float(b)), float(sum(1 for v in values if v <= b))) for b in bounds]
    return [*out, ("+Inf", float(len(values)))]


class FedgeCollector(Collector):
    """Rounds, reports, dropouts, bytes, durations and devices from the store; traffic live."""

    def __init__(self, reader: StoreReader, control: ServerControl):
        self.reader = reader
        self.control = control

    def collect(self) -> Iterable[Metric]:
        yield from self._rounds()
        yield from self._durations()
        yield from self._devices()
        yield from self._jobs()
        yield from self._traffic()

    def _rounds(self) -> Iterable[Metric]:
        labels = ["job", "kind"]
        rounds = GaugeMetricFamily(
            "fedge_rounds", "Round attempts by state", labels=[*labels, "state"]
        )
        sums = {
            "reported": CounterMetricFamily(
                "fedge_reports", "Device reports accepted", labels=labels
            ),
            "dropped": CounterMetricFamily(
                "fedge_dropouts", "Selected devices that did not report", labels=labels
            ),
            "refused": CounterMetricFamily(
                "fedge_round_refused_messages", "Messages refused while a round ran", labels=labels
            ),
            "uplink_bytes": CounterMetricFamily(
                "fedge_uplink_bytes", "Update bytes received", labels=labels
            ),
            "downlink_bytes": CounterMetricFamily(
                "fedge_downlink_bytes", "Task and model bytes sent", labels=labels
            ),
        }
        totals: dict[tuple[str, str], dict[str, float]] = {}
        for row in self.reader.round_totals():
            rounds.add_metric([row.job_id, row.kind, row.state], row.count)
            acc = totals.setdefault((row.job_id, row.kind), dict.fromkeys(sums, 0.0))
            for key in sums:
                acc[key] += getattr(row, key)
        run = self._live_round()
        if run is not None:  # counts reach the store when the round closes; add them until then
            acc = totals.setdefault((run.job_id, run.kind), dict.fromkeys(sums, 0.0))
            acc["reported"] += len(run.reported)
            acc["refused"] += run.refused
            acc["uplink_bytes"] += run.uplink_bytes
            acc["downlink_bytes"] += run.downlink_bytes
        yield rounds
        for key, family in sums.items():
            for (job, kind), acc in sorted(totals.items()):
                family.add_metric([job, kind], acc[key])
            yield family
        yield CounterMetricFamily(
            "fedge_refused_messages",
            "Device messages refused (all causes)",
            value=self.reader.rejection_count(),
        )

    def _live_round(self) -> LiveRound | None:
        run = self.control.live_round()
        return run if run is not None and run.state in LIVE_STATES else None

    def _durations(self) -> Iterable[Metric]:
        rows = self.reader.round_durations()
        duration = HistogramMetricFamily(
            "fedge_round_duration_seconds", "Wall time of committed rounds", labels=["job", "kind"]
        )
        aggregation = HistogramMetricFamily(
            "fedge_aggregation_seconds",
            "Server time to aggregate and commit a training round",
            labels=["job"],
        )
        groups: dict[tuple[str, str], list[float]] = {}
        agg: dict[str, list[float]] = {}
        for r in rows:
            groups.setdefault((r.job_id, r.kind), []).append(r.seconds)
            if r.aggregation_s is not None:
                agg.setdefault(r.job_id, []).append(float(r.aggregation_s))
        for (job, kind), values in sorted(groups.items()):
            duration.add_metric(
                [job, kind], histogram_buckets(values, ROUND_SECONDS_BUCKETS), sum(values)
            )
        for job, values in sorted(agg.items()):
            aggregation.add_metric(
                [job], histogram_buckets(values, AGGREGATION_SECONDS_BUCKETS), sum(values)
            )
        yield duration
        yield aggregation

    def _devices(self) -> Iterable[Metric]:
        known = GaugeMetricFamily("fedge_devices_known", "Devices ever seen", labels=["profile"])
        online = GaugeMetricFamily(
            "fedge_devices_connected", "Devices online now", labels=["profile"]
        )
        for r in self.reader.profile_devices():
            known.add_metric([r.profile], r.known)
            online.add_metric([r.profile], r.online)
        yield known
        yield online

    def _jobs(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "fedge_job_info", "Jobs and their status (value 1)", labels=["job", "status"]
        )
        committed = GaugeMetricFamily(
            "fedge_committed_rounds", "Last committed round of a job", labels=["job"]
        )
        for r in self.reader.job_statuses():
            info.add_metric([r.job_id, r.status], 1)
            committed.add_metric([r.job_id], r.committed_round)
        yield info
        yield committed
        accuracy = GaugeMetricFamily(
            "fedge_eval_accuracy",
            "Central evaluation accuracy after the last committed round",
            labels=["job"],
        )
        loss = GaugeMetricFamily(
            "fedge_eval_loss",
            "Central evaluation loss after the last committed round",
            labels=["job"],
        )
        for evaluation in self.reader.central_evals():
            accuracy.add_metric([evaluation.job_id], evaluation.accuracy)
            loss.add_metric([evaluation.job_id], evaluation.loss)
        yield accuracy
        yield loss
        current = GaugeMetricFamily(
            "fedge_current_round",
            "Number of the round in progress",
            labels=["job", "kind", "state"],
        )
        run = self.control.live_round()
        if run is not None:
            current.add_metric([run.job_id, run.kind, run.state], run.number)
        yield current

    def _traffic(self) -> Iterable[Metric]:
        traffic = self.control.traffic()
        yield CounterMetricFamily(
            "fedge_http_bytes_served",
            "Blob bytes served over HTTP since start",
            value=traffic.http_bytes_served,
        )
        link = (  # None until the broker link exists
            (
                "fedge_mqtt_bytes_sent",
                "MQTT payload bytes published since start",
                traffic.mqtt_bytes_sent,
            ),
            (
                "fedge_mqtt_bytes_received",
                "MQTT payload bytes received since start",
                traffic.mqtt_bytes_received,
            ),
            ("fedge_mqtt_connects", "Broker (re)connections since start", traffic.mqtt_connects),
        )
        for name, documentation, value in link:
            if value is not None:
                yield CounterMetricFamily(name, documentation, value=value)


def metrics_registry(reader: StoreReader, control: ServerControl) -> CollectorRegistry:
    """A registry of its own (one per app) holding the store-backed collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FedgeCollector(reader, control))
    return registry
