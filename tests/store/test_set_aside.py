"""A row the store cannot hold is set aside in `rejected_rows`, never resent for ever: the
rest of its batch commits, nothing else is lost (issue 11, B1). Real SQLite files, the
real writer process, the real recorder and a real daemon."""

from __future__ import annotations

import logging
import math
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import pytest
import trio

from qtraderd.core.config import load, with_changes
from qtraderd.core.messages import Record
from qtraderd.runtime.daemon import Daemon
from qtraderd.store.db import connect
from qtraderd.store.rows import MAX_REPR, Batch, SetAside, is_row_error, write_batch
from qtraderd.store.writer import frame
from tests.actors.test_recorder import make_step, new_run, recorder
from tests.conftest import REPO, make_store

GOOD_EVENT = {"at": "t", "actor": "x", "event": "e", "detail": ""}


def bad_records() -> list[Record]:
    return [
        Record("risk_events", {"ts": 1, "state": "HALTED", "prev_state": "ACTIVE",
                               "reason": "MANUAL", "detail": {"a": [1, 2]}, "symbol": ""}),
        Record("actor_events", {**GOOD_EVENT, "restarts": 2**70}),  # too big for SQLite
        Record("no_such_table", {"x": 1}),
        Record("risk_events", {"ts": 1}),  # NOT NULL columns missing
    ]


def rows(db: Path, sql: str, *args: object) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_bad_rows_are_set_aside_and_the_rest_of_the_batch_commits(tmp_path, caplog):
    run_id = new_run(tmp_path)
    steps = [make_step(i) for i in range(1, 11)]  # step 10 is a checkpoint
    nan_equity = msgspec.structs.replace(steps[4].accounts[0], equity=math.nan)
    steps[4] = msgspec.structs.replace(steps[4], accounts=(nan_equity,))
    batch = Batch(1, steps, [Record("actor_events", GOOD_EVENT), *bad_records()])
    conn = connect(tmp_path)
    aside: list[SetAside] = []
    with caplog.at_level(logging.WARNING, logger="qtraderd.store"):
        assert write_batch(conn, run_id, batch, aside) > 0
        assert write_batch(conn, run_id, batch, aside) == 0  # a resend: already committed
    conn.close()
    db = tmp_path / "qtraderd.db"
    tables = [r[0] for r in rows(db, "SELECT tbl FROM rejected_rows WHERE run_id=? ORDER BY id",
                                 run_id)]
    assert sorted(tables) == ["actor_events", "equity", "no_such_table", "risk_events",
                              "risk_events"]
    assert [a.table for a in aside] == tables  # what the caller is told, once
    errors = dict(rows(db, "SELECT tbl, error FROM rejected_rows WHERE tbl != 'risk_events'"))
    assert "no such table: no_such_table" in errors["no_such_table"]
    reprs = [r[0] for r in rows(db, "SELECT row FROM rejected_rows WHERE tbl='risk_events'")]
    assert any("{'a': [1, 2]}" in r for r in reprs)
    # everything else is there: ten steps' samples, nine equity rows, the good event,
    # the checkpoint and the batch id
    assert rows(db, "SELECT count(*) FROM samples")[0][0] == 10
    assert rows(db, "SELECT count(*) FROM equity")[0][0] == 9
    assert rows(db, "SELECT count(*) FROM actor_events")[0][0] == 1
    assert rows(db, "SELECT count(*) FROM risk_events")[0][0] == 0
    assert rows(db, "SELECT count(*) FROM checkpoints")[0][0] == 1
    assert rows(db, "SELECT last_batch, bars FROM runs WHERE id=?", run_id)[0] == (1, 10)
    logged = [r.getMessage() for r in caplog.records if "row set aside" in r.getMessage()]
    assert len(logged) == 5  # once each, not again for the resend
    assert any(m.startswith("row set aside: no_such_table: OperationalError: no such table")
               for m in logged)


def test_a_huge_row_is_kept_as_a_bounded_repr(tmp_path):
    run_id = new_run(tmp_path)
    conn = connect(tmp_path)
    write_batch(conn, run_id, Batch(1, [], [Record("no_such_table", {"x": "y" * 10**6})]))
    conn.close()
    (text,) = rows(tmp_path / "qtraderd.db", "SELECT row FROM rejected_rows")[0]
    assert MAX_REPR < len(text) < MAX_REPR + 100 and text.endswith(" characters)")


def test_errors_of_the_database_itself_fail_the_batch_and_set_nothing_aside(tmp_path):
    run_id = new_run(tmp_path)
    blocker = sqlite3.connect(tmp_path / "qtraderd.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    conn = connect(tmp_path, timeout_s=0.05)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked") as caught:
            write_batch(conn, run_id, Batch(1, [make_step(1)], bad_records()))
        assert not is_row_error(caught.value)
        blocker.execute("ROLLBACK")
        assert write_batch(conn, run_id, Batch(1, [make_step(1)], bad_records())) > 0
    finally:
        conn.close()
        blocker.close()
    assert rows(tmp_path / "qtraderd.db", "SELECT count(*) FROM rejected_rows")[0][0] == 4


def test_the_writer_process_sets_aside_what_it_cannot_decode_or_store(tmp_path):
    run_id = new_run(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "qtraderd.store.writer", str(tmp_path),
                             str(run_id)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ready 0\n"
        enc = msgspec.msgpack.Encoder()
        proc.stdin.write(frame(enc.encode(Batch(1, [make_step(1)], bad_records()[:1]))))
        # a step that is not a Step (its seq a string): only it is set aside
        raw = msgspec.to_builtins(Batch(2, [make_step(2), make_step(3)], []))
        raw[1][1][0] = "three"
        proc.stdin.write(frame(enc.encode(raw)))
        proc.stdin.flush()
        assert proc.stdout.readline() == b"ok 1 1\n"
        assert proc.stdout.readline() == b"ok 2 1\n"
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "row set aside: risk_events: ProgrammingError: Error binding parameter" in err
    assert "row set aside: steps: ValidationError" in err
    db = tmp_path / "qtraderd.db"
    assert rows(db, "SELECT count(*) FROM samples")[0][0] == 2  # steps 1 and 2
    assert sorted(r[0] for r in rows(db, "SELECT tbl FROM rejected_rows")) == [
        "risk_events", "steps"]


async def test_the_recorder_sets_aside_what_msgpack_cannot_carry(tmp_path, caplog):
    run_id = new_run(tmp_path)
    rec, steps, records = recorder(tmp_path, run_id)
    async with trio.open_nursery() as n:
        n.start_soon(rec.run)  # not supervised: a failure would fail the test
        await records.send(Record("actor_events", {**GOOD_EVENT, "detail": object()}))
        await records.send(Record("actor_events", {**GOOD_EVENT, "restarts": 2**65}))
        await records.send(Record("actor_events", GOOD_EVENT))
        await steps.send([make_step(i) for i in range(1, 11)])
        await steps.aclose()
    db = tmp_path / "qtraderd.db"
    assert rec.rows_set_aside == 2 and rec.status()["rows_set_aside"] == 2
    assert rows(db, "SELECT count(*) FROM actor_events")[0][0] == 1
    assert rows(db, "SELECT count(*) FROM samples")[0][0] == 10
    errors = [r[0] for r in rows(db, "SELECT error FROM rejected_rows ORDER BY id")]
    assert errors[0].startswith("TypeError: Encoding objects of type object")
    assert errors[1].startswith("OverflowError")
    assert "row set aside: actor_events: TypeError" in caplog.text


async def test_a_running_daemon_keeps_going_past_rows_it_cannot_store(tmp_path, capfd):
    """Before: the recorder failed on the batch, every resend failed again, exit 3."""
    make_store(tmp_path / "state", limit=600)
    sock_dir = Path(tempfile.mkdtemp(prefix="qsa", dir="/tmp"))
    cfg = with_changes(load(env={}), feed={"exit_at_end": False},
                       learning={"enabled": False}, rl={"enabled": False})
    d = Daemon(cfg, tmp_path / "state", tmp_path / "models", socket_path=sock_dir / "s.sock",
               progress_every_s=0, models={})
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(d.run)
            for rec in bad_records():
                await d.channels["records"].send(rec)
            await d.channels["records"].send(Record("actor_events", {
                **GOOD_EVENT, "run_id": d.run_id, "clock_ts": 0, "restarts": 0}))
            with trio.fail_after(60):
                while d.recorder.rows_set_aside < 4:
                    await trio.sleep(0.02)
            assert d.supervisor.status()["recorder"]["restarts"] == 0
            d.request_stop("test over")
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert d.exit_code == 0
    db = tmp_path / "state" / "qtraderd.db"
    assert rows(db, "SELECT count(*) FROM rejected_rows WHERE run_id=?", d.run_id)[0][0] == 4
    assert rows(db, "SELECT count(*) FROM actor_events WHERE actor='x'")[0][0] == 1
    assert rows(db, "SELECT status, exit_code FROM runs WHERE id=?", d.run_id)[0] == (
        "stopped", 0)
    err = capfd.readouterr().err  # the writer process logs to the daemon's stderr
    assert "qtraderd.store: row set aside: no_such_table: OperationalError" in err
