"""The store writer process: the daemon's single SQLite writer, on its own core.

    python -m qtraderd.store.writer STATE_DIR RUN_ID

Why a process: SQLite inserts from a thread fight the event loop for the GIL (each row
releases and re-acquires it), which in a full-speed replay halved throughput. A separate
process does the same work on the other core with no contention; the event loop only
encodes batches (msgpack, milliseconds per replay) and writes them to a pipe.

Protocol (stdin/stdout, binary):
* the writer prints `ready <last_batch>` once the store is open;
* the recorder sends frames: 4-byte big-endian length + msgpack `Batch`;
* after committing a batch the writer prints `ok <id> <set aside>`; batches at or below
  the run's `last_batch` are acknowledged without writing (resends after a restart are
  harmless). `<set aside>` counts the batch's rows the store could not hold: they went to
  `rejected_rows` instead (store.rows.write_batch), so one bad row never fails a batch;
* on EOF the writer exits 0; on a failure it prints `err <id> <message>` and exits 1.
"""

from __future__ import annotations

import logging
import signal
import struct
import sys
from pathlib import Path
from typing import BinaryIO

import msgspec

from qtraderd.store.db import StoreError, connect
from qtraderd.store.rows import Batch, SetAside, decode_batch, write_batch

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            if buf:
                raise EOFError(f"pipe closed inside a frame ({len(buf)} of {n} bytes)")
            return None
        buf += chunk
    return bytes(buf)


def serve(state_dir: Path, run_id: int, inp: BinaryIO, out: BinaryIO) -> int:
    def say(line: str) -> None:
        out.write(line.encode() + b"\n")
        out.flush()

    try:
        conn = connect(state_dir)
        row = conn.execute("SELECT last_batch FROM runs WHERE id=?", (run_id,)).fetchone()
    except StoreError as exc:
        say(f"err 0 {exc}")
        return 1
    if row is None:
        say(f"err 0 run {run_id} is not in the store")
        return 1
    say(f"ready {row[0]}")
    decoder = msgspec.msgpack.Decoder(Batch)
    batch_id = 0
    while True:
        try:
            head = _read_exact(inp, HEADER.size)
            if head is None:
                conn.close()
                return 0
            (size,) = HEADER.unpack(head)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes is too large")
            payload = _read_exact(inp, size)
            if payload is None:
                raise EOFError("pipe closed before a frame's payload")
            batch, aside = decode_batch(decoder, payload)
            batch_id = batch.id
            written: list[SetAside] = []
            write_batch(conn, run_id, batch, written)
        except Exception as exc:
            say(f"err {batch_id} {type(exc).__name__}: {exc}".replace("\n", " "))
            return 1
        say(f"ok {batch.id} {len(aside) + len(written)}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # SIGTERM/SIGINT reach the whole process group (systemd's KillMode=control-group, a
    # Ctrl-C in a terminal). The daemon is the one to decide: it drains, sends the last
    # batch and closes our stdin, and EOF is our exit. Dying first would lose that batch.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # But a daemon that died (kill -9, OOM) takes us with it: its successor resumes from
    # the last committed checkpoint and must not see us commit one more batch after that.
    from qtraderd.runtime.process import die_with_parent

    die_with_parent()
    # Nothing is logged on success; a crash's traceback reaches the daemon's stderr (the
    # journal under systemd) in the daemon's format.
    from qtraderd.runtime import logs as logsetup
    logsetup.setup(logging.WARNING)
    if len(args) != 2:
        print("usage: python -m qtraderd.store.writer STATE_DIR RUN_ID", file=sys.stderr)
        return 2
    return serve(Path(args[0]), int(args[1]), sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    raise SystemExit(main())
