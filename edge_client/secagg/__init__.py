"""Secure aggregation (SecAgg / SecAgg+), device half: state machine, messages, parameters."""

from fedge.edge_client.secagg.client import CLIENT_TRANSITIONS, ClientState, SecAggClient
from fedge.edge_client.secagg.config import GraphKind, SecAggConfig
from fedge.edge_client.secagg.graph import (
    choose_graph_params,
    complete_graph_params,
    neighbourhoods,
    neighbours_of,
)
from fedge.edge_client.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    MaskedInputRequest,
    Message,
    Roster,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)

__all__ = [
    "CLIENT_TRANSITIONS",
    "AdvertiseKeys",
    "ClientState",
    "GraphKind",
    "MaskedInput",
    "MaskedInputRequest",
    "Message",
    "Roster",
    "SecAggClient",
    "SecAggConfig",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "choose_graph_params",
    "complete_graph_params",
    "decode_message",
    "neighbourhoods",
    "neighbours_of",
]
