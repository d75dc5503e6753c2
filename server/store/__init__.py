"""Persistence behind two interfaces: `StoreReader` (every read) and `Store` (plus the writes)."""

from fedge.server.store.base import (
    CentralEval,
    JobStatus,
    ProfileDevices,
    RoundDuration,
    RoundTotals,
    Row,
    RowPage,
    Store,
    StoreReader,
)
from fedge.server.store.schema import ADDED_COLUMNS, SCHEMA
from fedge.server.store.sqlite import SQLiteStore

__all__ = [
    "ADDED_COLUMNS",
    "SCHEMA",
    "CentralEval",
    "JobStatus",
    "ProfileDevices",
    "RoundDuration",
    "RoundTotals",
    "Row",
    "RowPage",
    "SQLiteStore",
    "Store",
    "StoreReader",
]
