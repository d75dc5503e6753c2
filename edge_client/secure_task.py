"""The client half of SecAgg+ around the task engine: train once, then mask and answer stages.

Training knows nothing of secure aggregation: this driver asks the engine for one training
step, turns its delta into a ring vector (the ring codec, or distributed DP), and runs the
stages of `secagg.stages` with a `SecAggClient` over the device's session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from fedge.edge_client import codec
from fedge.edge_client.device_identity import DeviceIdentity
from fedge.edge_client.errors import PrivacyError, SecAggError
from fedge.edge_client.hooks import AgentHooks
from fedge.edge_client.privacy import encode_distributed
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.secagg import (
    MaskedInput,
    MaskedInputRequest,
    Roster,
    SecAggClient,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from fedge.edge_client.secagg import Message as SecAggMessage
from fedge.edge_client.secagg.stages import Request, Stage, request_named
from fedge.edge_client.session import DeviceSession
from fedge.edge_client.task_engine import TaskEngine
from fedge.edge_client.task_inputs import Arrays, Shapes, TaskInputs

log = logging.getLogger("fedge.device")
# (delta, weight fraction, rounding seed) -> the uint32 ring vector the device masks
RingEncoder = Callable[[Arrays, float, int], npt.NDArray[Any]]
Reply: TypeAlias = ShareKeys | MaskedInput | UnmaskResponse


def ring_encoder(
    task: m.Task, settings: m.SecAggTask, shapes: Shapes, residual_path: Path
) -> RingEncoder:
    """How this task turns (delta, weight fraction, rounding seed) into its ring vector.

    Distributed DP: clip, rotate, round and add integer noise drawn from OS randomness
    (never from a seed the server could know); every device weighs 1. Otherwise the
    ring codec of the task's spec, with its error-feedback residual at ``residual_path``.
    """
    if task.dp is not None and task.dp.params is not None:
        params = task.dp.params
        if settings.config.dimension != params.padded_dim + 1:
            raise PrivacyError(
                f"secure-aggregation dimension {settings.config.dimension} does not fit the "
                f"distributed DP vector of {params.padded_dim} (+1)"
            )
        return lambda delta, _fraction, _seed: encode_distributed(delta, params, task.round_seed)
    ring = codec.RingCodec(
        codec.parse_spec(task.codec),
        shapes,
        settings.clip,
        settings.bits,
        settings.n_max,
        residual_path=residual_path,
    )
    return lambda delta, fraction, seed: (
        ring.encode(
            [d * np.float32(fraction) for d in delta], round_seed=task.round_seed, rng_seed=seed
        ).vector
    )


@dataclass(frozen=True)
class SecureInput:
    """A trained secure task: its SecAgg+ client, the input it will mask, and the metrics.

    ``x`` is the ring vector with the device's example weight as its last element, so the
    weight is summed securely too.
    """

    settings: m.SecAggTask
    client: SecAggClient
    x: npt.NDArray[np.uint32]
    metrics: m.TrainMetrics

    def answer(self, request: Request, message: SecAggMessage) -> Reply:
        """This device's reply to the server's ``request`` carrying ``message``."""
        if request is Request.ROSTER and isinstance(message, Roster):
            return self.client.share_keys(message)
        if request is Request.MASKED_REQUEST and isinstance(message, MaskedInputRequest):
            return self.client.masked_input(message, self.x)
        if request is Request.UNMASK_REQUEST and isinstance(message, UnmaskRequest):
            return self.client.unmask(message)
        raise SecAggError(f"a {request.value} request carries a {message.TYPE} message")


class SecureTaskDriver:
    """Runs a training task under SecAgg+, as a mod around the task engine.

    `prepare` trains once and builds the masked input; `report` advertises and answers the
    server's stage requests until Unmask. The agent moves to REPORTING between the two.
    """

    def __init__(
        self,
        engine: TaskEngine,
        session: DeviceSession,
        identity: DeviceIdentity,
        hooks: AgentHooks,
        state_dir: Path,
    ):
        self.engine = engine
        self.session = session
        self.identity = identity
        self.hooks = hooks
        self.state_dir = state_dir

    async def prepare(self, task: m.Task, inputs: TaskInputs) -> SecureInput | None:
        """Train, encode into the ring and make the SecAgg+ client; None if the device dropped."""
        settings = task.secagg
        assert settings is not None
        residual = self.state_dir / "residual-secure.npz"
        encode = ring_encoder(task, settings, inputs.shapes, residual)
        step = await self.engine.train_step(task, inputs.artifact, inputs.weights)
        weight = min(max(int(step.result.examples), 1), settings.max_weight)
        vector = encode(step.delta, weight / settings.max_weight, step.seed)
        x = np.concatenate([vector, np.array([weight], np.uint32)])
        client = SecAggClient(
            self.session.device_id,
            self.identity.key,
            settings.round_id,
            settings.config,
            self.identity.enrolment_key(),
            self.identity.certificate(),
        )
        if self.hooks.drops_out(f"secagg-{Stage.ADVERTISE}"):
            return None
        return SecureInput(settings, client, x, step.metrics)

    async def report(
        self, task: m.Task, ready: SecureInput, job_id: str | None, round_id: int | None
    ) -> bool:
        """Advertise, then answer each stage request; True once this device answered Unmask."""
        advertise = {"msg": ready.client.advertise().to_wire(), "metrics": vars(ready.metrics)}
        await self.session.send(
            m.SecAggStage(stage=Stage.ADVERTISE.value, data=advertise), job_id, round_id
        )
        stage_timeout = ready.settings.stage_timeout_s
        wait_s = max(task.deadline - time.time(), 0.0) + stage_timeout
        while True:
            request = await self._next_request(wait_s)
            if request is None:
                return False  # the server moved on without us (or aborted the round)
            name = request_named(request.stage)
            stage = name.opens
            if self.hooks.drops_out(f"secagg-{stage}"):
                return False
            reply = ready.answer(name, decode_message(request.data))
            await self.session.send(
                m.SecAggStage(stage=stage.value, data={"msg": reply.to_wire()}), job_id, round_id
            )
            if stage.next is None:
                return True
            wait_s = 3 * stage_timeout

    async def _next_request(self, wait_s: float) -> m.SecAggStage | None:
        """The server's next stage request; None if none came or it refused our last message."""
        while True:
            item = await self.session.receive((m.SecAggStage, m.Ack), wait_s)
            if item is None:
                return None
            if isinstance(item.message, m.SecAggStage):
                return item.message
            assert isinstance(item.message, m.Ack)
            if not item.message.accepted:
                log.info(
                    "device %s: secure aggregation message refused: %s",
                    self.session.device_id,
                    item.message.reason,
                )
                return None
