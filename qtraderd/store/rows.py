"""Turning finished steps into table rows, and writing a batch of them in one transaction.

Used by the store writer process (qtraderd.store.writer) and, when that process cannot
be used any more (hard shutdown), by the recorder itself. Imports nothing heavy: the
writer process starts in a few tens of milliseconds.
"""

from __future__ import annotations

import logging
import sqlite3
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from qtraderd.core.messages import Record, Step
from qtraderd.core.orders import client_run
from qtraderd.store.db import Transaction

log = logging.getLogger("qtraderd.store")

MAX_REPR = 65_536  # characters of a set-aside row's repr that are kept
# SQLite result codes (primary, the low byte) of errors in the database or its file, not
# in a row: a batch failing with one of these is resent, never set aside.
_STORE_CODES = {5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 26}  # BUSY LOCKED NOMEM READONLY
# INTERRUPT IOERR CORRUPT FULL CANTOPEN PROTOCOL NOTADB


def is_row_error(exc: BaseException) -> bool:
    """Could this error be one row's fault (bad type, value, constraint, table)? Errors of
    the database itself (locked, I/O, full, corrupt) are not."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF not in _STORE_CODES
        return isinstance(exc, (sqlite3.InterfaceError, sqlite3.ProgrammingError,
                                sqlite3.IntegrityError, sqlite3.DataError))
    return isinstance(exc, (TypeError, ValueError, OverflowError, KeyError, IndexError,
                            AttributeError))


@dataclass(frozen=True)
class SetAside:
    """A row that could not be stored: the table it was for, why, and its repr."""

    table: str
    error: str
    row: str

    @classmethod
    def of(cls, table: str, exc: BaseException, row: object) -> SetAside:
        try:
            text = repr(row)
        except Exception as rexc:  # a repr that fails is itself worth recording
            text = f"<unrepresentable {type(row).__name__}: {rexc}>"
        if len(text) > MAX_REPR:
            text = f"{text[:MAX_REPR]}... ({len(text):,} characters)"
        error = " ".join(f"{type(exc).__name__}: {exc}".split())
        return cls(table, error[:1000], text)


def pack_features(row: tuple[float, ...]) -> bytes:
    """Feature rows are stored as float32 blobs (what the models consume)."""
    return array("f", row).tobytes()


class Batch(msgspec.Struct, array_like=True):
    """What the recorder sends the writer: an id (for acks and resends) and its rows."""

    id: int
    steps: list[Step]
    records: list[Record]


SQL = {
    "samples": "INSERT OR IGNORE INTO samples (run_id, symbol, ts, features, regime, "
               "global_regime) VALUES (?,?,?,?,?,?)",
    "predictions": "INSERT INTO predictions (run_id, symbol, ts, model, version, p_long, "
                   "p_short, role, weights) VALUES (?,?,?,?,?,?,?,?,?)",
    "signals": "INSERT INTO signals (run_id, seq, ts, symbol, side, confidence, edge, regime, "
               "action, reason) VALUES (?,?,?,?,?,?,?,?,?,?)",
    "orders": "INSERT OR REPLACE INTO orders (run_id, id, seq, ts, symbol, side, qty, "
              "ref_price, purpose, reason, tp_pct, sl_pct, risk_action, risk_reason, "
              "approved_qty, client_id, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "order_events": "INSERT INTO order_events (run_id, seq, ts, client_id, symbol, "
                    "from_status, to_status, reason) VALUES (?,?,?,?,?,?,?,?)",
    "order_status": "UPDATE orders SET status=? WHERE run_id=? AND client_id=?",
    "fills": "INSERT INTO fills (run_id, seq, order_id, ts, symbol, side, qty, price, fee, "
             "liquidity, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    "trades": "INSERT OR REPLACE INTO trades (run_id, id, symbol, quote, side, qty, entry_ts, "
              "entry_price, exit_ts, exit_price, gross_pnl, fees, net_pnl, return_pct, "
              "exit_reason, bars_held) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "equity": "INSERT INTO equity (run_id, seq, ts, quote, balance, equity, exposure, "
              "open_positions, risk_state) VALUES (?,?,?,?,?,?,?,?,?)",
    "risk_events": "INSERT INTO risk_events (run_id, ts, state, prev_state, reason, detail, "
                   "symbol) VALUES (?,?,?,?,?,?,?)",
    "outcomes": "UPDATE samples SET label=?, resolved_at=?, ret_long=?, ret_short=? "
                "WHERE run_id=? AND symbol=? AND ts=?",
}
_ORDER = ("samples", "predictions", "signals", "orders", "order_events", "order_status",
          "fills", "trades", "equity", "risk_events", "outcomes")


def step_rows(run_id: int, step: Step, out: dict[str, list[tuple[Any, ...]]]) -> int:
    """Append the rows of one step to `out`; return how many."""
    n0 = sum(len(v) for v in out.values())
    g = step.global_regime
    out["samples"].extend((run_id, s.symbol, s.ts, pack_features(s.features), s.regime, g)
                          for s in step.samples)
    preds = out["predictions"]
    for m in step.model_outputs:
        preds.extend((run_id, sym, m.ts, m.model, m.version, pl, ps, m.role, None)
                     for sym, pl, ps in zip(m.symbols, m.p_long, m.p_short, strict=True))
    preds.extend((run_id, p.symbol, p.ts, p.model, p.version, p.p_long, p.p_short, "serving",
                  p.weights or None) for p in step.predictions)
    out["outcomes"].extend((o.label, o.resolved_at, o.ret_long, o.ret_short, run_id, o.symbol,
                            o.ts) for o in step.outcomes)
    if step.signals:
        out["signals"].extend((run_id, step.seq, s.ts, s.symbol, s.side, s.confidence, s.edge,
                               s.regime, s.action, s.reason) for s in step.signals)
    if step.intents:
        out["orders"].extend(order_rows(run_id, step))
    if step.orders:
        out["order_events"].extend((run_id, step.seq, u.ts, u.client_id, u.symbol, u.prev,
                                    u.status, u.reason) for u in step.orders)
        out["order_status"].extend((u.status, client_run(u.client_id, run_id), u.client_id)
                                   for u in step.orders if not u.intent_id)
    if step.fills:
        out["fills"].extend((run_id, step.seq, f.order_id, f.ts, f.symbol, f.side, f.qty,
                             f.price, f.fee, f.liquidity, f.reason) for f in step.fills)
    if step.closed:
        out["trades"].extend((run_id, t.id, t.symbol, t.quote, t.side, t.qty, t.entry_ts,
                              t.entry_price, t.exit_ts, t.exit_price, t.gross_pnl, t.fees,
                              t.net_pnl, t.return_pct, t.exit_reason, t.bars_held)
                             for t in step.closed)
    out["equity"].extend((run_id, step.seq, step.ts, a.quote, a.balance, a.equity, a.exposure,
                          a.open_positions, step.risk_state) for a in step.accounts)
    if step.risk_events:
        out["risk_events"].extend((run_id, e.ts, e.state, e.prev_state, e.reason, e.detail,
                                   e.symbol) for e in step.risk_events)
    return sum(len(v) for v in out.values()) - n0


ORDER_COLUMNS = ("run_id", "id", "seq", "ts", "symbol", "side", "qty", "ref_price", "purpose",
                 "reason", "tp_pct", "sl_pct", "risk_action", "risk_reason", "approved_qty",
                 "client_id", "status")


def order_rows(run_id: int, step: Step) -> list[tuple[Any, ...]]:
    """The `orders` rows (ORDER_COLUMNS) of a step's intents: an intent risk allowed became
    an order, with its client id and status (`new` here, later moves update it); a denied
    one never reached the venue (both NULL). The step's commit writes them, and a live
    order's journal (messages.Journal) writes the same rows before its request leaves."""
    sent = {u.intent_id: u for u in step.orders if u.intent_id}
    decided = {d.intent_id: d for d in step.decisions}
    rows = []
    for i in step.intents:
        d = decided.get(i.id)
        u = sent.get(i.id)
        rows.append((
            run_id, i.id, step.seq, i.ts, i.symbol, i.side, i.qty, i.ref_price, i.purpose,
            i.reason, i.tp_pct, i.sl_pct, d.action if d else "none",
            d.reason if d else "NO_DECISION", d.qty if d else 0.0,
            u.client_id if u else None, u.status if u else None))
    return rows


def journal_records(run_id: int, step: Step) -> tuple[Record, ...]:
    """The `orders` rows of the step's orders about to be sent, as INSERT OR REPLACE
    records (the step's own commit later writes the same rows again)."""
    return tuple(Record("orders", dict(zip(ORDER_COLUMNS, row, strict=True)), "replace")
                 for row in order_rows(run_id, step) if row[15] is not None)


NO_RUN_ID = {"rl_q", "models", "model_history", "bars"}  # tables not scoped to one run


def write_batch(conn: sqlite3.Connection, run_id: int, batch: Batch,
                aside: list[SetAside] | None = None) -> int:
    """Write one batch atomically, together with its id in `runs.last_batch`.

    Recording the id in the same transaction makes resending after a crash safe: a
    batch at or below `last_batch` is already in the store and is skipped.

    A row the store cannot hold (a value of a type SQLite does not bind, a constraint it
    breaks, a step whose rows cannot be built) must not fail the batch: resent, it would
    fail again, for ever. Then the batch is written again with each statement in a
    savepoint; the rows that fail are set aside in `rejected_rows` (the table, the error,
    the row's repr), each logged once as `row set aside: <table>: <error>`, and the rest
    commits. Errors of the database itself (locked, full, I/O) still fail the batch: the
    recorder resends it to a new writer. `aside`, if given, receives what was set aside.
    """
    try:
        return _write(conn, run_id, batch, None)
    except Exception as exc:
        if not is_row_error(exc):
            raise
    found: list[SetAside] = []
    n = _write(conn, run_id, batch, found)
    for item in found:
        log.warning("row set aside: %s: %s", item.table, item.error)
    if aside is not None:
        aside.extend(found)
    return n


def _write(conn: sqlite3.Connection, run_id: int, batch: Batch,
           careful: list[SetAside] | None) -> int:
    """One attempt at the batch; `careful` (a list) turns on setting rows aside."""
    rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in _ORDER}
    n = 0
    bars = 0
    for step in batch.steps:
        bars += len(step.bars)
        if careful is None:
            n += step_rows(run_id, step, rows)
        else:
            part: dict[str, list[tuple[Any, ...]]] = {t: [] for t in _ORDER}
            try:
                n += step_rows(run_id, step, part)
            except Exception as exc:
                careful.append(SetAside.of("steps", exc, step))
                continue
            for table, got in part.items():
                rows[table].extend(got)

    def run(table: str, sql: str, params: list[Any]) -> None:
        if careful is None:
            conn.executemany(sql, params)
        else:
            _careful(conn, table, sql, params, careful)

    with Transaction(conn):
        last = conn.execute("SELECT last_batch FROM runs WHERE id=?", (run_id,)).fetchone()
        if last is None:
            raise ValueError(f"run {run_id} is not in the store")
        if batch.id <= last[0]:
            return 0
        for table in _ORDER:
            if rows[table]:
                run(table, SQL[table], rows[table])
        for rec in (*batch.records, *(r for step in batch.steps for r in step.records)):
            if careful is None:
                write_record(conn, rec, run_id)
                continue
            try:
                sql, values = record_sql(rec, run_id)
            except Exception as exc:
                careful.append(SetAside.of(str(rec.table), exc, rec.row))
                continue
            run(rec.table, sql, [values])
        if batch.steps:
            last_step = batch.steps[-1]
            if last_step.checkpoint:
                run("checkpoints", "INSERT OR REPLACE INTO checkpoints (run_id, actor, seq, "
                    "ts, state) VALUES (?,?,?,?,?)",
                    [(run_id, s.actor, last_step.seq, last_step.ts, s.blob)
                     for s in last_step.state])
                conn.execute("UPDATE runs SET resume_seq=?, resume_ts=? WHERE id=?",
                             (last_step.seq, last_step.ts, run_id))
            if last_step.seal and len(batch.steps) > 1:
                last_step = batch.steps[-2]  # the seal carries state only, no positions
        if batch.steps and not last_step.seal:
            conn.execute("DELETE FROM positions WHERE run_id=?", (run_id,))
            run("positions",
                "INSERT INTO positions (run_id, symbol, quote, side, qty, entry_price, "
                "entry_ts, stop_price, take_price, mark_price, unrealized, updated_ts) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(run_id, p.symbol, p.quote, p.side, p.qty, p.entry_price, p.entry_ts,
                  p.stop_price, p.take_price, p.mark_price, p.unrealized, last_step.ts)
                 for p in last_step.positions])
            run("runs", "UPDATE runs SET bars = bars + ?, first_ts = coalesce(first_ts, ?), "
                "last_ts = ? WHERE id=?", [(bars, batch.steps[0].ts, last_step.ts, run_id)])
        if careful:
            at = datetime.now(UTC).isoformat(timespec="seconds")
            conn.executemany(
                "INSERT INTO rejected_rows (run_id, at, tbl, error, row) VALUES (?,?,?,?,?)",
                [(run_id, at, a.table, a.error, a.row) for a in careful])
        conn.execute("UPDATE runs SET last_batch=? WHERE id=?", (batch.id, run_id))
    return n + len(batch.records)


def _careful(conn: sqlite3.Connection, table: str, sql: str, params: list[Any],
             aside: list[SetAside]) -> None:
    """`executemany` in a savepoint; if a row fails, each row in a savepoint of its own,
    setting aside those that fail with a row error."""
    if _row_error(conn, "batch_op", lambda: conn.executemany(sql, params)) is None:
        return
    for row in params:
        exc = _row_error(conn, "batch_row", lambda row=row: conn.execute(sql, row))
        if exc is not None:
            aside.append(SetAside.of(table, exc, row))


def _row_error(conn: sqlite3.Connection, name: str,
               op: Callable[[], object]) -> Exception | None:
    """Run `op` in savepoint `name`: undo it and return its error if that is a row error
    (re-raise any other), else keep it and return None."""
    conn.execute(f"SAVEPOINT {name}")
    try:
        op()
    except Exception as exc:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        if not is_row_error(exc):
            raise
        return exc
    conn.execute(f"RELEASE {name}")
    return None


def aside_record(item: SetAside) -> Record:
    """A row set aside before it reached the writer's transaction (it could not be encoded
    or decoded), as a `rejected_rows` Record that travels with the rest of its batch."""
    return Record("rejected_rows", {"at": datetime.now(UTC).isoformat(timespec="seconds"),
                                    "tbl": item.table, "error": item.error, "row": item.row})


def decode_batch(decoder: msgspec.msgpack.Decoder[Batch], payload: bytes
                 ) -> tuple[Batch, list[SetAside]]:
    """A batch from its msgpack frame. A step or record that does not fit its type is set
    aside (as a `rejected_rows` record in the batch) and the rest decoded; only a frame
    that is not a batch at all fails."""
    try:
        return decoder.decode(payload), []
    except msgspec.ValidationError:
        raw = msgspec.msgpack.decode(payload)
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], int)
            and isinstance(raw[1], list) and isinstance(raw[2], list)):
        raise msgspec.ValidationError("frame is not a batch [id, steps, records]")
    aside: list[SetAside] = []
    steps: list[Step] = []
    records: list[Record] = []
    for item in raw[1]:
        try:
            steps.append(msgspec.convert(item, Step))
        except msgspec.ValidationError as exc:
            aside.append(SetAside.of("steps", exc, item))
    for item in raw[2]:
        try:
            records.append(msgspec.convert(item, Record))
        except msgspec.ValidationError as exc:
            table = item[0] if isinstance(item, list) and item and isinstance(
                item[0], str) else "records"
            aside.append(SetAside.of(table, exc, item))
    for item in aside:
        log.warning("row set aside: %s: %s", item.table, item.error)
    return Batch(raw[0], steps, [*records, *map(aside_record, aside)]), aside


def record_sql(rec: Record, run_id: int | None = None) -> tuple[str, list[Any]]:
    """The statement and values that store one Record; rows of run-scoped tables get
    `run_id` unless they carry their own."""
    row = rec.row if (run_id is None or "run_id" in rec.row or rec.table in NO_RUN_ID) else {
        "run_id": run_id, **rec.row}
    cols = list(row)
    verb = {"replace": "INSERT OR REPLACE", "ignore": "INSERT OR IGNORE"}.get(rec.mode,
                                                                            "INSERT")
    return (f"{verb} INTO {rec.table} ({', '.join(cols)}) "
            f"VALUES ({', '.join('?' * len(cols))})", list(row.values()))


def write_record(conn: sqlite3.Connection, rec: Record, run_id: int | None = None) -> None:
    """One Record as a row (inside the caller's transaction)."""
    conn.execute(*record_sql(rec, run_id))
