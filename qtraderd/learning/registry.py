"""The model registry: every version, its status, and who was champion when.

It lives in SQLite: `models` holds one row per immutable version (lineage, metrics,
status) and `model_history` is append-only, so "which version served at time T" is always
answerable. The `champion` pointer files in the models directory mirror it; they are what
the predictor loads.

One set of rules, two ways of writing them down. `RegistryView` is the registry in
memory: every change (register, set_status) updates it and returns the `Record`s that
store the change. Inside the daemon the learner owns a view and sends those Records to the
recorder (the store keeps one writer); outside it (`qtraderd train`, a stopped daemon) the
module functions load a view from the store, make the same change and `apply` its Records
in one transaction. So both paths build the same rows and retire the same champions.

A new champion's pointer file is written before its rows are stored, and `reconcile` (at
daemon start) lets a valid pointer win over the rows: after a crash between the two, the
deploy stands; a pointer edited by hand (the documented way to switch models) is adopted.
The registry wins where the pointer cannot be served: missing, unreadable, or naming a
version with no complete artifact; the pointer is then rewritten to the registry's
champion.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtraderd.core.clock import wall_iso
from qtraderd.core.messages import Record
from qtraderd.models.artifacts import (
    ArtifactError,
    ModelMeta,
    families,
    list_versions,
    meta_path,
    onnx_path,
    read_champion,
    write_champion,
)
from qtraderd.store.db import Transaction
from qtraderd.store.rows import write_record

log = logging.getLogger("qtraderd.registry")

STATUSES = ("champion", "candidate", "canary", "retired", "rejected")
MAX_LISTED = 1000  # `ctl models` / `ctl learning` list at most this many versions




def _check(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown model status {status!r}")


def model_row(meta: ModelMeta, path: Path, status: str) -> dict[str, Any]:
    """The `models` row of a version (the only place it is built)."""
    return {
        "family": meta.family, "version": meta.version, "path": str(path),
        "sha256": meta.sha256, "created_at": meta.created_at or wall_iso(),
        "train_start": meta.train_start, "train_end": meta.train_end,
        "data_end": meta.data_end, "n_train": meta.n_train,
        "features": json.dumps(meta.features),
        "metrics": json.dumps(meta.metrics, sort_keys=True, default=str),
        "params": json.dumps(meta.params, sort_keys=True, default=str),
        "status": status, "data_sha256": meta.data_sha256,
        "code_version": meta.code_version, "input_kind": meta.input_kind,
    }


def history_row(family: str, version: str, status: str, reason: str,
                clock_ts: int | None) -> dict[str, Any]:
    """The `model_history` row of a status change (the only place it is built)."""
    return {"at": wall_iso(), "clock_ts": clock_ts, "family": family, "version": version,
            "status": status, "reason": reason}


@dataclass
class Entry:
    family: str
    version: str
    status: str
    row: dict[str, Any]  # the full `models` row


# The lineage fields a model's metadata must share with the store's record of the job
# (or `qtraderd train`) that produced it.
LINEAGE_FIELDS = ("sha256", "data_sha256", "train_start", "train_end", "data_end")


@dataclass
class RegistryView:
    """The registry in memory. `models_dir` None: champion pointers are not written.

    `champion_history` is every family's champions in the order they became champion
    (from `model_history`): what `rollback` goes back to, whoever made the switch.
    """

    models_dir: Path | None
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    champion_history: dict[str, list[str]] = field(default_factory=dict)
    rolled_back: set[tuple[str, str]] = field(default_factory=set)  # never a rollback target

    @classmethod
    def load(cls, conn: sqlite3.Connection | None, models_dir: Path | None) -> RegistryView:
        view = cls(Path(models_dir) if models_dir is not None else None)
        if conn is None:
            return view
        cur = conn.execute("SELECT * FROM models")
        cols = [d[0] for d in cur.description]
        for r in cur.fetchall():
            row = dict(zip(cols, r, strict=True))
            view.entries[(row["family"], row["version"])] = Entry(
                row["family"], row["version"], row["status"], row)
        for family, version, status in conn.execute(
                "SELECT family, version, status FROM model_history WHERE status='champion' "
                "OR (status='retired' AND reason LIKE 'rolled back%') ORDER BY id"):
            if status == "champion":
                view._note_champion(family, version)
            else:
                view.rolled_back.add((family, version))
        return view

    def _note_champion(self, family: str, version: str) -> None:
        self.rolled_back.discard((family, version))  # promoted again: a target again
        past = self.champion_history.setdefault(family, [])
        if not past or past[-1] != version:
            past.append(version)

    def previous_champion(self, family: str, current: str | None) -> str | None:
        """The champion before `current`: the latest other version that served and was
        not itself rolled back (so rolling back twice goes two reigns back)."""
        for version in reversed(self.champion_history.get(family, [])):
            if version != current and (family, version) not in self.rolled_back:
                return version
        return None

    def lineage_problem(self, meta: ModelMeta) -> str | None:
        """Why `meta` cannot be trusted, or None when the store produced exactly it.

        The store knows every artifact a job or `qtraderd train` produced (its `models`
        row: sha256, data hash, training window). An artifact with no row has no lineage
        (a file dropped in by hand); one whose metadata disagrees with its row lies.
        Reasons start "no lineage" or "lineage mismatch" (stable wording).
        """
        entry = self.entries.get((meta.family, meta.version))
        if entry is None:
            hashes = {e.row.get("data_sha256") for e in self.entries.values()}
            if meta.data_sha256 and meta.data_sha256 in hashes:
                return (f"no lineage: no job of this store produced {meta.family}/"
                        f"{meta.version} (its metadata borrows a known data hash)")
            return (f"no lineage: no job of this store produced {meta.family}/"
                    f"{meta.version}, and its data hash "
                    f"{(meta.data_sha256 or 'none')[:12]} is not one the store produced")
        wrong = [f"{k} {getattr(meta, k)!r} (the store recorded {entry.row.get(k)!r})"
                 for k in LINEAGE_FIELDS if getattr(meta, k) != entry.row.get(k)]
        if wrong:
            return "lineage mismatch: its metadata says " + "; ".join(wrong)
        return None

    def champions(self) -> dict[str, str]:
        """{family: version} as the registry has them (pointers not consulted)."""
        return {e.family: e.version for e in self.entries.values() if e.status == "champion"}

    def champion(self, family: str) -> str | None:
        """The registry's champion, else the pointer file (a version placed by hand)."""
        for e in self.entries.values():
            if e.family == family and e.status == "champion":
                return e.version
        if self.models_dir is None:
            return None
        try:
            return read_champion(self.models_dir, family)
        except ArtifactError:
            return None

    def knows(self, family: str, version: str) -> bool:
        return (family, version) in self.entries

    def register(self, meta: ModelMeta, path: Path, status: str, reason: str,
                 clock_ts: int | None) -> list[Record]:
        """Add a version (idempotent: versions are immutable, a known one is kept)."""
        _check(status)
        if self.knows(meta.family, meta.version):
            return []
        row = model_row(meta, path, status)
        self.entries[(meta.family, meta.version)] = Entry(meta.family, meta.version, status,
                                                          row)
        if status == "champion":
            self._note_champion(meta.family, meta.version)
        return [Record("models", row, mode="replace"),
                Record("model_history", history_row(meta.family, meta.version, status,
                                                    reason, clock_ts))]

    def set_status(self, family: str, version: str, status: str, reason: str,
                   clock_ts: int | None) -> list[Record]:
        """Change a version's status -> Records. A new champion retires the old one (with
        its own history row) and gets its pointer file, written before any row is."""
        _check(status)
        entry = self.entries.get((family, version))
        if entry is None:
            raise KeyError(f"no model {family}/{version} in the registry")
        out: list[Record] = []
        if status == "champion":
            self._note_champion(family, version)
            for other in self.entries.values():
                if other.family == family and other.status == "champion" and \
                        other.version != version:
                    out += self._change(other, "retired", f"replaced by {version}", clock_ts)
            if self.models_dir is not None:
                write_champion(self.models_dir, family, version)
        out += self._change(entry, status, reason, clock_ts)
        return out

    def _change(self, entry: Entry, status: str, reason: str,
                clock_ts: int | None) -> list[Record]:
        if status == "retired" and reason.startswith("rolled back"):
            self.rolled_back.add((entry.family, entry.version))
        entry.status = status
        entry.row = {**entry.row, "status": status}
        return [Record("models", entry.row, mode="replace"),
                Record("model_history", history_row(entry.family, entry.version, status,
                                                    reason, clock_ts))]

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for e in sorted(self.entries.values(), key=lambda e: (e.family, e.row["created_at"],
                                                              e.version)):
            metrics = json.loads(e.row.get("metrics") or "{}")
            out.append({"family": e.family, "version": e.version, "status": e.status,
                        "created_at": e.row.get("created_at"),
                        "auc_long": metrics.get("auc_long"),
                        "auc_short": metrics.get("auc_short"),
                        "gate": metrics.get("gate_decision"),
                        "reason": metrics.get("gate_reason")})
        return out[-MAX_LISTED:]


# -------------------------------------------------------------------- direct writers


def apply(conn: sqlite3.Connection, records: list[Record]) -> None:
    """Store a view's Records in one transaction (what the recorder does in the daemon)."""
    with Transaction(conn):
        for rec in records:
            write_record(conn, rec)


def register(conn: sqlite3.Connection, meta: ModelMeta, path: Path, status: str,
             reason: str, clock_ts: int | None = None) -> None:
    """Record a new version with its lineage and metrics (idempotent per version)."""
    apply(conn, RegistryView.load(conn, None).register(meta, path, status, reason, clock_ts))


def set_status(conn: sqlite3.Connection, family: str, version: str, status: str, reason: str,
               clock_ts: int | None = None, models_dir: Path | None = None) -> None:
    """Change a version's status in the store; with `models_dir`, a new champion's pointer
    file is written too (first, as in the daemon)."""
    view = RegistryView.load(conn, models_dir)
    apply(conn, view.set_status(family, version, status, reason, clock_ts))


def promote(conn: sqlite3.Connection, models_dir: Path, family: str, version: str,
            reason: str, clock_ts: int | None = None) -> None:
    """Make a version champion in SQLite and in the `champion` pointer file."""
    set_status(conn, family, version, "champion", reason, clock_ts, models_dir)


def champions(conn: sqlite3.Connection) -> dict[str, str]:
    return RegistryView.load(conn, None).champions()


def list_models(conn: sqlite3.Connection) -> list[dict[str, object]]:
    """The most recent MAX_LISTED versions, oldest first per family."""
    cur = conn.execute(
        "SELECT * FROM (SELECT family, version, status, created_at, train_start, train_end, "
        "data_end, n_train, metrics FROM models ORDER BY created_at DESC, version DESC "
        "LIMIT ?) ORDER BY family, created_at, version", (MAX_LISTED,))
    cols = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        item = dict(zip(cols, row, strict=True))
        item["metrics"] = json.loads(item["metrics"] or "{}")
        out.append(item)
    return out


# -------------------------------------------------------------------- start-up repair


def reconcile(conn: sqlite3.Connection, models_dir: Path) -> list[str]:
    """Make the registry's champions and the pointer files agree (see the module doc for
    which side wins and why). Logs and returns one line per repair."""
    models_dir = Path(models_dir)
    view = RegistryView.load(conn, models_dir)
    registry = view.champions()
    repairs: list[str] = []
    records: list[Record] = []
    for family in sorted(set(registry) | set(families(models_dir))):
        on_disk = list_versions(models_dir, family)
        try:
            pointer = read_champion(models_dir, family)
        except ArtifactError as exc:
            pointer, bad = None, f"unreadable pointer ({exc})"
        else:
            bad = "no pointer file" if pointer is None else \
                f"pointer names {pointer}, which has no complete artifact"
        ours = registry.get(family)
        if pointer is not None and pointer in on_disk:
            if ours == pointer:
                continue
            if not view.knows(family, pointer):
                meta = ModelMeta.from_json(meta_path(models_dir, family, pointer).read_text())
                records += view.register(meta, onnx_path(models_dir, family, pointer),
                                         "candidate", "found by the start-up check", None)
            records += view.set_status(family, pointer, "champion",
                                       f"start-up check: the champion pointer names it "
                                       f"(registry had {ours or 'none'})", None)
            repairs.append(f"{family} champion {ours or 'none'} -> {pointer} "
                           "(the pointer file wins: it names a complete artifact)")
        elif ours is not None and ours in on_disk:
            write_champion(models_dir, family, ours)
            repairs.append(f"{family} pointer -> {ours} (the registry wins: {bad})")
    apply(conn, records)
    for line in repairs:
        log.warning("registry repaired: %s", line)
    return repairs
