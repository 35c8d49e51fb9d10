"""`qtraderd walkforward --executor ray` gives the local walk-forward's report.

The smallest walk-forward that still retrains (1 real pair, 4 days of history + a 1-day gate
window, 1 test day, daily retrains) runs twice as real subprocesses: locally (the arms one
after the other in process) and with its two daemon arms as tasks on a real local Ray head.
Everything the report computes must match; only the model version names (stamped with the
wall-clock time of training) and wall times may differ.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, make_store

pytestmark = pytest.mark.slow

SMALL = """
[train]
n_estimators = 25
max_depth = 3

[learning]
families = ["xgboost", "lightgbm"]
eval_window_days = 1
min_retrain_gap_hours = 24

[sizing]
min_edge_pct = -0.5
min_confidence = 0.25
"""
ARGS = ["--train-days", "4", "--test-days", "1", "--retrain-hours", "24", "--symbols",
        "ETHBTC", "--seed", "7"]
VERSION = re.compile(r"\d{8}T\d{6}Z-")  # a version's wall-clock stamp; its hash stays


def walkforward(root: Path, out: str, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "qtraderd", "walkforward", "--config", str(root / "small.toml"),
         "--state-dir", str(root / "state"), "--out", str(root / out), *ARGS, *extra],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rep = json.loads((root / out / "walkforward.json").read_text())
    rep["stderr"] = done.stderr
    return rep


def comparable(rep: dict) -> dict:
    keep = {k: v for k, v in rep.items() if k not in ("wall_s", "stderr", "settings")}
    text = VERSION.sub("V-", json.dumps(keep, sort_keys=True))
    return json.loads(re.sub(r'"wall_s": [0-9.e+-]+', '"wall_s": 0', text))


def test_ray_arms_give_the_local_report(tmp_path: Path, ray_head: str) -> None:
    (tmp_path / "small.toml").write_text(SMALL)
    make_store(tmp_path / "state", symbols=("ETHBTC",))
    local = walkforward(tmp_path, "local")
    remote = walkforward(tmp_path, "ray", "--executor", "ray", "--ray-address", ray_head)
    assert f"as tasks on ray:{ray_head}" in remote["stderr"]
    assert "arm 'continuous learning' finished on" in remote["stderr"]
    assert remote["jobs"], "the continuous arm retrained on the cluster"
    assert comparable(remote) == comparable(local)
    assert remote["arms"]["continuous"]["trades"] > 0
