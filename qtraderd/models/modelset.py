"""The set of models the predictor runs, and how it changes.

Two roles: *serving* models (one per family, normally the champion) are the ensemble's
members; *shadow* models (a canary under evaluation, or the previous champion while a new
one proves itself) predict on every bar and are recorded, but are never traded. A set is
immutable: a change builds a new set (reusing already loaded sessions) that the predictor
swaps in between two bars.

Loading is slow (onnxruntime session + parity probes), so callers do it off the event loop.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtraderd.core.clock import iso
from qtraderd.models.artifacts import (
    ArtifactError,
    meta_path,
    onnx_path,
)
from qtraderd.models.onnx_model import LoadedModel, load_model

log = logging.getLogger("qtraderd.models")

SERVING, SHADOW = "serving", "shadow"


@dataclass(frozen=True)
class ModelSet:
    serving: dict[str, LoadedModel] = field(default_factory=dict)  # family -> model
    shadow: tuple[LoadedModel, ...] = ()

    def members(self) -> list[tuple[LoadedModel, str]]:
        out = [(m, SERVING) for _, m in sorted(self.serving.items())]
        return out + [(m, SHADOW) for m in self.shadow]

    def needs_windows(self) -> bool:
        return any(m.input_kind == "window" for m, _ in self.members())

    def spec(self) -> dict[str, Any]:
        return {"serving": {f: m.version for f, m in sorted(self.serving.items())},
                "shadow": [[m.family, m.version] for m in self.shadow]}

    def describe(self) -> list[dict[str, Any]]:
        return [{"family": m.family, "version": m.version, "role": role,
                 "input": m.input_kind, "data_end": iso(m.data_end)}
                for m, role in self.members()]


def _loaded(current: ModelSet) -> dict[tuple[str, str], LoadedModel]:
    return {(m.family, m.version): m for m, _ in current.members()}


def load_spec(models_dir: Path, serving: dict[str, str], shadow: list[tuple[str, str]],
              current: ModelSet) -> tuple[ModelSet, list[str]]:
    """Build the set `serving` + `shadow`, reusing sessions `current` already has.

    A version that fails to load is left out with its reason in the error list; for a
    serving family the currently served version is kept instead, so a bad file never
    leaves a family without its model.
    """
    have = _loaded(current)
    errors: list[str] = []

    def get(family: str, version: str) -> LoadedModel | None:
        key = (family, version)
        if key not in have:
            try:
                have[key] = load_model(models_dir, family, version)
            except ArtifactError as exc:
                errors.append(str(exc))
                return None
        return have[key]

    new_serving: dict[str, LoadedModel] = {}
    for family, version in serving.items():
        m = get(family, version)
        if m is None and family in current.serving:
            m = current.serving[family]
        if m is not None:
            new_serving[family] = m
    new_shadow = tuple(m for f, v in shadow if (m := get(f, v)) is not None)
    return ModelSet(new_serving, new_shadow), errors


def file_stamp(models_dir: Path, family: str, version: str) -> tuple[float, float]:
    """mtimes of an artifact's two files: a refused file is retried only once it changed."""
    def mtime(p: Path) -> float:
        try:
            return os.stat(p).st_mtime
        except OSError:
            return -1.0

    return (mtime(onnx_path(models_dir, family, version)),
            mtime(meta_path(models_dir, family, version)))
