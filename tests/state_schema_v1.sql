-- The state database schema at version 1 (collector/db.py _SCHEMA at commit 8614e33), for
-- tests/test_db_migration.py: the upgrade must keep working on a database created by it.

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS device (
    device   TEXT PRIMARY KEY,
    hall     TEXT NOT NULL,
    window   TEXT NOT NULL,
    key_hex  TEXT NOT NULL,
    state    TEXT NOT NULL CHECK (state IN ('active', 'revoked')),
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE INDEX IF NOT EXISTS device_place ON device (hall, window, state);
-- Any change to the registry, by any process, bumps meta 'registry_version': a running collector
-- compares it now and then and forgets its cached devices only when it changed.
CREATE TRIGGER IF NOT EXISTS device_added AFTER INSERT ON device BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version';
END;
CREATE TRIGGER IF NOT EXISTS device_changed AFTER UPDATE ON device BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version';
END;
CREATE TRIGGER IF NOT EXISTS device_removed AFTER DELETE ON device BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version';
END;

-- Identities of processed device messages: (device, boot, seq) is accepted once.
CREATE TABLE IF NOT EXISTS seen_msg (
    device TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (device, boot, seq)
) WITHOUT ROWID;

-- Event ids of the business-system feed already processed, per hall.
CREATE TABLE IF NOT EXISTS seen_feed (
    hall TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (hall, id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS txn (
    hall TEXT NOT NULL, txn TEXT NOT NULL, window TEXT NOT NULL,
    staff_id TEXT NOT NULL, staff_name TEXT, staff_badge TEXT,
    service_code TEXT NOT NULL, service_name TEXT,
    started_ms INTEGER NOT NULL, completed_ms INTEGER NOT NULL, outcome TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('awaiting', 'rated', 'unrated')),
    rating_id TEXT, level INTEGER,
    PRIMARY KEY (hall, txn)
);
CREATE INDEX IF NOT EXISTS txn_window ON txn (hall, window, state, completed_ms);
CREATE INDEX IF NOT EXISTS txn_deadline ON txn (state, deadline_ms);

CREATE TABLE IF NOT EXISTS rating (
    rating_id TEXT PRIMARY KEY,          -- device:boot:seq
    hall TEXT NOT NULL, window TEXT NOT NULL, device TEXT NOT NULL,
    boot INTEGER NOT NULL, seq INTEGER NOT NULL,
    level INTEGER NOT NULL, reason TEXT, mode TEXT NOT NULL, rt_ms INTEGER,
    txn_claimed TEXT,                    -- the case number the device sent, if any
    press_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL, device_ts INTEGER,
    state TEXT NOT NULL CHECK (state IN ('held', 'linked', 'unlinked')),
    hold_until_ms INTEGER,
    txn TEXT, staff_id TEXT, service_code TEXT, unlinked_reason TEXT,
    paused INTEGER NOT NULL DEFAULT 0, signed_on INTEGER
);
CREATE INDEX IF NOT EXISTS rating_held ON rating (state, hold_until_ms);

-- What the business system last said about each window.
CREATE TABLE IF NOT EXISTS window_state (
    hall TEXT NOT NULL, window TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    staff_id TEXT, staff_name TEXT, staff_badge TEXT,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (hall, window)
);

-- Facts the integrity detector reads (docs/detection.md); append-only, one row per event.
CREATE TABLE IF NOT EXISTS device_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL, hall TEXT NOT NULL, window TEXT NOT NULL,
    kind TEXT NOT NULL,           -- status, or the event type (heartbeat, key_uninvited, ...)
    at_ms INTEGER NOT NULL,       -- event time as stored in InfluxDB
    received_ms INTEGER NOT NULL,
    data TEXT NOT NULL            -- JSON: the event's data, or {"state": ...} for status
);
CREATE INDEX IF NOT EXISTS device_log_place ON device_log (hall, window, at_ms);
CREATE TABLE IF NOT EXISTS window_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hall TEXT NOT NULL, window TEXT NOT NULL, kind TEXT NOT NULL, at_ms INTEGER NOT NULL,
    staff_id TEXT, reason TEXT
);
CREATE INDEX IF NOT EXISTS window_log_place ON window_log (hall, window, at_ms);

-- Command counters per device (docs/protocol.md §5).
CREATE TABLE IF NOT EXISTS cmd_seq (device TEXT PRIMARY KEY, cseq INTEGER NOT NULL);

-- Points waiting to be written to InfluxDB, in order: line protocol, or (spec = 1) a JSON point
-- spec that the drainer renders (collector/points.py PointSpec). The drainer records how far it
-- has written in its own database (`connect_drained`); the collector deletes the rows up to there.
CREATE TABLE IF NOT EXISTS influx_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL, spec INTEGER NOT NULL DEFAULT 0
);
-- Commands waiting for the broker's PUBACK.
CREATE TABLE IF NOT EXISTS cmd_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL, payload BLOB NOT NULL, expires_ms INTEGER NOT NULL
);

-- Messages whose processing raised an unexpected error: kept for a human, never lost.
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, error TEXT NOT NULL, at_ms INTEGER NOT NULL
);
