"""Secure aggregation (SecAgg / SecAgg+), server half: the round state machine and unmasking."""

from fedge.server.secagg.server import SERVER_TRANSITIONS, SecAggServer, ServerState, UnmaskReport

__all__ = ["SERVER_TRANSITIONS", "SecAggServer", "ServerState", "UnmaskReport"]
