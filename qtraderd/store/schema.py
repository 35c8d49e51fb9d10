"""The SQLite schema, as numbered migrations applied in order and tracked in user_version.

Add a migration by appending to MIGRATIONS; never edit one that has shipped. Indexes
follow the queries that need them (ctl/report reads, outcome updates, training reads), so
they stay fast at millions of samples; tests/store/test_schema.py checks the query plans.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: the trading core
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        mode TEXT NOT NULL,
        source TEXT NOT NULL,
        seed INTEGER NOT NULL,
        config TEXT NOT NULL,
        symbols TEXT NOT NULL,
        interval TEXT NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        bars INTEGER NOT NULL DEFAULT 0,
        last_batch INTEGER NOT NULL DEFAULT 0,
        first_ts INTEGER,
        last_ts INTEGER,
        oos_start INTEGER
    );
    CREATE TABLE bars (
        symbol TEXT NOT NULL,
        interval TEXT NOT NULL,
        open_time INTEGER NOT NULL,
        open REAL NOT NULL,
        high REAL NOT NULL,
        low REAL NOT NULL,
        close REAL NOT NULL,
        volume REAL NOT NULL,
        PRIMARY KEY (symbol, interval, open_time)
    ) WITHOUT ROWID;
    CREATE TABLE imports (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        symbol TEXT NOT NULL,
        interval TEXT NOT NULL,
        rows_read INTEGER NOT NULL,
        rows_added INTEGER NOT NULL,
        rows_rejected INTEGER NOT NULL
    );
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL,
        symbol TEXT NOT NULL,
        ts INTEGER NOT NULL,
        features BLOB NOT NULL,
        regime TEXT NOT NULL,
        global_regime TEXT NOT NULL,
        label INTEGER,
        resolved_at INTEGER,
        ret_long REAL,
        ret_short REAL
    );
    CREATE UNIQUE INDEX samples_key ON samples (run_id, symbol, ts);
    CREATE INDEX samples_unlabelled ON samples (run_id) WHERE label IS NULL;
    CREATE INDEX samples_labelled_ts ON samples (ts) WHERE label IS NOT NULL;
    CREATE TABLE predictions (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL,
        symbol TEXT NOT NULL,
        ts INTEGER NOT NULL,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        p_long REAL NOT NULL,
        p_short REAL NOT NULL
    );
    CREATE INDEX predictions_bar ON predictions (run_id, symbol, ts);
    CREATE INDEX predictions_model ON predictions (model, version, ts);
    CREATE TABLE signals (
        run_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        symbol TEXT NOT NULL,
        side INTEGER NOT NULL,
        confidence REAL NOT NULL,
        edge REAL NOT NULL,
        regime TEXT NOT NULL,
        action TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX signals_run ON signals (run_id, seq);
    CREATE TABLE orders (
        run_id INTEGER NOT NULL,
        id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        symbol TEXT NOT NULL,
        side INTEGER NOT NULL,
        qty REAL NOT NULL,
        ref_price REAL NOT NULL,
        purpose TEXT NOT NULL,
        reason TEXT NOT NULL,
        tp_pct REAL NOT NULL,
        sl_pct REAL NOT NULL,
        risk_action TEXT NOT NULL,
        risk_reason TEXT NOT NULL,
        approved_qty REAL NOT NULL,
        PRIMARY KEY (run_id, id)
    );
    CREATE INDEX orders_denied ON orders (run_id, risk_action);
    CREATE TABLE fills (
        run_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        order_id TEXT NOT NULL,
        ts INTEGER NOT NULL,
        symbol TEXT NOT NULL,
        side INTEGER NOT NULL,
        qty REAL NOT NULL,
        price REAL NOT NULL,
        fee REAL NOT NULL,
        liquidity TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX fills_run ON fills (run_id, seq);
    CREATE TABLE trades (
        run_id INTEGER NOT NULL,
        id INTEGER NOT NULL,
        symbol TEXT NOT NULL,
        quote TEXT NOT NULL,
        side INTEGER NOT NULL,
        qty REAL NOT NULL,
        entry_ts INTEGER NOT NULL,
        entry_price REAL NOT NULL,
        exit_ts INTEGER NOT NULL,
        exit_price REAL NOT NULL,
        gross_pnl REAL NOT NULL,
        fees REAL NOT NULL,
        net_pnl REAL NOT NULL,
        return_pct REAL NOT NULL,
        exit_reason TEXT NOT NULL,
        bars_held INTEGER NOT NULL,
        PRIMARY KEY (run_id, id)
    );
    CREATE TABLE positions (
        run_id INTEGER NOT NULL,
        symbol TEXT NOT NULL,
        quote TEXT NOT NULL,
        side INTEGER NOT NULL,
        qty REAL NOT NULL,
        entry_price REAL NOT NULL,
        entry_ts INTEGER NOT NULL,
        stop_price REAL NOT NULL,
        take_price REAL NOT NULL,
        mark_price REAL NOT NULL,
        unrealized REAL NOT NULL,
        updated_ts INTEGER NOT NULL,
        PRIMARY KEY (run_id, symbol)
    );
    CREATE TABLE equity (
        run_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        quote TEXT NOT NULL,
        balance REAL NOT NULL,
        equity REAL NOT NULL,
        exposure REAL NOT NULL,
        open_positions INTEGER NOT NULL,
        risk_state TEXT NOT NULL
    );
    CREATE INDEX equity_run ON equity (run_id, quote, seq);
    CREATE TABLE risk_events (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        state TEXT NOT NULL,
        prev_state TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        symbol TEXT NOT NULL
    );
    CREATE INDEX risk_events_run ON risk_events (run_id, id);
    CREATE TABLE actor_events (
        id INTEGER PRIMARY KEY,
        run_id INTEGER,
        at TEXT NOT NULL,
        clock_ts INTEGER,
        actor TEXT NOT NULL,
        event TEXT NOT NULL,
        detail TEXT NOT NULL,
        restarts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX actor_events_run ON actor_events (run_id, id);
    CREATE TABLE models (
        family TEXT NOT NULL,
        version TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL,
        train_start INTEGER,
        train_end INTEGER,
        data_end INTEGER,
        n_train INTEGER,
        features TEXT NOT NULL,
        metrics TEXT NOT NULL,
        params TEXT NOT NULL,
        status TEXT NOT NULL,
        PRIMARY KEY (family, version)
    );
    CREATE TABLE model_history (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        clock_ts INTEGER,
        family TEXT NOT NULL,
        version TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX model_history_family ON model_history (family, id);
    """,
    # 2: the learning loop
    """
    ALTER TABLE predictions ADD COLUMN weights TEXT;
    ALTER TABLE predictions ADD COLUMN role TEXT NOT NULL DEFAULT 'serving';
    ALTER TABLE models ADD COLUMN data_sha256 TEXT;
    ALTER TABLE models ADD COLUMN code_version TEXT;
    ALTER TABLE models ADD COLUMN input_kind TEXT;
    CREATE TABLE learner_evaluations (
        id INTEGER PRIMARY KEY,
        run_id INTEGER,
        at TEXT NOT NULL,
        clock_ts INTEGER NOT NULL,
        triggers TEXT NOT NULL,
        plan TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX learner_evaluations_ts ON learner_evaluations (clock_ts);
    CREATE TABLE retrain_jobs (
        id INTEGER PRIMARY KEY,
        run_id INTEGER,
        evaluation_id INTEGER,
        family TEXT NOT NULL,
        reason TEXT NOT NULL,
        priority INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        clock_ts INTEGER NOT NULL,
        finished_at TEXT,
        wall_s REAL,
        status TEXT NOT NULL,
        version TEXT,
        decision TEXT,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX retrain_jobs_family ON retrain_jobs (family, id);
    CREATE TABLE rl_q (
        state TEXT NOT NULL,
        action INTEGER NOT NULL,
        q REAL NOT NULL,
        n INTEGER NOT NULL,
        updated_ts INTEGER NOT NULL,
        PRIMARY KEY (state, action)
    ) WITHOUT ROWID;
    CREATE TABLE rl_updates (
        id INTEGER PRIMARY KEY,
        run_id INTEGER,
        ts INTEGER NOT NULL,
        symbol TEXT NOT NULL,
        state TEXT NOT NULL,
        action INTEGER NOT NULL,
        multiplier REAL NOT NULL,
        reward REAL NOT NULL,
        q REAL NOT NULL
    );
    """,
    # 3: crash-only state. The actors' state at the last committed checkpoint step (one
    # row per run and actor, replaced by each checkpoint in the same transaction as that
    # step's rows); where a resumed run continues; and each start of a run.
    """
    CREATE TABLE checkpoints (
        run_id INTEGER NOT NULL,
        actor TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (run_id, actor)
    );
    ALTER TABLE runs ADD COLUMN resume_seq INTEGER;
    ALTER TABLE runs ADD COLUMN resume_ts INTEGER;
    ALTER TABLE runs ADD COLUMN starts INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE runs ADD COLUMN pid INTEGER;
    CREATE TABLE risk_commands (
        run_id INTEGER NOT NULL,
        after_seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        args TEXT NOT NULL
    );
    CREATE TABLE run_starts (
        run_id INTEGER NOT NULL,
        at TEXT NOT NULL,
        pid INTEGER NOT NULL,
        kind TEXT NOT NULL,
        resume_seq INTEGER,
        resume_ts INTEGER,
        detail TEXT NOT NULL DEFAULT ''
    );
    """,
    # 4: the order lifecycle (venue seam): each order's client id and status, and every move
    """
    ALTER TABLE orders ADD COLUMN client_id TEXT;
    ALTER TABLE orders ADD COLUMN status TEXT;
    CREATE INDEX orders_client ON orders (run_id, client_id);
    CREATE TABLE order_events (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        client_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        from_status TEXT NOT NULL,
        to_status TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX order_events_order ON order_events (run_id, client_id);
    """,
    # 5: rows the store writer could not store, set aside instead of failing the batch
    # (store.rows.write_batch): the table they were for, the error and the row's repr
    """
    CREATE TABLE rejected_rows (
        id INTEGER PRIMARY KEY,
        run_id INTEGER,
        at TEXT NOT NULL,
        tbl TEXT NOT NULL,
        error TEXT NOT NULL,
        row TEXT NOT NULL
    );
    CREATE INDEX rejected_rows_run ON rejected_rows (run_id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(RuntimeError):
    pass


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION; return the number of migrations applied."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise SchemaError(
            f"database schema version {current} is newer than this qtraderd "
            f"({SCHEMA_VERSION}); upgrade qtraderd or use another --state-dir"
        )
    applied = 0
    for version in range(current + 1, SCHEMA_VERSION + 1):
        script = MIGRATIONS[version - 1]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied += 1
    return applied


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
