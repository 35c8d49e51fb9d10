"""Fuzzing model files (issue 11, B14): what lands in the models directory cannot take the
daemon down or replace a good model with a bad one.

Each case writes a new version of a family — ONNX bytes truncated, bit-flipped, random,
or a valid ONNX graph of the wrong shape, opset or IR version; metadata mutated, cut,
random, or of the wrong types — and points the family's `champion` at it. Then, as the
daemon does: the predictor's hot reload (`reload_from_disk`, what its directory watcher
runs) and the start-up load (`load_champions`). The promise: nothing raises; a bad file is
refused with a logged `model rejected:` line naming it, and the serving model keeps
serving; a file that passes every check is a working model.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from qtraderd.actors.predictor import PredictorActor
from qtraderd.features.labels import Barriers
from qtraderd.features.spec import N_FEATURES
from qtraderd.models.artifacts import (
    ModelMeta,
    meta_path,
    onnx_path,
    read_champion,
    sha256_bytes,
    write_champion,
)
from qtraderd.models.onnx_model import load_champions
from tests.fuzz.fuzz_count import tally

pytestmark = pytest.mark.fuzz

FAMILY = "lightgbm"
_versions = itertools.count()


class World:
    def __init__(self, trained: dict[str, Path], root: Path) -> None:
        self.models = root / "models"
        shutil.copytree(trained["models"], self.models)
        loaded, errors = load_champions(self.models)
        assert not errors
        self.good = loaded[FAMILY]
        self.good_version = self.good.version
        self.good_bytes = onnx_path(self.models, FAMILY, self.good_version).read_bytes()
        self.good_meta = json.loads(meta_path(self.models, FAMILY, self.good_version)
                                    .read_text())
        tx, rx = trio.open_memory_channel[Any](1)
        self.predictor = PredictorActor(Barriers(0.016, 0.008, 48), loaded, rx, tx,
                                        models_dir=self.models)

    def meta_for(self, version: str, onnx: bytes, **changes: Any) -> dict[str, Any]:
        meta = copy.deepcopy(self.good_meta)
        meta.update(version=version, sha256=sha256_bytes(onnx), **changes)
        return meta


@pytest.fixture(scope="module")
def world(trained, tmp_path_factory) -> World:
    return World(trained, tmp_path_factory.mktemp("modelfuzz"))


# ------------------------------------------------------------------ ONNX files
def onnx_graph(in_dims: list[int | None], out_dims: list[int | None], opset: int,
               ir: int, op: str) -> bytes:
    """A syntactically valid ONNX model with one input and one output of the given
    shapes (test process only: the daemon never imports onnx)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, in_dims)
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, out_dims)
    node = helper.make_node(op, ["input"], ["probabilities"])
    graph = helper.make_graph([node], "fuzz", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model.SerializeToString()


dims = st.lists(st.none() | st.integers(0, 2 * N_FEATURES), min_size=0, max_size=4)


@st.composite
def onnx_bytes(draw: st.DrawFn, good: bytes) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["truncated", "flipped", "random", "spliced", "graph",
                                 "empty"]))
    if kind == "truncated":
        return kind, good[:draw(st.integers(0, len(good) - 1))]
    if kind == "flipped":
        data = bytearray(good)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return kind, bytes(data)
    if kind == "random":
        return kind, draw(st.binary(max_size=512))
    if kind == "spliced":
        i = draw(st.integers(0, len(good)))
        return kind, good[:i] + draw(st.binary(min_size=1, max_size=32)) + good[i:]
    if kind == "graph":
        in_dims = draw(st.one_of(dims, st.just([None, N_FEATURES])))
        out_dims = draw(st.one_of(dims, st.just([None, 3])))
        opset = draw(st.sampled_from([1, 7, 11, 13, 17, 21, 99, 0, -1]))
        ir = draw(st.sampled_from([1, 3, 7, 8, 9, 10, 99, 0]))
        op = draw(st.sampled_from(["Identity", "Softmax", "Relu", "NoSuchOp"]))
        return kind, onnx_graph(in_dims, out_dims, opset, ir, op)
    return kind, b""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3), max_leaves=8)
META_KEYS = list(ModelMeta.__dataclass_fields__)


@st.composite
def meta_bytes(draw: st.DrawFn, world: World, version: str, onnx: bytes) -> bytes:
    meta = world.meta_for(version, onnx)
    kind = draw(st.sampled_from(["same", "same", "field", "field", "drop", "extra", "cut",
                                 "random", "probes", "sha"]))
    if kind == "field":
        for key in draw(st.lists(st.sampled_from(META_KEYS), min_size=1, max_size=3)):
            meta[key] = draw(json_values)
    elif kind == "drop":
        meta.pop(draw(st.sampled_from(META_KEYS)), None)
    elif kind == "extra":
        meta[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    elif kind == "probes":
        rows = meta["probe_inputs"]
        choice = draw(st.sampled_from(["ragged", "short", "empty", "outputs", "nan"]))
        if choice == "ragged" and rows:
            rows[0] = rows[0][:-1]
        elif choice == "short":
            meta["probe_inputs"] = [r[: N_FEATURES // 2] for r in rows]
        elif choice == "empty":
            meta["probe_inputs"] = []
        elif choice == "outputs":
            meta["probe_outputs"] = [o[:2] for o in meta["probe_outputs"]]
        else:
            meta["probe_outputs"] = [[float("nan")] * 3 for _ in meta["probe_outputs"]]
    elif kind == "sha":
        meta["sha256"] = draw(st.text(max_size=64))
    text = json.dumps(meta)
    if kind == "cut":
        return text.encode()[:draw(st.integers(0, len(text) - 1))]
    if kind == "random":
        return draw(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
    return text.encode()


def rejected_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "model rejected" in r.getMessage()]


def check_served(world: World, version: str, served: Any) -> None:
    """A model that passed every check must really work on feature rows."""
    if served.version != version:
        assert served is world.good
        return
    out = served.predict(np.zeros((2, N_FEATURES), dtype=np.float32))
    assert out.shape == (2, 3) and np.all(np.isfinite(out))


def test_hot_reload_of_bad_files(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="qtraderd")

    @given(st.data())
    def case(data: st.DataObject) -> None:
        tally()
        caplog.clear()
        _kind, onnx = data.draw(onnx_bytes(world.good_bytes), label="onnx")
        version = f"fz{next(_versions):08d}"  # fixed width: the drawn sizes must not vary
        meta = data.draw(meta_bytes(world, version, onnx), label="meta")
        onnx_path(world.models, FAMILY, version).write_bytes(onnx)
        meta_path(world.models, FAMILY, version).write_bytes(meta)
        write_champion(world.models, FAMILY, version)
        try:
            new = world.predictor.reload_from_disk()
            served = world.good if new is None else new.serving[FAMILY]
            if served.version != version:  # refused: said so, naming the file
                lines = rejected_lines(caplog)
                assert lines and any(version in line for line in lines), lines
            check_served(world, version, served)
            # start-up: the same file is refused (or loaded) without raising
            loaded, errors = load_champions(world.models)
            assert (FAMILY in loaded) != bool(
                [e for e in errors if version in e]), (loaded, errors)
        finally:
            write_champion(world.models, FAMILY, world.good_version)
        assert world.predictor.models.serving[FAMILY] is world.good

    case()


def test_bad_champion_pointers(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """The `champion` file itself: any bytes. Refused with a reason, nothing raises."""
    caplog.set_level(logging.ERROR, logger="qtraderd")
    pointer = world.models / FAMILY / "champion"

    @given(st.binary(max_size=120) | st.text(max_size=100).map(str.encode))
    def case(data: bytes) -> None:
        tally()
        caplog.clear()
        pointer.write_bytes(data)
        try:
            new = world.predictor.reload_from_disk()
            if new is not None and FAMILY in new.serving:
                served = new.serving[FAMILY]
                check_served(world, served.version, served)
            loaded, errors = load_champions(world.models)
            assert FAMILY in loaded or errors or not data.decode(errors="replace").strip()
        finally:
            write_champion(world.models, FAMILY, world.good_version)
        assert read_champion(world.models, FAMILY) == world.good_version

    case()
