"""Aggregation of training rounds behind one interface: plain, central DP or secure (SecAgg+)."""

from __future__ import annotations

from typing import Any

from fedge.server.aggregation.base import (
    Aggregation,
    Collection,
    RoundContext,
    SendStage,
    TrainingCollection,
)
from fedge.server.aggregation.evaluation import EvaluationCollection
from fedge.server.aggregation.plain import CentralDPAggregation, PlainAggregation
from fedge.server.aggregation.secure import SecureAggregation, SecureRound
from fedge.server.job import JobConfig
from fedge.server.privacy.job_privacy import CentralDP, DistributedDP, privacy_for_job

__all__ = [
    "Aggregation",
    "CentralDPAggregation",
    "Collection",
    "EvaluationCollection",
    "PlainAggregation",
    "RoundContext",
    "SecureAggregation",
    "SecureRound",
    "SendStage",
    "TrainingCollection",
    "aggregation_for_job",
]


def aggregation_for_job(job: JobConfig, dim: int, enrolment_key: Any = None) -> Aggregation:
    """The job's aggregation, chosen once from its settings (validated: DP modes fit).

    Parameters
    ----------
    job
        The job; its ``[secagg]`` and ``dp`` settings pick the mode.
    dim
        Parameters of the model (distributed DP sizes its ring for them).
    enrolment_key
        The enrolment authority's public key that devices' identity certificates carry.
    """
    privacy = privacy_for_job(job, dim)
    cap = job.training.max_example_weight
    if job.secagg is not None:
        return SecureAggregation(
            job.secagg,
            privacy if isinstance(privacy, DistributedDP) else None,
            fleet=job.fleet,
            job_id=job.name,
            max_example_weight=cap,
            enrolment_key=enrolment_key,
        )
    if isinstance(privacy, CentralDP):
        return CentralDPAggregation(privacy, cap)
    return PlainAggregation(privacy, cap)
