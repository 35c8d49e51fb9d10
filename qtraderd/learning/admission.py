"""What the gate admits to scoring, and how a refusal is recorded.

The learner's bookkeeping for an honest gate, kept out of the actor:

* `unverified`: an artifact no job of ours just produced (a file dropped into the models
  directory) is judged only if its own metadata says it never saw the evaluation window
  (`gate.window_conflict`) *and* the store produced exactly it (`RegistryView.
  lineage_problem`: sha256, data hash, training window). A file dropped in by hand has
  no lineage, so the gate never deploys it; `ctl promote` still can (logged).
* `lineage_mismatch`: a job's metadata file against what the job reported producing.
* `refusal_records`: a refused or alarmed version is stored as `rejected`, its reason in
  the history and in its metrics (`gate_decision`, `gate_reason`: what `ctl models` and
  the report show).
* `file_records`: a version a `champion` pointer names (switched by hand, or served
  from a pointer the store never recorded) is registered so the registry follows what
  serves — it is never gated, rejected or retired behind its back, and `rollback` can
  go back to it.
"""

from __future__ import annotations

import json
from typing import Any

from qtraderd.core.config import INTERVAL_MS, Config
from qtraderd.core.messages import Record
from qtraderd.learning import gate
from qtraderd.learning.registry import RegistryView
from qtraderd.models.artifacts import (
    ArtifactError,
    ModelMeta,
    list_versions,
    meta_path,
    onnx_path,
    read_champion,
)


def horizon_ms(cfg: Config) -> int:
    return cfg.labels.horizon_bars * INTERVAL_MS[cfg.feed.interval]


def unverified(meta: ModelMeta, view: RegistryView, cfg: Config, ts: int) -> str | None:
    """Why an artifact no job of ours just produced cannot be judged at clock `ts`.

    The window first, on the metadata's own claims (a model that says it saw the window
    did), then its lineage in the store (so a false claim is caught too).
    """
    seen = gate.window_conflict(meta.train_end, meta.data_end, horizon_ms(cfg),
                                gate.eval_start(cfg.learning, ts), own=False)
    return seen if seen is not None else view.lineage_problem(meta)


def read_meta(view: RegistryView, family: str, version: str) -> tuple[ModelMeta | None, str]:
    """(metadata, "") or (None, why it cannot be read)."""
    assert view.models_dir is not None
    try:
        return ModelMeta.from_json(meta_path(view.models_dir, family, version)
                                   .read_text()), ""
    except (OSError, ValueError, TypeError, ArtifactError) as exc:
        return None, f"unreadable metadata ({exc})"


def lineage_mismatch(meta: ModelMeta, lineage: dict[str, Any] | None) -> str | None:
    """The metadata file against what the job that produced it reported."""
    if not lineage:
        return "lineage mismatch: the job reported no lineage for its model"
    wrong = [f"{k} {getattr(meta, k, None)!r} (the job produced {lineage.get(k)!r})"
             for k in lineage if getattr(meta, k, None) != lineage.get(k)]
    return "lineage mismatch: its metadata says " + "; ".join(wrong) if wrong else None


def refusal_reason(reason: str) -> str:
    """Stable wording: "leakage alarm: ..." or "refused: ..."."""
    return reason if reason.startswith("leakage alarm") else f"refused: {reason}"


def refusal_records(view: RegistryView, family: str, version: str, meta: ModelMeta | None,
                    reason: str, action: str, ts: int) -> list[Record]:
    """Store a refused (`action` "refused") or alarmed ("alarm") version as rejected."""
    assert view.models_dir is not None
    if not view.knows(family, version):
        if meta is None:
            return []  # unreadable: nothing to register; the job row keeps the reason
        meta = ModelMeta(**{**meta.__dict__, "metrics": {
            **meta.metrics, "gate_decision": action, "gate_reason": reason}})
        return view.register(meta, onnx_path(view.models_dir, family, version), "rejected",
                             reason, ts)
    entry = view.entries[(family, version)]
    metrics = {**json.loads(entry.row.get("metrics") or "{}"), "gate_decision": action,
               "gate_reason": reason}
    entry.row = {**entry.row, "metrics": json.dumps(metrics, sort_keys=True)}
    return view.set_status(family, version, "rejected", reason, ts)


def pointer(view: RegistryView, family: str) -> str | None:
    """The version the family's `champion` pointer names (None: none or unreadable)."""
    assert view.models_dir is not None
    try:
        return read_champion(view.models_dir, family)
    except ArtifactError:
        return None


def standing(view: RegistryView, family: str, version: str) -> str:
    """"was STATUS[: gate reason]" of a known version (what a promote overrides)."""
    entry = view.entries.get((family, version))
    if entry is None:
        return "unknown to the registry"
    why = json.loads(entry.row.get("metrics") or "{}").get("gate_reason")
    return f"was {entry.status}: {why}" if why else f"was {entry.status}"


def file_records(view: RegistryView, family: str, version: str, status: str, why: str,
                 ts: int) -> list[Record]:
    """Register a complete artifact on disk (a pointer names it, or `ctl promote`), if
    the store does not know it yet."""
    assert view.models_dir is not None
    if view.knows(family, version) or version not in list_versions(view.models_dir, family):
        return []
    meta, _ = read_meta(view, family, version)
    if meta is None:
        return []
    return view.register(meta, onnx_path(view.models_dir, family, version), status, why, ts)


def adopt_pointer(view: RegistryView, family: str, ts: int
                  ) -> tuple[list[Record], str | None, str | None]:
    """A pointer switched by hand to a complete artifact: (records, was, now), else
    ([], None, None). The registry follows the pointer, as the start-up check does."""
    assert view.models_dir is not None
    named = pointer(view, family)
    ours = view.champions().get(family)
    if named is None or named == ours or named not in list_versions(view.models_dir, family):
        return [], None, None
    recs = file_records(view, family, named, "candidate",
                           "named by a champion pointer switched by hand", ts)
    recs += view.set_status(family, named, "champion", f"the champion pointer names it "
                            f"(switched by hand; registry had {ours or 'none'})", ts)
    return recs, ours, named
