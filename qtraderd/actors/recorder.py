"""Recorder actor: gets every finished step into SQLite without ever stalling the bar path.

Finished steps arrive from execution; loose `Record` rows (actor restarts, risk events
caused by commands) arrive on a side channel drained alongside. They are buffered and
sent in batches — when `store.flush_rows` rows are waiting or `store.flush_ms` has passed
— to the store writer process (qtraderd.store.writer), which commits each batch in one
transaction on the other core and acknowledges it.

Nothing is lost: a batch stays in memory until acknowledged. If the writer dies, the
actor raises, the supervisor restarts it, a new writer reports the last committed batch
and the rest is sent again (committing a batch records its id in the same transaction,
so resends never duplicate). A row the store cannot hold is set aside, never resent: one
that cannot even be encoded here, or decoded or stored by the writer, becomes a
`rejected_rows` row (its table, the error, its repr) and the rest of its batch commits —
otherwise the same batch would fail on every resend until the supervisor gave up. If the
actor is cancelled outright it writes whatever is
unacknowledged itself, synchronously, on the way out. Backpressure: at most
`MAX_INFLIGHT` batches are unacknowledged; beyond that the recorder waits, its bounded
inbox fills and the replay slows down instead of memory growing.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import msgspec
import trio

from qtraderd.core.messages import Journal, Record, Step
from qtraderd.runtime.supervisor import Actor
from qtraderd.store.db import connect
from qtraderd.store.rows import Batch, SetAside, aside_record, decode_batch, write_batch
from qtraderd.store.writer import frame

log = logging.getLogger("qtraderd.recorder")

MAX_INFLIGHT = 8


class WriterError(RuntimeError):
    pass


class RecorderActor(Actor):
    name = "recorder"

    def __init__(self, state_dir: Path, run_id: int,
                 inbox: trio.MemoryReceiveChannel[list[Step] | Journal],
                 records: trio.MemoryReceiveChannel[Record], flush_rows: int,
                 flush_ms: float, keep_fds: tuple[int, ...] = ()) -> None:
        """`keep_fds`: descriptors the writer inherits (the state-dir lock: a successor
        daemon waits until this writer is gone too)."""
        super().__init__()
        self.keep_fds = keep_fds
        self.state_dir = Path(state_dir)
        self.run_id = run_id
        self.inbox = inbox
        self.records = records
        self.flush_rows = flush_rows
        self.flush_s = flush_ms / 1000.0
        self._steps: list[Step] = []
        self._cut = 0  # self._steps[:_cut] ends with a checkpoint step: what can be written
        self._records: list[Record] = []
        self._pending_rows = 0
        self._next_id = 1
        self._unacked: deque[tuple[int, bytes, int]] = deque()  # (id, frame, steps)
        self._acked = trio.Event()
        self._lock = trio.Lock()
        self._proc: trio.Process | None = None
        self.batches_acked = 0
        self.steps_written = 0
        self.writer_starts = 0
        self.rows_set_aside = 0
        self._encoder = msgspec.msgpack.Encoder()
        self._journal_replies: list[trio.MemorySendChannel[int]] = []  # for the next batch
        self._replies_at: deque[tuple[int, trio.MemorySendChannel[int]]] = deque()
        self.journals = 0

    # -- the actor -------------------------------------------------------------------
    async def run(self) -> None:
        clean = False
        try:
            await self._start_writer()
            assert self._proc is not None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_acks, self._proc)
                nursery.start_soon(self._timer)
                async for msg in self.inbox:
                    self._add(msg)
                    if self._pending_rows >= self.flush_rows or self._journal_replies:
                        await self.flush()
                self._drain_records()
                await self.flush()
                await self._proc.stdin.aclose()  # EOF: the writer finishes and exits
                with trio.fail_after(60):
                    while self._unacked:
                        await self._wait_acked()
                    await self._proc.wait()
                nursery.cancel_scope.cancel()
            clean = True
        finally:
            if not clean:
                self._emergency_write()

    async def _start_writer(self) -> None:
        cmd = [sys.executable, "-m", "qtraderd.store.writer", str(self.state_dir),
               str(self.run_id)]
        proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, pass_fds=self.keep_fds)
        self._proc = proc
        self.writer_starts += 1
        line = await _read_line(proc.stdout, bytearray())
        if not line.startswith("ready "):
            proc.kill()
            raise WriterError(f"store writer did not start: {line or 'no output'}")
        last = int(line.split()[1])
        if self.writer_starts == 1:  # a resumed run: its batch ids continue
            self._next_id = max(self._next_id, last + 1)
        self._ack_up_to(last)
        for _bid, data, _n in list(self._unacked):  # resend what the last writer lost
            await proc.stdin.send_all(data)
        if self.writer_starts > 1:
            log.warning("store writer restarted: resent %d unacknowledged batches",
                        len(self._unacked))

    async def _read_acks(self, proc: trio.Process) -> None:
        buf = bytearray()
        while True:
            line = await _read_line(proc.stdout, buf)
            if not line:
                if self._unacked:
                    raise WriterError(f"store writer exited (code {await proc.wait()}) with "
                                      f"{len(self._unacked)} batches unacknowledged")
                return
            kind, _, rest = line.partition(" ")
            if kind == "ok":
                bid, _, aside = rest.partition(" ")
                self.rows_set_aside += int(aside or 0)
                self._ack_up_to(int(bid))
            else:
                raise WriterError(f"store writer failed: {line}")

    def _ack_up_to(self, last: int) -> None:
        while self._unacked and self._unacked[0][0] <= last:
            _, _, n = self._unacked.popleft()
            self.batches_acked += 1
            self.steps_written += n
        while self._replies_at and self._replies_at[0][0] <= last:
            bid, reply = self._replies_at.popleft()
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError,
                                     trio.ClosedResourceError):
                reply.send_nowait(bid)
        self._acked.set()
        self._acked = trio.Event()

    async def _wait_acked(self) -> None:
        await self._acked.wait()

    # -- buffering -------------------------------------------------------------------
    def _add(self, msg: list[Step] | Record | Journal) -> None:
        self.processed += 1
        if isinstance(msg, Journal):  # committed in the next batch, which leaves at once
            self._records.extend(msg.records)
            self._pending_rows += len(msg.records)
            self.journals += 1
            if msg.reply is not None:
                self._journal_replies.append(msg.reply)
            return
        if isinstance(msg, Record):
            self._records.append(msg)
            self._pending_rows += 1
            return
        self._steps.extend(msg)
        for step in msg:  # a cheap estimate of rows, to decide when to flush
            self._pending_rows += 2 + 2 * len(step.samples) + len(step.predictions) * (
                1 + len(step.model_outputs))
        for i in range(len(msg) - 1, -1, -1):
            if msg[i].checkpoint:
                self._cut = len(self._steps) - len(msg) + i + 1
                break

    def _drain_records(self) -> None:
        while True:
            try:
                self._add(self.records.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    async def _timer(self) -> None:
        while True:
            await trio.sleep(self.flush_s)
            self._drain_records()
            if self._cut or self._records:
                await self.flush()

    def _take_batch(self) -> tuple[int, bytes, int] | None:
        """The steps up to the last checkpoint step and every loose record.

        A batch always ends at a checkpoint: the store then holds the actors' state for
        exactly the last step it has rows of. Steps after it wait for the next one (at
        most EVERY_STEPS); if the process dies first they are redone from that state.
        """
        steps, self._steps = self._steps[:self._cut], self._steps[self._cut:]
        self._cut = 0
        if not (steps or self._records):
            return None
        batch = Batch(self._next_id, steps, self._records)
        self._next_id += 1
        for reply in self._journal_replies:  # answered when this batch is acknowledged
            self._replies_at.append((batch.id, reply))
        self._journal_replies = []
        self._records, self._pending_rows = [], 0
        n = sum(not s.seal for s in steps)  # a seal is state, not a step of its own
        try:
            payload = self._encoder.encode(batch)
        except Exception:  # something in it msgpack cannot carry: set that aside
            payload = self._encoder.encode(self._encodable(batch))
        return batch.id, frame(payload), n

    def _encodable(self, batch: Batch) -> Batch:
        """`batch` without the steps and records that cannot be encoded, each replaced
        by a `rejected_rows` record (logged once, counted in `rows_set_aside`)."""
        steps: list[Step] = []
        records: list[Record] = []
        aside: list[SetAside] = []
        for step in batch.steps:
            try:
                self._encoder.encode(step)
                steps.append(step)
            except Exception as exc:
                aside.append(SetAside.of("steps", exc, step))
        for rec in batch.records:
            try:
                self._encoder.encode(rec)
                records.append(rec)
            except Exception as exc:
                aside.append(SetAside.of(str(rec.table), exc, rec.row))
        for item in aside:
            log.warning("row set aside: %s: %s", item.table, item.error)
        self.rows_set_aside += len(aside)
        return Batch(batch.id, steps, [*records, *map(aside_record, aside)])

    async def flush(self) -> None:
        async with self._lock:
            while len(self._unacked) >= MAX_INFLIGHT:  # backpressure
                await self._wait_acked()
            item = self._take_batch()
            if item is None:
                return
            self._unacked.append(item)
            assert self._proc is not None
            await self._proc.stdin.send_all(item[1])

    def _emergency_write(self) -> None:
        """Cancelled or failed for good: write what is not yet committed, synchronously."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
        self._drain_records()
        item = self._take_batch()
        if item is not None:
            self._unacked.append(item)
        if self._steps:
            log.info("recorder: %d steps after the last checkpoint are not written; a "
                     "restart redoes them", len(self._steps))
        if not self._unacked:
            return
        decoder = msgspec.msgpack.Decoder(Batch)
        conn = connect(self.state_dir)
        try:
            for _bid, data, _n in self._unacked:
                batch, aside = decode_batch(decoder, data[4:])
                write_batch(conn, self.run_id, batch, aside)
                self.rows_set_aside += len(aside)
            log.info("recorder wrote %d pending batches directly on shutdown",
                     len(self._unacked))
            self._ack_up_to(self._next_id)
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        return {"batches_acked": self.batches_acked, "steps_written": self.steps_written,
                "buffered_steps": len(self._steps) + sum(n for _, _, n in self._unacked),
                "writer_starts": self.writer_starts, "rows_set_aside": self.rows_set_aside}


async def _read_line(stream: trio.abc.ReceiveStream | None, buf: bytearray) -> str:
    """One line from the writer's stdout ('' at EOF); `buf` keeps what follows it."""
    assert stream is not None
    while b"\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return ""
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode(errors="replace").strip()
