"""Central evaluation: the server scores each new global model on a held-out set, if it has one."""

from __future__ import annotations

from collections.abc import Sequence

from fedge.edge_client.arrays import Array
from fedge.edge_client.trainer import LocalTrainer


class CentralEvaluator:
    """Evaluates every ``every``-th committed round's weights on ``data`` (x, y)."""

    def __init__(self, trainer: LocalTrainer, data: tuple[Array, Array] | None, every: int):
        self.trainer = trainer
        self.data = data
        self.every = every

    def evaluate(
        self, round_number: int, weights: Sequence[Array]
    ) -> tuple[float | None, float | None]:
        """(loss, accuracy) of ``weights`` after round ``round_number``, or (None, None)."""
        if self.data is None or not self.every or round_number % self.every:
            return None, None
        self.trainer.set_weights(list(weights))
        result = self.trainer.evaluate(*self.data)
        return result.loss, result.accuracy
