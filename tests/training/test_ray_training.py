"""Training on a Ray cluster (`learning.executor = "ray"`) against a real local head.

`python -m qtraderd.training train` runs as a real subprocess (the Ray driver) against the
module's head (tests/ray_head.py): the same models as a local run (same bytes), where
they were trained recorded in the metadata, artifacts that load and pass the parity
probe; an unreachable cluster falls back (local) or skips, with one log line; a worker
killed mid-task is retried and the job completes; a task past the timeout is cancelled
on the cluster (its worker process ends).

The fault drivers wrap `fit.train_task` in the driver process (a wrapper defined in the
driver's __main__, shipped to the worker by value): the production code path is otherwise
unchanged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qtraderd.models.artifacts import read_artifact
from qtraderd.models.onnx_model import load_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TREES = ("xgboost", "lightgbm")

DRIVER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from qtraderd.training import cli, fit

    mode, marker = sys.argv[1], Path(sys.argv[2])
    real = fit.train_task

    def crash_once(family, shared):  # the first attempt's worker dies mid-task
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return real(family, shared)

    def hang(family, shared):  # runs past any timeout; its pid tells the test where
        marker.write_text(str(os.getpid()))
        time.sleep(300)

    fit.train_task = {"crash": crash_once, "hang": hang}[mode]
    sys.exit(cli.train_main(sys.argv[3:]))
""")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, name: str, learning: str, train: str = "") -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(f"[train]\nn_estimators = 30\n{train}\n[learning]\n{learning}\n",
                    encoding="utf-8")
    return path


def _train(state: Path, models: Path, config: Path, families: str = ",".join(TREES),
           driver: tuple[str, Path] | None = None) -> tuple[int, dict[str, Any], str, float]:
    args = ["--state-dir", str(state), "--models-dir", str(models), "--config", str(config),
            "--families", families]
    cmd = ([sys.executable, "-c", DRIVER, driver[0], str(driver[1]), *args] if driver
           else [sys.executable, "-m", "qtraderd.training", "train", *args])
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    seconds = time.monotonic() - t0
    lines = done.stdout.strip().splitlines()
    return done.returncode, (json.loads(lines[-1]) if lines else {}), done.stderr, seconds


@pytest.fixture
def state(make_store: Callable[..., Path], real_rows: dict) -> Path:
    return make_store(real_rows)


def test_ray_trains_the_same_models_as_local(ray_head: str, state: Path,
                                             tmp_path: Path) -> None:
    # The local reference run is also the fallback: its cluster does not answer.
    dead = f"127.0.0.1:{_closed_port()}"
    code, local, err, local_s = _train(state, tmp_path / "m-local", _config(
        tmp_path, "fallback", f'executor = "ray"\nray_address = "{dead}"'))
    assert code == 0, err[-3000:]
    fallback = [ln for ln in err.splitlines() if "ray unreachable" in ln]
    assert len(fallback) == 1 and dead in fallback[0] and "falling back to local" in fallback[0]

    code, remote, err, ray_s = _train(state, tmp_path / "m-ray", _config(
        tmp_path, "ray", f'executor = "ray"\nray_address = "{ray_head}"\n'
                         'ray_cpus = {xgboost = 1, lightgbm = 1}'))
    assert code == 0, err[-3000:]
    assert "ray unreachable" not in err
    print(f"\ntrees, 3 pairs: local {local_s:.1f} s, ray {ray_s:.1f} s (process wall time)")
    by_l = {m["family"]: m for m in local["models"]}
    by_r = {m["family"]: m for m in remote["models"]}
    assert set(by_l) == set(by_r) == set(TREES)
    for fam in TREES:
        l_, r_ = by_l[fam], by_r[fam]
        assert l_["trained_on"] == "local" and r_["trained_on"] == f"ray:{ray_head}"
        assert r_["sha256"] == l_["sha256"], f"{fam}: ONNX bytes differ local vs ray"
        assert r_["metrics"] == l_["metrics"]
        meta, blob = read_artifact(tmp_path / "m-ray", fam, r_["version"])
        assert meta.trained_on == f"ray:{ray_head}" and len(blob) > 0
        # loads as the daemon loads it: the probe rows re-checked through onnxruntime
        assert load_model(tmp_path / "m-ray", fam, r_["version"]).meta.sha256 == r_["sha256"]


def test_unreachable_cluster_with_fallback_skip_trains_nothing(state: Path,
                                                               tmp_path: Path) -> None:
    dead = f"127.0.0.1:{_closed_port()}"
    code, out, err, _ = _train(state, tmp_path / "m", _config(
        tmp_path, "skip", f'executor = "ray"\nray_address = "{dead}"\nfallback = "skip"'),
        families="xgboost")
    assert code == 1 and not out["ok"] and "ray unreachable" in out["error"]
    lines = [ln for ln in err.splitlines() if "ray unreachable" in ln]
    assert any("skipping" in ln and dead in ln for ln in lines), err[-2000:]
    assert not (tmp_path / "m" / "xgboost").exists()


def test_a_worker_killed_mid_task_is_retried_and_the_job_completes(
        ray_head: str, state: Path, tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"
    code, out, err, _ = _train(state, tmp_path / "m", _config(
        tmp_path, "crash", f'executor = "ray"\nray_address = "{ray_head}"\n'
                           'ray_max_retries = 2'), families="xgboost",
        driver=("crash", marker))
    assert code == 0, err[-3000:]
    assert marker.exists(), "the first attempt never ran"
    (model,) = out["models"]
    assert model["trained_on"] == f"ray:{ray_head}" and model["family"] == "xgboost"


def test_a_task_past_the_timeout_is_cancelled_on_the_cluster(
        ray_head: str, state: Path, tmp_path: Path) -> None:
    marker = tmp_path / "hung"
    code, out, err, seconds = _train(state, tmp_path / "m", _config(
        tmp_path, "hang", f'executor = "ray"\nray_address = "{ray_head}"',
        # a budget that leaves the task ~6 s after the job's own start-up (the task's
        # timeout is 90 % of what is left, less 5 s): time for a worker to start and the
        # task to begin on a loaded machine, so the cancellation meets a running task
        train="timeout_s = 15"), families="xgboost", driver=("hang", marker))
    assert code == 1 and "cancelled on the cluster" in out["error"], err[-3000:]
    assert seconds < 60
    pid = int(marker.read_text())
    deadline = time.monotonic() + 20
    while _alive(pid):  # the worker running the task is ended, not left to sleep
        assert time.monotonic() < deadline, f"worker {pid} still running the cancelled task"
        time.sleep(0.1)  # polling with a deadline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_a_learner_job_trains_on_the_cluster_and_is_gated_locally(
        ray_head: str, state: Path, tmp_path: Path, real_rows: dict) -> None:
    """The daemon's job (`python -m qtraderd.training job`): trained on Ray, written,
    parity-checked and scored by the gate here, its metadata naming the cluster."""
    now = max(r[2] for rows in real_rows.values() for r in rows)
    config = _config(tmp_path, "job", f'executor = "ray"\nray_address = "{ray_head}"')
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "qtraderd.training", "job", "--family", "lightgbm",
         "--state-dir", str(state), "--models-dir", str(tmp_path / "m"), "--now", str(now),
         "--config", str(config)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["gate"]["challenger"] is not None
    meta, _ = read_artifact(tmp_path / "m", "lightgbm", out["version"])
    assert meta.trained_on == f"ray:{ray_head}"
    assert out["lineage"]["sha256"] == meta.sha256
