"""The model registry in SQLite: every version, its status, and who was champion when.

`models` holds one row per immutable version (lineage, metrics, status); `model_history`
is append-only: every status change is a new row, so "which version served at time T"
is always answerable. The `champion` pointer files in the models directory mirror it.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from qtraderd.models.artifacts import ModelMeta, write_champion
from qtraderd.store.db import Transaction

STATUSES = ("champion", "candidate", "canary", "retired", "rejected")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def register(conn: sqlite3.Connection, meta: ModelMeta, path: Path, status: str,
             reason: str, clock_ts: int | None = None) -> None:
    """Record a new version with its lineage and metrics (idempotent per version)."""
    if status not in STATUSES:
        raise ValueError(f"unknown model status {status!r}")
    with Transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO models (family, version, path, sha256, created_at, "
            "train_start, train_end, data_end, n_train, features, metrics, params, status, "
            "data_sha256, code_version, input_kind) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (meta.family, meta.version, str(path), meta.sha256, meta.created_at or _now(),
             meta.train_start, meta.train_end, meta.data_end, meta.n_train,
             json.dumps(meta.features), json.dumps(meta.metrics, sort_keys=True, default=str),
             json.dumps(meta.params, sort_keys=True, default=str), status, meta.data_sha256,
             meta.code_version, meta.input_kind),
        )
        conn.execute(
            "INSERT INTO model_history (at, clock_ts, family, version, status, reason) "
            "VALUES (?,?,?,?,?,?)",
            (_now(), clock_ts, meta.family, meta.version, status, reason),
        )


def set_status(conn: sqlite3.Connection, family: str, version: str, status: str, reason: str,
               clock_ts: int | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown model status {status!r}")
    with Transaction(conn):
        if status == "champion":
            conn.execute(
                "UPDATE models SET status='retired' WHERE family=? AND status='champion' "
                "AND version<>?", (family, version))
        cur = conn.execute("UPDATE models SET status=? WHERE family=? AND version=?",
                           (status, family, version))
        if cur.rowcount == 0:
            raise KeyError(f"no model {family}/{version} in the registry")
        conn.execute(
            "INSERT INTO model_history (at, clock_ts, family, version, status, reason) "
            "VALUES (?,?,?,?,?,?)", (_now(), clock_ts, family, version, status, reason))


def promote(conn: sqlite3.Connection, models_dir: Path, family: str, version: str,
            reason: str, clock_ts: int | None = None) -> None:
    """Make a version champion in SQLite and in the `champion` pointer file."""
    set_status(conn, family, version, "champion", reason, clock_ts)
    write_champion(models_dir, family, version)


def champions(conn: sqlite3.Connection) -> dict[str, str]:
    rows = conn.execute("SELECT family, version FROM models WHERE status='champion'").fetchall()
    return {f: v for f, v in rows}


def list_models(conn: sqlite3.Connection) -> list[dict[str, object]]:
    cur = conn.execute(
        "SELECT family, version, status, created_at, train_start, train_end, data_end, "
        "n_train, metrics FROM models ORDER BY family, created_at, version")
    cols = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        item = dict(zip(cols, row, strict=True))
        item["metrics"] = json.loads(item["metrics"] or "{}")
        out.append(item)
    return out
