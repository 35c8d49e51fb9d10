"""The store: WAL, versioned migrations, clear errors, indexes that hold at 1M+ samples."""

from __future__ import annotations

import os
import sqlite3

import pytest

from qtraderd.store.db import StoreError, Transaction, connect
from qtraderd.store.schema import SCHEMA_VERSION, migrate


def test_new_store_is_wal_and_migrated(tmp_path):
    conn = connect(tmp_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"bars", "samples", "predictions", "signals", "orders", "fills", "positions",
            "trades", "equity", "risk_events", "actor_events", "models", "model_history",
            "runs", "imports"} <= tables
    assert migrate(conn) == 0  # idempotent


def test_newer_schema_is_refused(tmp_path):
    conn = connect(tmp_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this qtraderd"):
        connect(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_state_dir_is_a_clear_error(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="not writable"):
            connect(d)
    finally:
        d.chmod(0o700)


def test_state_dir_that_is_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="cannot create state directory"):
        connect(f / "sub")


def test_read_only_store_file_is_a_clear_error(tmp_path):
    connect(tmp_path).close()
    db = tmp_path / "qtraderd.db"
    # a read-only filesystem / immutable file: simulate with a read-only open of another kind
    os.chmod(db, 0o400)
    try:
        if os.access(db, os.W_OK):  # root: permissions do not bind, use a bogus file instead
            pytest.skip("root can write read-only files")
        with pytest.raises(StoreError, match="read-only"):
            connect(tmp_path)
    finally:
        os.chmod(db, 0o600)


def test_locked_store_is_a_clear_error(tmp_path):
    conn = connect(tmp_path)
    conn.execute("PRAGMA user_version = 0")  # force a migration on the next open
    conn.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked by another process"):
            connect(tmp_path, timeout_s=0.1)
    finally:
        conn.execute("ROLLBACK")


def test_corrupt_store_is_a_clear_error(tmp_path):
    (tmp_path / "qtraderd.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        connect(tmp_path)


def test_readonly_connection_cannot_write(tmp_path):
    connect(tmp_path).close()
    ro = connect(tmp_path, readonly=True)
    with pytest.raises(sqlite3.OperationalError):
        ro.execute("INSERT INTO runs (started_at, mode, source, seed, config, symbols, "
                   "interval, status) VALUES ('x','x','x',1,'{}','[]','5m','x')")
    with pytest.raises(StoreError, match="no store"):
        connect(tmp_path / "missing", readonly=True)


def _plan(conn: sqlite3.Connection, sql: str, args=()) -> str:
    return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """1.2M samples and 1.2M predictions: the scale the issue asks the schema to survive."""
    d = tmp_path_factory.mktemp("big")
    conn = connect(d)
    # Generated inside SQLite (a recursive counter), not row by row from Python: the same
    # rows as `(1 + i // 400_000, f"S{i % 10}", i * 300_000, b"\0" * 68, ...)` for
    # i < 1.2M, in half the CPU time.
    counter = "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
    with Transaction(conn):
        conn.execute(
            counter + "INSERT INTO samples (run_id, symbol, ts, features, regime, "
            "global_regime, label) SELECT 1 + i / 400000, 'S' || (i % 10), i * 300000, "
            "zeroblob(68), 'range', 'range', CASE WHEN i % 7 = 0 THEN NULL ELSE i % 3 END "
            "FROM c", (1_200_000 - 1,))
        conn.execute(  # three models' predictions of each of 400k bars
            counter + "INSERT INTO predictions (run_id, symbol, ts, model, version, p_long, "
            "p_short) SELECT 1, 'S' || (i % 10), (i / 3) * 300000, CASE i % 3 WHEN 0 THEN "
            "'xgboost' WHEN 1 THEN 'lightgbm' ELSE 'ensemble' END, 'v1', 0.2, 0.2 FROM c",
            (3 * 400_000 - 1,))
    assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] == 1_200_000
    assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 1_200_000
    conn.execute("ANALYZE")
    return conn


QUERIES = {
    "outcome update": ("UPDATE samples SET label=1 WHERE run_id=? AND symbol=? AND ts=?",
                       (2, "S3", 123 * 300_000)),
    "unlabelled samples": ("SELECT count(*) FROM samples WHERE run_id=? AND label IS NULL", (2,)),
    "recent labelled samples": ("SELECT features, label FROM samples WHERE label IS NOT NULL "
                                "AND ts > ?", (1_000_000 * 300_000,)),
    "predictions of a bar": ("SELECT * FROM predictions WHERE run_id=? AND symbol=? AND ts=?",
                             (1, "S1", 3000)),
    "a model's predictions": ("SELECT p_long FROM predictions WHERE model=? AND version=? "
                              "AND ts > ?", ("xgboost", "v1", 10)),
    "bars of a symbol": ("SELECT * FROM bars WHERE symbol=? AND interval=? AND open_time > ? "
                         "ORDER BY open_time LIMIT 100", ("ETHBTC", "5m", 0)),
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_hot_queries_use_indexes_at_scale(big_store, name):
    sql, args = QUERIES[name]
    plan = _plan(big_store, sql, args)
    assert "USING" in plan and not plan.startswith("SCAN samples") \
        and "SCAN predictions" not in plan, plan
