"""The fedge wire protocol: topics, envelopes and typed messages."""

from edge_client.protocol import topics
from edge_client.protocol.envelope import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Envelope,
    Limits,
    ReplayGuard,
    unpack,
)
from edge_client.protocol.messages import (
    Ack,
    BlobRef,
    CheckIn,
    Eligibility,
    ErrorReport,
    EvalResult,
    JobState,
    Message,
    Presence,
    RetryLater,
    RoundOpen,
    SecAggStage,
    Task,
    TrainingPlan,
    TrainMetrics,
    Update,
    decode_tensor,
    encode_tensor,
    make,
    parse,
)

__all__ = [
    "DEFAULT_LIMITS", "PROTOCOL_VERSION", "Ack", "BlobRef", "CheckIn", "Eligibility", "Envelope",
    "ErrorReport", "EvalResult", "JobState", "Limits", "Message", "Presence", "ReplayGuard",
    "RetryLater", "RoundOpen", "SecAggStage", "Task", "TrainMetrics", "TrainingPlan", "Update",
    "decode_tensor", "encode_tensor", "make", "parse", "topics", "unpack",
]
