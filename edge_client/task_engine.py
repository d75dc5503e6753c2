"""Turns a task and its inputs into what the device reports: an encoded update or an evaluation.

The engine trains and evaluates; it neither talks to the server nor moves the agent's state,
so the plain path and the secure-aggregation driver share one training step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from fedge.edge_client import codec
from fedge.edge_client.artifact import Artifact
from fedge.edge_client.hooks import AgentHooks
from fedge.edge_client.privacy import clip_update
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.task_inputs import Arrays, TaskInputs
from fedge.edge_client.trainer import EvalResult, TrainResult
from fedge.edge_client.trainer_cache import TrainerCache


@dataclass
class LocalData:
    """The device's own data; it never leaves the device."""

    x_train: npt.NDArray[Any]
    y_train: npt.NDArray[Any]
    x_test: npt.NDArray[Any] | None = None
    y_test: npt.NDArray[Any] | None = None


@dataclass(frozen=True)
class LocalStep:
    """What one round of local training gave: the delta, the trainer's metrics, the seed used."""

    delta: Arrays
    result: TrainResult
    seed: int

    @property
    def metrics(self) -> m.TrainMetrics:
        """The metrics as the device reports them."""
        r = self.result
        return m.TrainMetrics(
            loss=float(r.loss),
            accuracy=float(r.accuracy),
            examples=int(r.examples),
            train_time_s=float(r.wall_time_s),
        )


class TaskEngine:
    """Local training and evaluation of the device's data through a task's artifact.

    ``train_rng`` draws one seed per training step: seeds depend only on the sequence of tasks,
    so a seeded run is reproducible however often the protocol draws its own jitter.
    """

    def __init__(
        self,
        data: LocalData,
        trainers: TrainerCache,
        hooks: AgentHooks,
        state_dir: Path,
        train_rng: random.Random,
    ):
        self.data = data
        self.trainers = trainers
        self.hooks = hooks
        self.state_dir = state_dir
        self.train_rng = train_rng

    async def train_step(self, task: m.Task, artifact: Artifact, start: Arrays) -> LocalStep:
        """Train on the local data from ``start``: the delta, the metrics and the seed used."""
        seed = self.train_rng.getrandbits(31)
        async with self.trainers.lock:
            trainer = self.trainers.get(artifact)

            def work() -> tuple[Arrays, TrainResult]:
                trainer.set_weights(start)
                result = trainer.fit(
                    self.data.x_train,
                    self.data.y_train,
                    epochs=task.plan.epochs,
                    lr=task.plan.lr,
                    seed=seed,
                    max_steps=task.plan.max_steps,
                    shuffle=task.plan.shuffle,
                )
                return trainer.get_weights(), result

            new_weights, result = await self.hooks.compute(work)
        await self.hooks.after_compute(result.wall_time_s)
        delta = [nw - w for nw, w in zip(new_weights, start, strict=True)]
        return LocalStep(delta, result, seed)

    async def train(self, task: m.Task, inputs: TaskInputs) -> m.Update | None:
        """Train and encode the update of a plain (not secure) task; None if the device dropped.

        With ``pred`` training starts from the predicted weights; with DP the delta is clipped
        on the device, which bounds each device's contribution; the codec's error feedback
        keeps what encoding dropped (in the state dir) for the next round.
        """
        spec = codec.parse_spec(task.codec)
        encoder = codec.UpdateEncoder(spec, inputs.shapes, self.state_dir / "residual.npz")
        start = codec.predicted_weights(spec, inputs.weights, inputs.prior)
        step = await self.train_step(task, inputs.artifact, start)
        if self.hooks.drops_out("after-training"):
            return None
        delta, within_clip = step.delta, None
        if task.dp is not None:
            clipped = clip_update(delta, task.dp.clip)
            delta, within_clip = list(clipped.arrays), bool(clipped.within_clip)
        encoded = encoder.encode(delta, round_seed=task.round_seed, rng_seed=step.seed)
        return m.Update(
            payload=encoded.payload,
            base_weights=m.base_digest(task.weights.sha256),
            metrics=step.metrics,
            within_clip=within_clip,
        )

    async def evaluate(self, inputs: TaskInputs) -> m.EvalResult:
        """Evaluate the global weights on the local test split (the training data if none)."""
        x = self.data.x_test if self.data.x_test is not None else self.data.x_train
        y = self.data.y_test if self.data.y_test is not None else self.data.y_train
        async with self.trainers.lock:
            trainer = self.trainers.get(inputs.artifact)

            def work() -> EvalResult:
                trainer.set_weights(inputs.weights)
                return trainer.evaluate(x, y)

            result = await self.hooks.compute(work)
        return m.EvalResult(
            loss=float(result.loss), accuracy=float(result.accuracy), examples=int(result.examples)
        )
