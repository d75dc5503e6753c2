"""Update codec: clip, sparsify, rotate, quantize and pack model updates (plain and ring mode)."""

from fedge.edge_client.codec.downlink import (
    ModelDelta,
    apply_model_delta,
    decode_model_delta,
    encode_model_delta,
)
from fedge.edge_client.codec.encoder import EncodedUpdate, UpdateEncoder
from fedge.edge_client.codec.error_feedback import ErrorFeedback, ResidualStatus
from fedge.edge_client.codec.layout import dense_float32_bytes
from fedge.edge_client.codec.pipeline import (
    decode_update,
    encode_update,
    payload_bound,
    predicted_weights,
)
from fedge.edge_client.codec.ring import RingCodec, RingUpdate
from fedge.edge_client.codec.spec import CodecSpec, Sparsifier, parse_spec

__all__ = [
    "CodecSpec",
    "EncodedUpdate",
    "ErrorFeedback",
    "ModelDelta",
    "ResidualStatus",
    "RingCodec",
    "RingUpdate",
    "Sparsifier",
    "UpdateEncoder",
    "apply_model_delta",
    "decode_model_delta",
    "decode_update",
    "dense_float32_bytes",
    "encode_model_delta",
    "encode_update",
    "parse_spec",
    "payload_bound",
    "predicted_weights",
]
