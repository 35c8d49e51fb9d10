"""Recorder + store writer process: batched, acknowledged, never lost, never duplicated."""

from __future__ import annotations

import json
import sqlite3

import trio

from qtraderd.actors.recorder import RecorderActor
from qtraderd.core.messages import (
    AccountView,
    ActorState,
    Bar,
    Outcome,
    Prediction,
    Record,
    Sample,
    Step,
)
from qtraderd.store.db import connect
from qtraderd.store.rows import Batch, write_batch

FEATS = tuple(float(i) for i in range(17))


def make_step(seq: int) -> Step:
    ts = 1_500_000_000_000 + seq * 300_000
    outcomes = (Outcome("ETHBTC", ts - 300_000, 1, ts, 0.016, -0.008),) if seq > 1 else ()
    return Step(
        seq=seq, ts=ts, close_ts=ts + 300_000,
        bars=(Bar("ETHBTC", ts, 1.0, 1.1, 0.9, 1.0, 5.0),),
        samples=(Sample("ETHBTC", ts, FEATS, "range"),),
        predictions=(Prediction("ETHBTC", ts, "ensemble", "x=v1", 0.2, 0.3),),
        outcomes=outcomes,
        accounts=(AccountView("BTC", 1.0, 1.0, 0.0, 0.0, 0),),
        risk_state="ACTIVE", checkpoint=seq % 10 == 0,
        state=(ActorState("x", b"state at %d" % seq),) if seq % 10 == 0 else ())


def new_run(state) -> int:
    conn = connect(state)
    cur = conn.execute("INSERT INTO runs (started_at, mode, source, seed, config, symbols, "
                       "interval, status) VALUES ('t','paper','replay',1,'{}','[]','5m','r')")
    conn.close()
    return int(cur.lastrowid)


def counts(state, run_id):
    conn = sqlite3.connect(state / "qtraderd.db")
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t} WHERE run_id=?", (run_id,))
                .fetchone()[0] for t in ("samples", "predictions", "equity", "actor_events")}, \
            conn.execute("SELECT count(*) FROM samples WHERE run_id=? AND label IS NOT NULL",
                         (run_id,)).fetchone()[0]
    finally:
        conn.close()


def recorder(state, run_id, flush_rows=50):
    steps_tx, steps_rx = trio.open_memory_channel(8)
    rec_tx, rec_rx = trio.open_memory_channel(8)
    rec = RecorderActor(state, run_id, steps_rx, rec_rx, flush_rows=flush_rows, flush_ms=50)
    return rec, steps_tx, rec_tx


async def test_every_step_is_written_once_in_batches(tmp_path):
    run_id = new_run(tmp_path)
    rec, steps, records = recorder(tmp_path, run_id)
    async with trio.open_nursery() as n:
        n.start_soon(rec.run)
        for i in range(1, 301, 10):
            await steps.send([make_step(j) for j in range(i, i + 10)])
        await records.send(Record("actor_events", {"at": "t", "actor": "x", "event": "e",
                                                   "detail": ""}))
        await steps.aclose()
    c, labelled = counts(tmp_path, run_id)
    assert c == {"samples": 300, "predictions": 300, "equity": 300, "actor_events": 1}
    assert labelled == 299  # every outcome landed on its sample
    assert 3 <= rec.batches_acked < 300 and rec.steps_written == 300
    conn = sqlite3.connect(tmp_path / "qtraderd.db")
    bars, last_batch = conn.execute("SELECT bars, last_batch FROM runs WHERE id=?",
                                    (run_id,)).fetchone()
    assert bars == 300 and last_batch == rec.batches_acked


async def test_a_killed_writer_is_replaced_and_nothing_is_lost_or_doubled(tmp_path):
    run_id = new_run(tmp_path)
    rec, steps, _records = recorder(tmp_path, run_id, flush_rows=20)
    restarts = 0

    async def supervised():
        nonlocal restarts
        while True:
            try:
                await rec.run()
                return
            except Exception:
                restarts += 1

    async with trio.open_nursery() as n:
        n.start_soon(supervised)
        for i in range(1, 101):
            await steps.send([make_step(i)])
            if i == 50:
                with trio.fail_after(10):
                    while rec.batches_acked < 2:
                        await trio.sleep(0.01)
                rec._proc.kill()
        await steps.aclose()
    c, _ = counts(tmp_path, run_id)
    assert restarts >= 1 and rec.writer_starts >= 2
    assert c["samples"] == 100 and c["predictions"] == 100 and c["equity"] == 100


async def test_hard_cancel_writes_pending_steps_synchronously(tmp_path):
    run_id = new_run(tmp_path)
    rec, steps, _records = recorder(tmp_path, run_id, flush_rows=10_000)
    rec.flush_s = 3600  # nothing would be flushed on its own
    async with trio.open_nursery() as n:
        n.start_soon(rec.run)
        for i in range(1, 41):
            await steps.send([make_step(i)])
        with trio.fail_after(10):
            while rec.processed < 40:
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    c, _ = counts(tmp_path, run_id)
    assert c["samples"] == 40


def test_resent_batches_are_skipped(tmp_path):
    run_id = new_run(tmp_path)
    conn = connect(tmp_path)
    batch = Batch(1, [make_step(1), make_step(2)], [])
    assert write_batch(conn, run_id, batch) > 0
    assert write_batch(conn, run_id, batch) == 0  # the same id again: already committed
    assert write_batch(conn, run_id, Batch(2, [make_step(3)], [])) > 0
    assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] == 3


def test_writer_process_reports_unknown_runs(tmp_path):
    import subprocess
    import sys

    connect(tmp_path).close()
    out = subprocess.run([sys.executable, "-m", "qtraderd.store.writer", str(tmp_path), "99"],
                         capture_output=True, text=True, input="")
    assert out.returncode == 1 and "run 99 is not in the store" in out.stdout


def test_feature_blob_is_float32():
    import numpy as np

    from qtraderd.store.rows import pack_features

    assert np.frombuffer(pack_features(FEATS), dtype=np.float32).tolist() == list(FEATS)
    assert json.dumps(list(FEATS))


async def test_batches_end_at_checkpoints_with_the_state_of_that_step(tmp_path):
    """Rows after the last checkpoint step are never written: a restart redoes them from
    the state stored with that checkpoint, so nothing is doubled or half-recorded."""
    run_id = new_run(tmp_path)
    rec, steps, _records = recorder(tmp_path, run_id, flush_rows=1)
    async with trio.open_nursery() as n:
        n.start_soon(rec.run)
        await steps.send([make_step(j) for j in range(1, 26)])  # checkpoints at 10 and 20
        await steps.aclose()
    c, _ = counts(tmp_path, run_id)
    assert c["samples"] == 20 and c["equity"] == 20
    conn = sqlite3.connect(tmp_path / "qtraderd.db")
    assert conn.execute("SELECT resume_seq, resume_ts, bars FROM runs WHERE id=?",
                        (run_id,)).fetchone() == (20, make_step(20).ts, 20)
    assert conn.execute("SELECT actor, seq, state FROM checkpoints WHERE run_id=?",
                        (run_id,)).fetchall() == [("x", 20, b"state at 20")]
    conn.close()
