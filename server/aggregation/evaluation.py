"""Federated evaluation rounds: devices evaluate the global model on their own test split."""

from __future__ import annotations

from fedge.edge_client.protocol import messages as m
from fedge.server.aggregation.base import Collection, wait_for_target
from fedge.server.rounds import ParticipantReport


class EvaluationCollection(Collection):
    """Collects the devices' evaluation results; the round's metrics are their weighted mean."""

    def on_update(self, device_id: str, update: m.Update, nbytes: int) -> str | None:
        return "this round evaluates: updates are refused"

    def on_eval_result(self, device_id: str, result: m.EvalResult, nbytes: int) -> str | None:
        report = ParticipantReport(result.examples, result.loss, result.accuracy, 0.0, nbytes)
        self.ctx.record(device_id, report)
        return None

    async def collect(self) -> None:
        await wait_for_target(self.ctx.rnd)
