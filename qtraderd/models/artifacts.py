"""Model artifacts on disk: immutable versioned ONNX files plus JSON metadata.

Layout (DESIGN.md, "Models on disk"):

    models/<family>/<version>.onnx     the model, never modified after it is written
    models/<family>/<version>.json     metadata (ModelMeta), written after the .onnx
    models/<family>/champion           the version the daemon serves (one line)

Every file is written as `.<name>.tmp`, fsynced and renamed into place, so a reader (or
the predictor's directory watcher) sees either nothing or the complete file. The .json
is written last: its presence means the artifact is complete. This module has no ML
imports; the learner subprocess and the daemon both use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CLASSES = ("none", "long", "short")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete, corrupt or does not fit this qtraderd."""


@dataclass(frozen=True)
class ModelMeta:
    family: str
    version: str
    sha256: str  # of the .onnx bytes
    features: list[str]
    features_version: int
    input_name: str
    output_name: str  # the [n, 3] probability output: columns follow CLASSES
    # "features": rows of features.FEATURE_NAMES, shape [n, N_FEATURES] (tree models);
    # "window": candle windows from windows.py, shape [n, WINDOW, CHANNELS] (N-HiTS, PatchTST)
    input_kind: str = "features"
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    created_at: str = ""
    code_version: str = ""
    symbols: list[str] = field(default_factory=list)
    interval: str = ""
    barriers: dict[str, float] = field(default_factory=dict)  # tp, sl, horizon
    train_start: int | None = None  # first bar (ms) of the training window
    train_end: int | None = None  # last training sample's bar
    data_end: int | None = None  # last bar any training label looked at
    valid_start: int | None = None
    valid_end: int | None = None
    n_train: int = 0
    n_valid: int = 0
    data_sha256: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # parity: native vs onnxruntime on held-out rows, and probe rows the predictor re-checks
    parity_max_abs_diff: float = 0.0
    probe_inputs: list[Any] = field(default_factory=list)  # rows, or windows (nested)
    probe_outputs: list[list[float]] = field(default_factory=list)
    # where it was trained: "local" or "ray:<address>" ("" in artifacts from before Ray)
    trained_on: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        """Parse and type-check metadata; ArtifactError says what is wrong.

        Every field is checked against its declared type here, so that nothing later (the
        loader's messages, the parity probe, the predictor's abstention window) meets a
        number where it expects a string: a hand-edited or corrupt file is refused with
        its reason instead of raising somewhere in the serving path.
        """
        try:
            data = json.loads(text)
        except RecursionError:
            raise ArtifactError("metadata is nested too deeply to be metadata") from None
        if not isinstance(data, dict):
            raise ArtifactError(f"metadata must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ArtifactError(f"unknown metadata keys {sorted(unknown)}")
        missing = {"family", "version", "sha256", "features", "features_version",
                   "input_name", "output_name"} - set(data)
        if missing:
            raise ArtifactError(f"metadata lacks {sorted(missing)}")
        for key, value in data.items():
            check = _FIELD_CHECKS[str(cls.__dataclass_fields__[key].type)]
            if not check(value):
                raise ArtifactError(f"metadata key {key!r} has the wrong type: "
                                    f"expected {cls.__dataclass_fields__[key].type}, "
                                    f"got {_short(value)}")
        return cls(**data)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# metadata field type (as annotated) -> check of a parsed JSON value
_FIELD_CHECKS: dict[str, Any] = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "float": _is_num,
    "int | None": lambda v: v is None or _is_int(v),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "dict[str, float]": lambda v: isinstance(v, dict) and all(map(_is_num, v.values())),
    "dict[str, Any]": lambda v: isinstance(v, dict),
    "list[Any]": lambda v: isinstance(v, list),
    "list[list[float]]": lambda v: isinstance(v, list) and all(
        isinstance(r, list) and all(map(_is_num, r)) for r in v),
}
_unchecked = {str(f.type) for f in ModelMeta.__dataclass_fields__.values()} - set(_FIELD_CHECKS)
if _unchecked:  # a new metadata field needs its check above
    raise ImportError(f"ModelMeta field types without a check: {sorted(_unchecked)}")


def check_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise ArtifactError(f"bad model version name {version!r}")
    return version


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_temp_name(name: str) -> bool:
    """Names the watcher must ignore: our own temp files and editors' leftovers."""
    return name.startswith(".") or name.endswith((".tmp", "~", ".swp", ".part"))


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` via `.<name>.tmp` + fsync + rename + directory fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def onnx_path(models_dir: Path, family: str, version: str) -> Path:
    return Path(models_dir) / family / f"{check_version(version)}.onnx"


def meta_path(models_dir: Path, family: str, version: str) -> Path:
    return Path(models_dir) / family / f"{check_version(version)}.json"


def write_artifact(models_dir: Path, meta: ModelMeta, onnx_bytes: bytes) -> Path:
    """Write a new immutable artifact; refuse to overwrite an existing version."""
    if sha256_bytes(onnx_bytes) != meta.sha256:
        raise ArtifactError("metadata sha256 does not match the ONNX bytes")
    path = onnx_path(models_dir, meta.family, meta.version)
    if path.exists() or meta_path(models_dir, meta.family, meta.version).exists():
        raise ArtifactError(f"model {meta.family}/{meta.version} already exists (immutable)")
    atomic_write(path, onnx_bytes)
    atomic_write(meta_path(models_dir, meta.family, meta.version), meta.to_json().encode())
    return path


def read_artifact(models_dir: Path, family: str, version: str) -> tuple[ModelMeta, bytes]:
    """Read and verify (sha256, names) an artifact; raises ArtifactError with the reason."""
    mpath = meta_path(models_dir, family, version)
    opath = onnx_path(models_dir, family, version)
    try:
        meta = ModelMeta.from_json(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{mpath}: metadata file missing") from exc
    except ArtifactError as exc:  # the message says what; the operator needs which file
        raise ArtifactError(f"{mpath}: {exc}") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{mpath}: unreadable metadata ({exc})") from exc
    if meta.family != family or meta.version != version:
        raise ArtifactError(
            f"{mpath}: metadata says {meta.family}/{meta.version}, file is {family}/{version}"
        )
    try:
        data = opath.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{opath}: cannot read model file ({exc.strerror})") from exc
    digest = sha256_bytes(data)
    if digest != meta.sha256:
        raise ArtifactError(
            f"{opath}: sha256 {digest[:12]}... does not match metadata {meta.sha256[:12]}... "
            "(corrupt or half-written file)"
        )
    return meta, data


def write_champion(models_dir: Path, family: str, version: str) -> None:
    atomic_write(Path(models_dir) / family / "champion", f"{check_version(version)}\n".encode())


def read_champion(models_dir: Path, family: str) -> str | None:
    p = Path(models_dir) / family / "champion"
    try:
        text = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:  # a directory, unreadable, binary junk
        raise ArtifactError(f"{p}: unreadable champion pointer ({exc})") from exc
    return check_version(text) if text else None


def list_versions(models_dir: Path, family: str) -> list[str]:
    """Complete artifacts (both files present) of a family, oldest name first."""
    d = Path(models_dir) / family
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        if is_temp_name(p.name):
            continue
        if p.with_suffix(".onnx").exists():
            out.append(p.stem)
    return out


def families(models_dir: Path) -> list[str]:
    d = Path(models_dir)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not is_temp_name(p.name))


def champions_on_disk(models_dir: Path) -> tuple[dict[str, str], list[str]]:
    """{family: version} from the `champion` pointer files.

    Only pointers count: a model file dropped into the directory is a challenger that has
    to pass the deploy gate (or `ctl promote`), never served just because it is newest.
    """
    out: dict[str, str] = {}
    errors: list[str] = []
    for family in families(models_dir):
        try:
            version = read_champion(models_dir, family)
        except ArtifactError as exc:
            errors.append(f"{family} champion pointer: {exc}")
            continue
        if version is not None:
            out[family] = version
    return out, errors
