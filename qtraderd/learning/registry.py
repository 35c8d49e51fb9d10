"""The model registry: every version, its status, and who was champion when.

It lives in SQLite: `models` holds one row per immutable version (lineage, metrics,
status) and `model_history` is append-only, so "which version served at time T" is always
answerable. The `champion` pointer files in the models directory mirror it.

Two writers, one set of rows: inside the daemon the learner owns the registry through
`RegistryView` (an in-memory view whose every change becomes Records for the recorder, so
the store keeps one writer, plus an atomic pointer-file write for champions); outside it
(`qtraderd train`, a stopped daemon) the functions at the end write directly.
"""


from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qtraderd.core.messages import Record
from qtraderd.models.artifacts import ModelMeta, read_champion, write_champion
from qtraderd.store.db import Transaction


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Entry:
    family: str
    version: str
    status: str
    row: dict[str, Any]  # the full `models` row


@dataclass
class RegistryView:
    models_dir: Path
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)

    @classmethod
    def load(cls, conn: sqlite3.Connection | None, models_dir: Path) -> RegistryView:
        view = cls(Path(models_dir))
        if conn is None:
            return view
        cur = conn.execute("SELECT * FROM models")
        cols = [d[0] for d in cur.description]
        for r in cur.fetchall():
            row = dict(zip(cols, r, strict=True))
            view.entries[(row["family"], row["version"])] = Entry(
                row["family"], row["version"], row["status"], row)
        return view

    def champion(self, family: str) -> str | None:
        for e in self.entries.values():
            if e.family == family and e.status == "champion":
                return e.version
        try:
            return read_champion(self.models_dir, family)  # registered by hand, or older
        except Exception:
            return None

    def knows(self, family: str, version: str) -> bool:
        return (family, version) in self.entries

    def register(self, meta: ModelMeta, path: Path, status: str, reason: str,
                 clock_ts: int) -> list[Record]:
        row = {
            "family": meta.family, "version": meta.version, "path": str(path),
            "sha256": meta.sha256, "created_at": meta.created_at or _now(),
            "train_start": meta.train_start, "train_end": meta.train_end,
            "data_end": meta.data_end, "n_train": meta.n_train,
            "features": json.dumps(meta.features),
            "metrics": json.dumps(meta.metrics, sort_keys=True, default=str),
            "params": json.dumps(meta.params, sort_keys=True, default=str),
            "status": status, "data_sha256": meta.data_sha256,
            "code_version": meta.code_version, "input_kind": meta.input_kind,
        }
        self.entries[(meta.family, meta.version)] = Entry(meta.family, meta.version, status,
                                                          row)
        return [Record("models", row, mode="replace"),
                self._history(meta.family, meta.version, status, reason, clock_ts)]

    def set_status(self, family: str, version: str, status: str, reason: str,
                   clock_ts: int) -> list[Record]:
        """Change a version's status (a new champion retires the old one) -> Records."""
        entry = self.entries.get((family, version))
        if entry is None:
            raise KeyError(f"no model {family}/{version} in the registry")
        out: list[Record] = []
        if status == "champion":
            for other in self.entries.values():
                if other.family == family and other.status == "champion" and \
                        other.version != version:
                    out += self._change(other, "retired", f"replaced by {version}", clock_ts)
            write_champion(self.models_dir, family, version)
        out += self._change(entry, status, reason, clock_ts)
        return out

    def _change(self, entry: Entry, status: str, reason: str, clock_ts: int) -> list[Record]:
        entry.status = status
        entry.row = {**entry.row, "status": status}
        return [Record("models", entry.row, mode="replace"),
                self._history(entry.family, entry.version, status, reason, clock_ts)]

    @staticmethod
    def _history(family: str, version: str, status: str, reason: str,
                 clock_ts: int) -> Record:
        return Record("model_history", {"at": _now(), "clock_ts": clock_ts, "family": family,
                                        "version": version, "status": status,
                                        "reason": reason})

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for e in sorted(self.entries.values(), key=lambda e: (e.family, e.row["created_at"],
                                                              e.version)):
            metrics = json.loads(e.row.get("metrics") or "{}")
            out.append({"family": e.family, "version": e.version, "status": e.status,
                        "created_at": e.row.get("created_at"),
                        "auc_long": metrics.get("auc_long"),
                        "auc_short": metrics.get("auc_short"),
                        "gate": metrics.get("gate_decision")})
        return out





STATUSES = ("champion", "candidate", "canary", "retired", "rejected")




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
