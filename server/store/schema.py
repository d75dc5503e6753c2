"""The SQLite schema of the embedded store, and the columns added since its first release."""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, fleet TEXT NOT NULL, profile TEXT, runtime TEXT,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, online INTEGER NOT NULL DEFAULT 0,
    eligibility TEXT, identity_key BLOB, rounds_reported INTEGER NOT NULL DEFAULT 0,
    rounds_dropped INTEGER NOT NULL DEFAULT 0, rejected_messages INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, config TEXT NOT NULL, status TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, committed_round INTEGER NOT NULL DEFAULT 0,
    weights_sha TEXT, optimizer_sha TEXT, reason TEXT, delta_sha TEXT, delta_base_sha TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    rid INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL, started REAL NOT NULL, ended REAL, selected INTEGER DEFAULT 0,
    reported INTEGER DEFAULT 0, dropped INTEGER DEFAULT 0, refused INTEGER DEFAULT 0,
    uplink_bytes INTEGER DEFAULT 0, downlink_bytes INTEGER DEFAULT 0,
    train_loss REAL, train_accuracy REAL, eval_loss REAL, eval_accuracy REAL,
    fed_eval_loss REAL, fed_eval_accuracy REAL, epsilon REAL, dp_clip REAL,
    aggregation_s REAL, slowest_train_s REAL, weights_sha TEXT, reason TEXT,
    UNIQUE (job_id, kind, round, attempt)
);
CREATE TABLE IF NOT EXISTS round_transitions (
    rid INTEGER NOT NULL, state TEXT NOT NULL, at REAL NOT NULL, reason TEXT
);
CREATE TABLE IF NOT EXISTS participants (
    rid INTEGER NOT NULL, device_id TEXT NOT NULL,
    status TEXT NOT NULL, examples INTEGER, loss REAL, accuracy REAL, train_time_s REAL,
    uplink_bytes INTEGER DEFAULT 0, downlink_bytes INTEGER DEFAULT 0, reason TEXT, updated REAL,
    PRIMARY KEY (rid, device_id)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, weights_sha TEXT NOT NULL,
    optimizer_sha TEXT, created REAL NOT NULL, PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS rejections (
    at REAL NOT NULL, device_id TEXT, topic TEXT, reason TEXT NOT NULL
);
"""
# Columns added after a table's first release: (table, column, type). A store written by an
# older server gets them on open, so an upgraded server resumes its jobs.
ADDED_COLUMNS = (("jobs", "delta_sha", "TEXT"), ("jobs", "delta_base_sha", "TEXT"))
