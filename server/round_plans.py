"""The two kinds of round: what each asks of its devices and how it ends.

A training round's devices train and its collection ends in a mean delta, which becomes the
next checkpoint; a federated evaluation round's devices evaluate the current model, and its
metrics are stored with the round. The round loop treats both the same way.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

from fedge.edge_client.protocol import messages as m
from fedge.server.aggregation import (
    Aggregation,
    Collection,
    EvaluationCollection,
    RoundContext,
    TrainingCollection,
)
from fedge.server.checkpoints import Checkpoints
from fedge.server.engine import RoundEngine
from fedge.server.evaluation import CentralEvaluator
from fedge.server.job import JobConfig
from fedge.server.rounds import RoundRun

log = logging.getLogger("fedge.server")
C = TypeVar("C", bound=Collection)


class RoundPlan(ABC, Generic[C]):
    """One kind of round (Flower's configure and aggregate, for train or evaluate)."""

    kind: ClassVar[str]

    def __init__(self, job: JobConfig, checkpoints: Checkpoints, engine: RoundEngine):
        self.job = job
        self.checkpoints = checkpoints
        self.engine = engine

    @property
    @abstractmethod
    def wanted(self) -> int:
        """Devices a round selects (over-selected)."""

    @property
    @abstractmethod
    def target(self) -> int:
        """Reports a round waits for before it closes early."""

    @property
    @abstractmethod
    def minimum(self) -> int:
        """Reports a round needs to commit."""

    @abstractmethod
    def open(self, ctx: RoundContext) -> C:
        """The round's collection."""

    @abstractmethod
    def finish(self, rnd: RoundRun, collection: C, counts: dict[str, int]) -> bool:
        """Commit a round that collected enough (True), or fail it (False)."""

    def dp_task(self) -> m.DPTask | None:
        """What devices need to bound their contribution (None: nothing)."""
        return None

    def task(self, rnd: RoundRun, collection: C) -> m.Task:
        """The task every device of the round gets (Flower's configure)."""
        blobs = self.checkpoints.blob_set()
        training = self.job.training
        delta = self.checkpoints.delta
        return m.Task(
            kind=self.kind,
            model=blobs.model,
            manifest=blobs.manifest,
            weights=blobs.weights,
            weights_delta=delta.ref if delta else None,
            delta_base=delta.base_sha if delta else None,
            plan=m.TrainingPlan(
                epochs=training.local_epochs,
                lr=training.lr_for_round(rnd.number),
                max_steps=training.max_steps,
                shuffle=training.shuffle,
            ),
            codec=str(self.job.codec),
            deadline=rnd.deadline,
            round_seed=rnd.round_seed,
            dp=self.dp_task(),
            secagg=collection.secagg_task(),
        )


class TrainRounds(RoundPlan[TrainingCollection]):
    """Devices train; the job's aggregation turns their reports into the next checkpoint."""

    kind = "train"

    def __init__(
        self,
        job: JobConfig,
        checkpoints: Checkpoints,
        engine: RoundEngine,
        aggregation: Aggregation,
        evaluator: CentralEvaluator,
    ):
        super().__init__(job, checkpoints, engine)
        self.aggregation = aggregation
        self.evaluator = evaluator

    @property
    def wanted(self) -> int:
        return self.job.selection.selected_per_round

    @property
    def target(self) -> int:
        return self.job.selection.target_reports

    @property
    def minimum(self) -> int:
        return self.job.selection.min_reports

    def open(self, ctx: RoundContext) -> TrainingCollection:
        return self.aggregation.open(ctx)

    def dp_task(self) -> m.DPTask | None:
        return self.aggregation.dp_task()

    def finish(self, rnd: RoundRun, collection: TrainingCollection, counts: dict[str, int]) -> bool:
        t0 = time.time()
        checkpoint = self.checkpoints.prepare(collection.mean(), rnd.round_seed)
        if checkpoint is None:
            return self.engine.fail(rnd, "aggregate is not finite", **counts)
        aggregation_s = time.time() - t0
        eval_loss, eval_acc = self.evaluator.evaluate(rnd.number, checkpoint.weights)
        privacy = self.aggregation.privacy.account_round(collection.within_clip, len(rnd.reports))
        self.engine.commit_checkpoint(
            rnd,
            checkpoint.weights_sha,
            checkpoint.optimizer_sha,
            checkpoint.delta_row,
            train_loss=rnd.weighted_metric("loss"),
            train_accuracy=rnd.weighted_metric("accuracy"),
            eval_loss=eval_loss,
            eval_accuracy=eval_acc,
            aggregation_s=aggregation_s,
            slowest_train_s=max((r.train_time_s for r in rnd.reports.values()), default=0.0),
            **privacy,
            **counts,
        )
        self.checkpoints.adopt(checkpoint)
        log.info(
            "round %d committed: %d reported, %d dropped, accuracy %s",
            rnd.number,
            counts["reported"],
            counts["dropped"],
            f"{eval_acc:.3f}" if eval_acc is not None else "n/a",
        )
        return True


class EvalRounds(RoundPlan[EvaluationCollection]):
    """Devices evaluate the current model on their own data; the round stores the mean."""

    kind = "evaluate"

    @property
    def wanted(self) -> int:
        return self.job.evaluation.federated_devices

    @property
    def target(self) -> int:
        return max(1, int(self.wanted / self.job.selection.over_selection))

    @property
    def minimum(self) -> int:
        return 1

    def open(self, ctx: RoundContext) -> EvaluationCollection:
        return EvaluationCollection(ctx)

    def finish(
        self, rnd: RoundRun, collection: EvaluationCollection, counts: dict[str, int]
    ) -> bool:
        return self.engine.commit(
            rnd,
            fed_eval_loss=rnd.weighted_metric("loss"),
            fed_eval_accuracy=rnd.weighted_metric("accuracy"),
        )
