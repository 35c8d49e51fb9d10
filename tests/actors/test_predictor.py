"""Predictor: features + ONNX ensemble per step, exact versions, in-sample abstention,
outcomes, and the models-directory watcher that refuses bad files and keeps serving."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import trio

from qtraderd.actors.predictor import PredictorActor
from qtraderd.core.messages import Bar, Step
from qtraderd.features.labels import Barriers, triple_barrier
from qtraderd.features.spec import WARMUP_BARS
from qtraderd.models.artifacts import (
    ModelMeta,
    meta_path,
    onnx_path,
    sha256_bytes,
    write_artifact,
    write_champion,
)
from qtraderd.models.onnx_model import load_champions
from tests.conftest import OHLCV
from tests.helpers import read_ohlcv

B = Barriers(0.016, 0.008, 48)


def real_steps(symbols=("ETHBTC", "LTCBTC"), n=None):
    data = {s: read_ohlcv(OHLCV / f"{s}-5m.csv") for s in symbols}
    by_ts: dict[int, list[Bar]] = {}
    for s, a in data.items():
        for r in (a if n is None else a[:n]).tolist():
            by_ts.setdefault(int(r[0]), []).append(Bar(s, int(r[0]), *r[1:6]))
    return [Step(seq=i + 1, ts=ts, close_ts=ts + 300_000, bars=tuple(sorted(by_ts[ts],
                 key=lambda b: b.symbol))) for i, ts in enumerate(sorted(by_ts))]


def predictor(models=None, models_dir=None):
    tx, rx = trio.open_memory_channel(100)
    return PredictorActor(B, models or {}, rx, tx, models_dir=models_dir)


def test_predictions_are_out_of_sample_versioned_and_averaged(trained):
    models, errors = load_champions(trained["models"])
    assert not errors
    p = predictor(models)
    data_end = max(m.data_end for m in models.values())
    outs = [p.handle(s) for s in real_steps()]
    preds = [x for o in outs for x in o.predictions]
    assert preds, "no predictions at all"
    assert min(x.ts for x in preds) > data_end  # never on bars its training saw
    in_sample = [o for o in outs if o.ts <= data_end]
    assert in_sample and all(not o.predictions and not o.model_outputs for o in in_sample)
    assert all(o.samples for o in in_sample[WARMUP_BARS:])  # features/samples still recorded
    served = {f: m.version for f, m in models.items()}
    checked = 0
    for o in outs:
        if not o.predictions:
            continue
        assert {m.model: m.version for m in o.model_outputs} == served  # exact versions
        for i, ens in enumerate(o.predictions):
            assert ens.model == "ensemble"
            assert ens.version == ",".join(f"{f}={v}" for f, v in sorted(served.items()))
            assert all(m.symbols[i] == ens.symbol for m in o.model_outputs)
            w = json.loads(ens.weights)  # the weights used are recorded with the prediction
            assert set(w) == set(served) and sum(w.values()) == pytest.approx(1, abs=1e-3)
            assert ens.p_long == pytest.approx(
                sum(w[m.model] * m.p_long[i] for m in o.model_outputs), abs=1e-3)
            assert ens.p_short == pytest.approx(
                sum(w[m.model] * m.p_short[i] for m in o.model_outputs), abs=1e-3)
            assert 0 <= ens.p_long + ens.p_short <= 1
            checked += 1
    assert checked > 1000


def test_outcomes_match_training_labels(trained):
    p = predictor()
    outs = [p.handle(s) for s in real_steps(("ETHBTC",))]
    got = {(o.symbol, o.ts): o.label for out in outs for o in out.outcomes}
    a = read_ohlcv(OHLCV / "ETHBTC-5m.csv")
    lab = triple_barrier(a[:, 1], a[:, 2], a[:, 3], a[:, 4], B)[0]
    expected = {("ETHBTC", int(t)): int(y) for t, y in zip(a[:, 0], lab, strict=True)
                if y >= 0 and t >= a[WARMUP_BARS - 1, 0]}
    assert got == expected


def test_regimes_recorded_per_bar_and_globally(trained):
    p = predictor()
    outs = [p.handle(s) for s in real_steps(n=2000)]
    regimes = {s.regime for o in outs for s in o.samples}
    assert regimes <= {"trend_up", "trend_down", "range", "high_vol"} and len(regimes) >= 3
    assert all(o.global_regime for o in outs if o.samples)


def test_without_models_it_predicts_nothing_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="qtraderd.predictor"):
        p = predictor()
    assert "no models loaded: predicting nothing" in caplog.text
    outs = [p.handle(s) for s in real_steps(n=200)]
    assert not any(o.predictions for o in outs) and any(o.samples for o in outs)


def _new_version(models_dir, family, version, source, *, corrupt=False):
    """A new artifact made from version `source`'s bytes, under another version name."""
    cur = source
    meta = ModelMeta.from_json(meta_path(models_dir, family, cur).read_text())
    data = onnx_path(models_dir, family, cur).read_bytes()
    new = ModelMeta(**{**meta.__dict__, "version": version, "sha256": sha256_bytes(data)})
    write_artifact(models_dir, new, data)
    if corrupt:
        p = onnx_path(models_dir, family, version)
        p.write_bytes(p.read_bytes()[:-100])
    return version


async def _wait_until(pred, timeout=10.0):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.02)


async def test_watcher_refuses_bad_files_and_swaps_good_ones_between_steps(trained, tmp_path,
                                                                          caplog):
    models_dir = tmp_path / "models"
    shutil.copytree(trained["models"], models_dir)
    models, _ = load_champions(models_dir)
    in_tx, in_rx = trio.open_memory_channel(0)
    out_tx, out_rx = trio.open_memory_channel(100)
    p = PredictorActor(B, models, in_rx, out_tx, models_dir=models_dir)
    old = p.models.serving["lightgbm"].version
    steps = real_steps(("ETHBTC",))
    for s in steps[-(WARMUP_BARS + 20):-3]:  # warm the features up on out-of-sample bars
        p.handle(s)
    late = steps[-3:]
    with caplog.at_level(logging.INFO, logger="qtraderd.predictor"):
        async with trio.open_nursery() as n:
            n.start_soon(p.run)
            probe = models_dir / "probe.txt"
            with trio.fail_after(10):  # wait until the watcher demonstrably sees changes
                while not p.watch_events:
                    probe.write_text("x")
                    await trio.sleep(0.05)
            # a half-written file promoted to champion: refused, old model keeps serving
            _new_version(models_dir, "lightgbm", "bad-1", old, corrupt=True)
            write_champion(models_dir, "lightgbm", "bad-1")
            await _wait_until(lambda: "model rejected" in caplog.text)
            await in_tx.send(late[0])
            out = await out_rx.receive()
            assert {m.version for m in out.model_outputs if m.model == "lightgbm"} == {old}
            assert p.models.serving["lightgbm"].version == old
            # a good one: served from the next step on, never inside a step
            _new_version(models_dir, "lightgbm", "good-2", old)
            write_champion(models_dir, "lightgbm", "good-2")
            await _wait_until(lambda: p._staged is not None)
            await in_tx.send(late[1])
            out = await out_rx.receive()
            assert {m.version for m in out.model_outputs if m.model == "lightgbm"} == {"good-2"}
            assert p.swaps == 1
            await in_tx.aclose()
    assert "sha256" in caplog.text and "still serving what was loaded before" in caplog.text


def test_pointer_written_by_a_deploy_is_left_to_its_set_models(trained, tmp_path):
    """A deploy writes the pointer and sends set_models (with its shadows): the watcher must
    not load that version again from the old shadow list and stage it over the command's
    set; a later hand edit of the pointer is loaded as before."""
    models_dir = tmp_path / "models"
    shutil.copytree(trained["models"], models_dir)
    models, _ = load_champions(models_dir)
    old = models["lightgbm"].version
    p = predictor(models, models_dir)
    _new_version(models_dir, "lightgbm", "deploy-2", old)
    _new_version(models_dir, "lightgbm", "hand-3", old)
    write_champion(models_dir, "lightgbm", "deploy-2")
    p._requested = {"lightgbm": "deploy-2", "xgboost": models["xgboost"].version}
    assert p.reload_from_disk() is None  # the command's load, not the watcher's
    write_champion(models_dir, "lightgbm", "hand-3")
    new = p.reload_from_disk()
    assert new is not None and new.serving["lightgbm"].version == "hand-3"
    p.swap(new)
    write_champion(models_dir, "lightgbm", "deploy-2")  # back by hand: counts again
    again = p.reload_from_disk()
    assert again is not None and again.serving["lightgbm"].version == "deploy-2"


def test_weights_json_is_what_json_dumps_writes() -> None:
    """Predictions store the ensemble weights as JSON; the fast writer must match json."""
    import random

    from qtraderd.actors.predictor import _weights_json

    r = random.Random(3)
    families = ["xgboost", "lightgbm", "nhits", "patchtst"]
    for i in range(5000):
        w = {f: r.random() ** r.choice([1, 5, 40]) for f in r.sample(families, r.randint(1, 4))}
        if i % 5 == 0:
            w = {f: 1.0 / len(w) for f in w}
        if i % 7 == 0:  # signed zeros: equal as keys of the text table, not as text
            w = {f: (-1e-9 if i % 2 else 1e-9) for f in w}
        assert _weights_json(w) == json.dumps({f: round(v, 4) for f, v in w.items()},
                                              separators=(",", ":"))


def test_without_a_learner_steps_carry_no_scored_but_the_ensemble_learns_the_same(trained):
    """scored_wanted=False (no learner downstream) skips only the Scored messages: the
    ensemble observes every outcome and every prediction is the same to the bit."""
    models, errors = load_champions(trained["models"])
    assert not errors
    with_scored = predictor(models)
    tx, rx = trio.open_memory_channel(100)
    without = PredictorActor(B, models, rx, tx, scored_wanted=False)
    n_scored = 0
    for s in real_steps():
        a, b = with_scored.handle(s), without.handle(s)
        n_scored += len(a.scored)
        assert not b.scored
        assert a.predictions == b.predictions and a.outcomes == b.outcomes
    assert n_scored > 1000
    assert with_scored.ensemble.snapshot() == without.ensemble.snapshot()


def test_a_family_dropped_from_the_served_set_leaves_its_pending_outcomes_quietly(trained):
    """Predictions made while xgboost served settle after it is gone: they are scored for
    the record but no longer enter the ensemble's (which dropped the family)."""
    from qtraderd.models.modelset import ModelSet

    models, _ = load_champions(trained["models"])
    p = predictor(ModelSet(dict(models)))
    steps = real_steps()
    cut = len(steps) - 200
    for s in steps[:cut]:
        p.handle(s)
    p.stage(ModelSet({f: m for f, m in models.items() if f == "lightgbm"}))
    scored = [x for s in steps[cut:] for x in p.handle(s).scored]
    assert any(x.model == "xgboost" for x in scored)  # settled after the swap
    assert "xgboost" not in p.ensemble.weights("trend_up") and p.predictions > 0
