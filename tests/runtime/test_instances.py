"""Many accounts on one host (issue 15 A): daemons on different state directories and
sockets never block or disturb each other, and each is reached by `ctl --instance NAME`.

Every daemon here is a real subprocess laid out as qtraderd@NAME.service lays it out: its
own state directory and $RUNTIME_DIRECTORY=<root>/NAME (where it binds its socket, as under
systemd), with <root> standing in for /run/qtraderd through $QTRADERD_RUNTIME_ROOT (the
client's override for tests and packagers).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from qtraderd.core.clock import iso
from tests.conftest import make_store
from tests.venues.replay_baseline import QUERIES, exact
from tests.venues.sim.live_helpers import LOOSE, M5, daemon_cmd, env, live_config, start_sim

HELD = "holding until stopped"  # the feed's line once its data has ended (exit_at_end off)


def instance_env(root: Path, name: str) -> dict[str, str]:
    """A daemon's environment as systemd gives instance NAME: its own runtime directory."""
    (root / name).mkdir(parents=True, exist_ok=True)
    return {**env(), "RUNTIME_DIRECTORY": str(root / name)}


def ctl_instance(root: Path, name: str, *words: str) -> subprocess.CompletedProcess:
    """`qtraderd ctl --instance NAME WORDS --json` in a subprocess, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "qtraderd", "ctl", "--instance", name,
                           *words, "--json"], capture_output=True, text=True, timeout=30,
                          env={**env(), "QTRADERD_RUNTIME_ROOT": str(root)})


async def wait_held(proc: trio.Process, log: Path, timeout_s: float = 60.0) -> None:
    """Until the daemon has replayed or traded all its bars and holds (polling its log)."""
    with trio.fail_after(timeout_s):
        while HELD not in log.read_text():
            assert proc.poll() is None, log.read_text()[-4000:]
            await trio.sleep(0.05)


async def stop(proc: trio.Process, log: Path) -> None:
    proc.terminate()
    with trio.fail_after(30):
        code = await proc.wait()
    assert code == 0, log.read_text()[-4000:]


async def run_held(cmd: list[str], env_: dict[str, str], log: Path) -> None:
    """Start a daemon, let it reach the end of its data, stop it (SIGTERM, exit 0)."""
    proc = await trio.lowlevel.open_process(cmd, env=env_, stdout=log.open("wb"),
                                            stderr=subprocess.STDOUT)
    try:
        await wait_held(proc, log)
    finally:
        await stop(proc, log)


def figures(db: Path) -> dict[str, list]:
    conn = sqlite3.connect(db)
    try:
        run = conn.execute("SELECT max(id) FROM runs").fetchone()[0]
        out = {t: [[exact(v) for v in r] for r in conn.execute(q, (run,))]
               for t, q in QUERIES.items()}
        out["first_step"] = conn.execute("SELECT min(ts) FROM samples WHERE run_id=?",
                                         (run,)).fetchone()
        return out
    finally:
        conn.close()


def replay_config(path: Path, symbols: tuple[str, ...], start: int | None = None,
                  end: int | None = None) -> Path:
    """A paper replay of `symbols` from `start` to `end` (default: all stored) that holds
    at the end of its data instead of exiting, so that it can be asked while it lasts."""
    span = "".join(f'{k} = "{iso(v)}"\n' for k, v in (("start", start), ("end", end))
                   if v is not None)
    path.write_text(f'mode = "paper"\n[feed]\nsymbols = {list(symbols)!r}\n{span}'
                    f'exit_at_end = false\n[plugins]\nenabled = false\n{LOOSE}'
                    .replace("'", '"'))
    return path


# ----------------------------------------------------------------- no blocking, fast


async def test_a_daemon_on_another_state_dir_runs_to_completion_beside_a_running_one(
        tmp_path):
    """A holds its state directory (and its lock) throughout; B, on another one, starts,
    replays to its end and exits 0 meanwhile; A still answers on its own socket after."""
    root = tmp_path / "run"
    a, b = (make_store(tmp_path / n / "state", symbols=("ETHBTC",), limit=400)
            for n in ("a", "b"))
    cfg_a = replay_config(tmp_path / "a.toml", ("ETHBTC",))
    cfg_b = tmp_path / "b.toml"  # replays its store and exits at its end
    cfg_b.write_text("[plugins]\nenabled = false\n[learning]\nenabled = false\n")
    log_a = tmp_path / "a.log"
    proc_a = await trio.lowlevel.open_process(
        daemon_cmd(cfg_a, a, tmp_path / "a" / "models", "--no-train"),
        env=instance_env(root, "a"), stdout=log_a.open("wb"), stderr=subprocess.STDOUT)
    try:
        await wait_held(proc_a, log_a)
        with trio.fail_after(60):
            done = await trio.run_process(
                daemon_cmd(cfg_b, b, tmp_path / "b" / "models", "--no-train"),
                env=instance_env(root, "b"), capture_stdout=True, capture_stderr=True,
                check=False)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert "in use by another" not in done.stderr.decode()
        st = ctl_instance(root, "a", "status")
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["pid"] == proc_a.pid
        assert json.loads(st.stdout)["state_dir"] == str(a.resolve())
        gone = ctl_instance(root, "b", "status")  # B stopped: its socket went with it
        assert gone.returncode == 3 and str(root / "b" / "qtraderd.sock") in gone.stdout
    finally:
        await stop(proc_a, log_a)


# ----------------------------------------------------------------- the proof


SYMBOLS = ("ETHBTC", "LTCBTC", "XMRBTC")  # the `trained` store's pairs
PAPER = {"acct1": ("ETHBTC", "LTCBTC"), "acct2": ("LTCBTC", "XMRBTC")}
REPLAY = ("replay1", ("ETHBTC", "XMRBTC"))
LIVE_BARS = 150
REPLAY_BARS = 288  # one day of 5m bars
SPEED = 10_000.0  # a 5m bar every 30 ms of wall time (see test_live_vs_replay)


@pytest.mark.slow
async def test_three_instances_side_by_side_trade_as_each_does_alone(trained, tmp_path):
    """One replaying, two paper-trading on one exchange-sim, all at once, each with its own
    state dir and socket; each ends with the trades it has alone, and each answers
    `ctl --instance NAME status` with its own pid, state directory and feed."""
    root = tmp_path / "run"
    data_end = max(json.loads(p.read_text())["data_end"]
                   for p in trained["models"].glob("*/*.json"))
    conn = sqlite3.connect(trained["state"] / "qtraderd.db")
    times = [t for (t,) in conn.execute("SELECT DISTINCT open_time FROM bars WHERE "
                                        "interval='5m' AND open_time>? ORDER BY open_time",
                                        (data_end + 500 * M5,))]
    conn.close()
    start, end = times[0], times[LIVE_BARS]  # out of sample, 500+ bars of history before

    def instance(name: str) -> tuple[Path, Path]:
        """A fresh copy of the trained store and models: nothing writable is shared."""
        state, models = tmp_path / name / "state", tmp_path / name / "models"
        shutil.copytree(trained["state"], state)
        shutil.copytree(trained["models"], models)
        return state, models

    # The replay instance alone first: the reference it must match beside the others.
    rname, rsyms = REPLAY
    rcfg = replay_config(tmp_path / f"{rname}.toml", rsyms, times[0] - REPLAY_BARS * M5,
                         times[0])
    alone_state, alone_models = instance("alone")
    await run_held(daemon_cmd(rcfg, alone_state, alone_models), env(), tmp_path / "alone.log")
    want_replay = figures(alone_state / "qtraderd.db")

    source = tmp_path / "source"  # what the simulator serves
    shutil.copytree(trained["state"], source)
    sim, url, _ = await start_sim(
        ["--state-dir", str(source), "--symbols", ",".join(SYMBOLS), "--start", iso(start),
         "--end", iso(end + M5), "--speed", str(SPEED), "--hold", "--linger", "60"], tmp_path)
    cmds: dict[str, list[str]] = {}
    dirs: dict[str, Path] = {}
    for name, syms in PAPER.items():
        cfg = live_config(tmp_path / f"{name}.toml", url, syms, speed=SPEED, end=iso(end),
                          exchange="warmup_days = 3\nclose_deadline_s = 5.0",
                          extra=LOOSE)
        cfg.write_text(cfg.read_text().replace("[feed]\n", "[feed]\nexit_at_end = false\n"))
        dirs[name], models = instance(name)
        cmds[name] = daemon_cmd(cfg, dirs[name], models)
    dirs[rname], models = instance(rname)
    cmds[rname] = daemon_cmd(rcfg, dirs[rname], models)

    t0 = time.monotonic()
    procs: dict[str, tuple[trio.Process, Path]] = {}
    try:
        for name, cmd in cmds.items():
            log = tmp_path / f"{name}.log"
            procs[name] = (await trio.lowlevel.open_process(
                cmd, env=instance_env(root, name), stdout=log.open("wb"),
                stderr=subprocess.STDOUT, cwd=tmp_path), log)
        for proc, log in procs.values():
            await wait_held(proc, log, timeout_s=90)
        side_by_side_s = time.monotonic() - t0
        for name, (proc, _) in procs.items():
            out = ctl_instance(root, name, "status")
            assert out.returncode == 0, out.stdout + out.stderr
            st = json.loads(out.stdout)
            assert (st["pid"], st["state_dir"]) == (proc.pid, str(dirs[name].resolve()))
            assert st["source"] == ("replay" if name == rname else "binance")
            assert st["steps"] > 0
        # `qtraderd verify --instance NAME` finds the same daemon (and, through it, its store)
        out = subprocess.run([sys.executable, "-m", "qtraderd", "verify", "--instance", "acct2",
                              "--json", "--wait", "0"], capture_output=True, text=True,
                             timeout=60, env={**env(), "QTRADERD_RUNTIME_ROOT": str(root)},
                             cwd=tmp_path)
        rows = {c["check"]: c for c in json.loads(out.stdout)["checks"]}
        assert rows["daemon"]["result"] == "pass", rows["daemon"]
        assert str(dirs["acct2"]) in rows["store"]["detail"], rows["store"]
    finally:
        for proc, _ in procs.values():  # SIGTERM: a graceful stop, exit 0 (checked below)
            proc.terminate()
        with trio.fail_after(30):
            for proc, _ in procs.values():
                await proc.wait()
        sim.terminate()
        with trio.fail_after(15):
            await sim.wait()
    for proc, log in procs.values():
        assert proc.returncode == 0, log.read_text()[-4000:]

    got = {name: figures(d / "qtraderd.db") for name, d in dirs.items()}
    assert got[rname] == want_replay
    assert len(want_replay["trades"]) >= 1  # the replay traded

    # Each paper instance against a replay of the bars it traded live (its first live step
    # to the end), as test_live_vs_replay proves for one daemon alone; the two references
    # are replays, which nothing else running can change, so they run at once.
    async with trio.open_nursery() as nursery:
        for name, syms in PAPER.items():
            first = got[name]["first_step"][0]
            assert first is not None and first <= end - 30 * M5, (name, first)
            ref_state, ref_models = instance(f"{name}-ref")
            cfg = replay_config(tmp_path / f"{name}-ref.toml", syms, first, end)
            nursery.start_soon(run_held, daemon_cmd(cfg, ref_state, ref_models), env(),
                               tmp_path / f"{name}-ref.log")
    for name in PAPER:
        want = figures(tmp_path / f"{name}-ref" / "state" / "qtraderd.db")
        for table in QUERIES:
            assert got[name][table] == want[table], (name, table)
        assert len(got[name]["fills"]) >= 2, name  # it traded
    print(f"side by side: {side_by_side_s:.1f} s; trades " + ", ".join(
        f"{n} {len(g['trades'])} (first step {iso(g['first_step'][0])})"
        for n, g in got.items()))
