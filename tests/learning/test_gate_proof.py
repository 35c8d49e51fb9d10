"""Proof that the gate judges only what it has never seen (issue 11, part A).

A LightGBM champion trained as `qtraderd train` does (the session's `trained` fixture:
the same `train_main` the CLI runs); a second LightGBM trained on *all* the data — in
sample for the gate's evaluation window — dropped into a running daemon's models folder,
`.json` first and then `.onnx`, once with its true metadata and once claiming a
`data_end` a week before the window. Neither becomes champion or canary; `ctl models`
(the real socket of a real daemon subprocess) and `qtraderd report` say why. And a
random-walk series deploys nothing through a real retraining job
(tests/training/test_gate_random_walk.py, where the random-walk fixtures live).

Cheap on purpose: 25 shallow trees, no retraining job in the daemon (its triggers are
set out of reach): the dropped files are refused before any job is started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from qtraderd.control import client as ctl
from qtraderd.core.clock import iso
from qtraderd.models.artifacts import ModelMeta, list_versions, read_champion
from qtraderd.store.db import connect
from qtraderd.training.cli import train_main
from tests.conftest import FAST_TRAIN, REPO

DAY = 86_400_000
WEEK = 7 * DAY


def _span(state: Path) -> tuple[int, int]:
    conn = connect(state, readonly=True)
    try:
        return conn.execute("SELECT min(open_time), max(open_time) FROM bars").fetchone()
    finally:
        conn.close()


def _train_on_everything(trained: dict, root: Path) -> tuple[ModelMeta, bytes]:
    """LightGBM on all the data, trained elsewhere (its store is a copy): what an
    operator might drop in. Returns its metadata and ONNX bytes."""
    shutil.copytree(trained["state"], root / "elsewhere")
    _, last = _span(root / "elsewhere")
    out = root / "elsewhere-models"
    assert train_main(["--state-dir", str(root / "elsewhere"), "--models-dir", str(out),
                       "--config", str(trained["config"]), "--families", "lightgbm",
                       "--train-until", str(last + 300_000)]) == 0
    version = list_versions(out, "lightgbm")[0]
    meta = ModelMeta.from_json((out / "lightgbm" / f"{version}.json").read_text())
    return meta, (out / "lightgbm" / f"{version}.onnx").read_bytes()


def _drop(models: Path, meta: ModelMeta, onnx: bytes) -> None:
    """.json first, then .onnx, as a hand copy would land."""
    d = models / meta.family
    (d / f"{meta.version}.json").write_text(meta.to_json())
    time.sleep(0.2)  # the daemon runs on meanwhile: a lone .json must be ignored
    (d / f"{meta.version}.onnx").write_bytes(onnx)


def _config(root: Path, start: int, end: int) -> Path:
    cfg = root / "daemon.toml"
    cfg.write_text(FAST_TRAIN + f"""
[feed]
start = "{iso(start).replace(' ', 'T')}"
end = "{iso(end).replace(' ', 'T')}"
speed = 5000
exit_at_end = false

[learning]
families = ["xgboost", "lightgbm"]
train_window_days = 4
eval_window_days = 1
# no retraining job in this test: only the dropped files are judged
retrain_interval_hours = 87600
drift_min_features = 1000
min_outcomes = 1000000
regime_sustain_hours = 1000000

[rl]
enabled = false

[plugins]
enabled = false
""")
    return cfg


def _models(sock: Path) -> dict:
    return ctl.request(sock, "models")["result"]


def test_models_trained_on_the_window_are_refused_by_a_running_daemon(trained, tmp_path):
    root = tmp_path
    state, models = root / "state", root / "models"
    shutil.copytree(trained["state"], state)
    shutil.copytree(trained["models"], models)
    champion = read_champion(models, "lightgbm")
    everything, onnx = _train_on_everything(trained, root)
    first, _ = _span(state)
    start = first + 11 * DAY  # after the champion's training data
    # the replay runs from start - DAY; a job's window is the day before its clock, so
    # every window of this run starts after this
    window_from = start - 2 * DAY
    # true metadata: its training samples run to ~80 % of the data, past the window
    assert everything.train_end > start + 2 * DAY
    true = ModelMeta(**{**everything.__dict__, "version": "all-data-true"})
    shift = everything.data_end - (window_from - WEEK)
    lie = ModelMeta(**{**everything.__dict__, "version": "all-data-lie", **{
        k: getattr(everything, k) - shift for k in ("train_end", "data_end", "valid_start",
                                                      "valid_end")}})
    assert lie.data_end == window_from - WEEK  # claims: a week before the window

    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qtraderd", "run", "--config",
         str(_config(root, start - DAY, start + 2 * DAY)), "--state-dir", str(state),
         "--models-dir", str(models)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sock = state / "qtraderd.sock"
    try:
        deadline = time.monotonic() + 60
        steps = 0
        while steps < 20:  # replaying, and past the first learner evaluation
            assert time.monotonic() < deadline and proc.poll() is None, "daemon not up"
            if sock.exists():
                with contextlib.suppress(ctl.CtlError):
                    steps = ctl.request(sock, "status")["result"]["steps"]
            time.sleep(0.05)  # polling with a deadline
        _drop(models, true, onnx)
        _drop(models, lie, onnx)
        deadline = time.monotonic() + 60
        while True:
            rows = {r["version"]: r for r in _models(sock)["registry"]}
            if {"all-data-true", "all-data-lie"} <= set(rows):
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)  # polling with a deadline
        listed = _models(sock)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]

    served = {m["family"]: m["version"] for m in listed["served"] if m["role"] == "serving"}
    assert served["lightgbm"] == champion and read_champion(models, "lightgbm") == champion
    assert not [m for m in listed["served"] if m["role"] == "shadow"]  # no canary
    by_version = {r["version"]: r for r in listed["registry"]}
    for v in ("all-data-true", "all-data-lie"):
        assert by_version[v]["status"] == "rejected" and by_version[v]["gate"] == "refused"
    assert by_version[champion]["status"] == "champion"
    assert by_version["all-data-true"]["reason"].startswith(
        "refused: trained on the evaluation window")
    assert by_version["all-data-lie"]["reason"].startswith(
        "refused: no lineage: no job of this store produced lightgbm/all-data-lie")
    assert "gate refused: lightgbm all-data-true: trained on the evaluation window" in err
    assert "gate refused: lightgbm all-data-lie: no lineage" in err

    report = subprocess.run([sys.executable, "-m", "qtraderd", "report", "--state-dir",
                             str(state)], capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    text = report.stdout
    assert "Refused by the gate" in text
    for v, why in (("all-data-true", "refused: trained on the evaluation window"),
                   ("all-data-lie", "refused: no lineage")):
        line = next(ln for ln in text.splitlines() if v in ln)
        assert why in line, line
