"""Dry run vs replay: the same candles through a replay and through the simulator (faults
off; both real subprocesses for the live side) give the same predictions and the same
paper trades, bit for bit — the live feed changes where bars come from, nothing else."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import trio

from qtraderd.core.clock import iso
from tests.venues.replay_baseline import QUERIES, exact
from tests.venues.sim.live_helpers import M5, daemon_cmd, env, live_config, start_sim

SYMBOLS = ("ETHBTC", "LTCBTC", "XMRBTC")  # the `trained` store's pairs
LIVE_BARS = 150
SPEED = 10_000.0  # a 5m bar every 30 ms of wall time: paper fills come from the bars,
# not the simulator, and a bar is late only 5 s after its close, so speed changes no figure
# Tiny test models rarely clear the costs: loosen the entry rule so both runs trade.
SIZING = "[sizing]\nmin_edge_pct = -0.5\nmin_confidence = 0.25\n[learning]\nenabled = false\n"


def _figures(db: Path) -> dict[str, list]:
    conn = sqlite3.connect(db)
    try:
        run = conn.execute("SELECT max(id) FROM runs").fetchone()[0]
        out = {t: [[exact(v) for v in r] for r in conn.execute(q, (run,))]
               for t, q in QUERIES.items()}
        out["predictions"] = [[exact(v) for v in r] for r in conn.execute(
            "SELECT symbol, ts, model, version, p_long, p_short FROM predictions "
            "WHERE run_id=? ORDER BY ts, symbol, model", (run,))]
        out["samples"] = [list(r) for r in conn.execute(
            "SELECT symbol, ts, features, regime FROM samples WHERE run_id=? "
            "ORDER BY ts, symbol", (run,))]
        return out
    finally:
        conn.close()


@pytest.mark.slow
async def test_a_dry_run_on_the_simulator_trades_exactly_as_the_replay(trained, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained["models"], models)
    data_end = max(json.loads(p.read_text())["data_end"]
                   for p in models.glob("*/*.json"))
    conn = sqlite3.connect(trained["state"] / "qtraderd.db")
    times = [t for (t,) in conn.execute("SELECT DISTINCT open_time FROM bars WHERE "
                                        "interval='5m' AND open_time>? ORDER BY open_time",
                                        (data_end + 500 * M5,))]
    conn.close()
    start, end = times[0], times[LIVE_BARS]  # out of sample, 500+ bars of history before

    source = tmp_path / "source"  # what the simulator serves
    shutil.copytree(trained["state"], source)
    sim, url, _ = await start_sim(["--state-dir", str(source), "--symbols", ",".join(SYMBOLS),
                                   "--start", iso(start), "--end", iso(end + M5),
                                   "--speed", str(SPEED), "--hold", "--linger", "60"],
                                  tmp_path)
    live = tmp_path / "live"
    shutil.copytree(trained["state"], live)
    cfg = live_config(tmp_path / "live.toml", url, SYMBOLS, speed=SPEED, end=iso(end),
                      exchange="warmup_days = 3\nclose_deadline_s = 5.0", extra=SIZING)
    log = tmp_path / "daemon.log"
    try:
        with trio.fail_after(90):
            done = await trio.run_process(daemon_cmd(cfg, live, models), env=env(),
                                          stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                          check=False, cwd=tmp_path)
    finally:
        sim.terminate()
        with trio.fail_after(15):
            await sim.wait()
    out = log.read_text()
    assert done.returncode == 0, out[-4000:]
    assert "bar late" not in out, out[-4000:]
    got = _figures(live / "qtraderd.db")
    # the first live step: the first bar whose close deadline (5 s of wall time, at this
    # speed 166 bars) had not passed when the feed started; bars before it were history
    first = got["samples"][0][1]
    assert first < end - 100 * M5, (start, first)

    replayed = tmp_path / "replayed"
    shutil.copytree(trained["state"], replayed)
    rcfg = tmp_path / "replay.toml"
    rcfg.write_text(f'mode = "paper"\n[feed]\nsymbols = {list(SYMBOLS)!r}\n'
                    f'start = "{iso(first)}"\nend = "{iso(end)}"\n[plugins]\n'
                    f'enabled = false\n{SIZING}'.replace("'", '"'))
    with trio.fail_after(90):
        done = await trio.run_process(daemon_cmd(rcfg, replayed, models), env=env(),
                                      capture_stdout=True, capture_stderr=True, check=False,
                                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    want = _figures(replayed / "qtraderd.db")

    assert len(got["predictions"]) >= 2 * 100 * len(SYMBOLS)  # both models, every bar
    assert got["samples"] == want["samples"]
    assert got["predictions"] == want["predictions"]
    assert len(got["fills"]) >= 2 and len(got["orders"]) >= 2  # it traded
    for table in QUERIES:
        assert got[table] == want[table], table
