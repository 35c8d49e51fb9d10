"""The learner's in-memory view of the model registry, and the rows that persist it.

The registry lives in SQLite (`models`, append-only `model_history`) and is mirrored by the
`champion` pointer files. Inside the daemon the learner owns it: it keeps this view, and
every change produces Records for the recorder (so the store has one writer) plus, for
champions, an atomic pointer-file write.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qtraderd.messages import Record
from qtraderd.models.artifacts import ModelMeta, read_champion, write_champion


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
