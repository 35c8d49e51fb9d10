"""A run that starts mid-data warms up on the stored bars before its first step
(Step.history): it predicts from that step on, with exactly the features and regimes of a
replay that had passed through those bars."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

import trio

from qtraderd.core.clock import iso
from qtraderd.features.spec import HISTORY_BARS, WARMUP_BARS

STEP_MS = 300_000


def _run(state: Path, models: Path, start: str, end: str) -> dict[tuple[str, int], tuple]:
    from qtraderd.core.config import load, with_changes
    from qtraderd.runtime.daemon import Daemon

    cfg = with_changes(load(env={}), feed={"start": start, "end": end},
                       learning={"enabled": False}, rl={"enabled": False},
                       plugins={"enabled": False})
    sock_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="qt"))
    try:
        d = Daemon(cfg, state, models, socket_path=sock_dir / "s.sock", progress_every_s=0)
        assert trio.run(d.run) == 0
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    conn = sqlite3.connect(state / "qtraderd.db")
    try:
        rows = conn.execute("SELECT symbol, ts, features, regime FROM samples WHERE run_id=?",
                            (d.run_id,)).fetchall()
    finally:
        conn.close()
    return {(s, ts): (f, r) for s, ts, f, r in rows}


def test_a_mid_data_start_predicts_from_its_first_step_as_a_replay_through_it_would(
        trained, tmp_path):
    src = trained["state"]
    conn = sqlite3.connect(src / "qtraderd.db")
    try:
        times = [t for (t,) in conn.execute(
            "SELECT DISTINCT open_time FROM bars WHERE interval='5m' ORDER BY open_time")]
        symbols = {s for (s,) in conn.execute(
            "SELECT DISTINCT symbol FROM bars WHERE interval='5m'")}
    finally:
        conn.close()
    t0 = times[HISTORY_BARS + 300]
    end = iso(t0 + 120 * STEP_MS)
    models = tmp_path / "models"  # no models: samples (features, regimes) are what we need
    models.mkdir()

    mid = tmp_path / "mid"
    shutil.copytree(src, mid)
    started_mid = _run(mid, models, iso(t0), end)

    # the same bars, but the store begins HISTORY_BARS bars before t0: a replay from its
    # first bar steps through exactly the bars the mid-data run warmed up on
    short = tmp_path / "short"
    shutil.copytree(src, short)
    conn = sqlite3.connect(short / "qtraderd.db")
    with conn:
        conn.execute("DELETE FROM bars WHERE interval='5m' AND open_time<?",
                     (t0 - HISTORY_BARS * STEP_MS,))
    conn.close()
    stepped = _run(short, models, "", end)

    first = {k: v for k, v in started_mid.items() if k[1] == t0}
    assert {s for s, _ in first} == symbols  # predicted from the first step, not after
    assert HISTORY_BARS > WARMUP_BARS        # the warm-up the features alone would need
    later = {k: v for k, v in stepped.items() if k[1] >= t0}
    assert started_mid == later  # same feature rows (bit for bit) and regimes
    assert len(later) >= 100 * len(symbols)
