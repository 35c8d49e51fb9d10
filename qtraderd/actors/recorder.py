"""Recorder actor: the single writer of the SQLite store.

Finished steps arrive from execution; loose `Record` rows (actor restarts, model events)
arrive on a side channel that is drained alongside. The actor ends when the step channel
ends. Rows are buffered and written in one transaction per batch — when
`store.flush_rows` rows are waiting or `store.flush_ms` has passed — in a worker thread,
so the bar path never waits on the disk. The inbox is bounded: if the disk really cannot
keep up, backpressure slows the replay instead of growing memory. On shutdown whatever is
buffered is written before the actor ends; if it is cancelled outright it still writes
synchronously on the way out.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import trio

from qtraderd.actors.predictor import pack_features
from qtraderd.messages import Record, Step
from qtraderd.store.db import Transaction
from qtraderd.supervisor import Actor

log = logging.getLogger("qtraderd.recorder")

SQL = {
    "samples": "INSERT OR REPLACE INTO samples (run_id, symbol, ts, features, regime, "
               "global_regime) VALUES (?,?,?,?,?,?)",
    "predictions": "INSERT INTO predictions (run_id, symbol, ts, model, version, p_long, "
                   "p_short) VALUES (?,?,?,?,?,?,?)",
    "signals": "INSERT INTO signals (run_id, seq, ts, symbol, side, confidence, edge, regime, "
               "action, reason) VALUES (?,?,?,?,?,?,?,?,?,?)",
    "orders": "INSERT OR REPLACE INTO orders (run_id, id, seq, ts, symbol, side, qty, "
              "ref_price, purpose, reason, tp_pct, sl_pct, risk_action, risk_reason, "
              "approved_qty) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
_ORDER = ("samples", "predictions", "signals", "orders", "fills", "trades", "equity",
          "risk_events", "outcomes")


def step_rows(run_id: int, step: Step, out: dict[str, list[tuple[Any, ...]]]) -> int:
    """Append the rows of one step to `out`; return how many."""
    n0 = sum(len(v) for v in out.values())
    g = step.global_regime
    out["samples"].extend((run_id, s.symbol, s.ts, pack_features(s.features), s.regime, g)
                          for s in step.samples)
    out["predictions"].extend((run_id, p.symbol, p.ts, p.model, p.version, p.p_long, p.p_short)
                              for p in step.predictions)
    out["outcomes"].extend((o.label, o.resolved_at, o.ret_long, o.ret_short, run_id, o.symbol,
                            o.ts) for o in step.outcomes)
    if step.signals:
        out["signals"].extend((run_id, step.seq, s.ts, s.symbol, s.side, s.confidence, s.edge,
                               s.regime, s.action, s.reason) for s in step.signals)
    if step.intents:
        decided = {d.intent_id: d for d in step.decisions}
        for i in step.intents:
            d = decided.get(i.id)
            out["orders"].append((
                run_id, i.id, step.seq, i.ts, i.symbol, i.side, i.qty, i.ref_price, i.purpose,
                i.reason, i.tp_pct, i.sl_pct, d.action if d else "none",
                d.reason if d else "NO_DECISION", d.qty if d else 0.0))
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


class RecorderActor(Actor):
    name = "recorder"

    def __init__(self, conn: sqlite3.Connection, run_id: int,
                 inbox: trio.MemoryReceiveChannel[Step],
                 records: trio.MemoryReceiveChannel[Record],
                 flush_rows: int, flush_ms: float) -> None:
        super().__init__()
        self.conn = conn
        self.run_id = run_id
        self.inbox = inbox
        self.records = records
        self.flush_rows = flush_rows
        self.flush_s = flush_ms / 1000.0
        self._steps: list[Step] = []
        self._records: list[Record] = []
        self._pending_rows = 0
        self._lock = trio.Lock()
        self.rows_written = 0
        self.flushes = 0
        self.steps = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.bars = 0
        self._writing = 0  # steps being written right now (in the worker thread)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer)
                async for msg in self.inbox:
                    self._add(msg)
                    if self._pending_rows >= self.flush_rows:
                        await self.flush()
                nursery.cancel_scope.cancel()
            self._drain_records()
            await self.flush()
        finally:
            self._drain_records()
            if self._steps or self._records:  # cancelled mid-way: write synchronously
                self._write(*self._take())

    def _add(self, msg: Step | Record) -> None:
        self.processed += 1
        if isinstance(msg, Step):
            self._steps.append(msg)
            self.steps += 1
            self.bars += len(msg.bars)
            if self.first_ts is None:
                self.first_ts = msg.ts
            self.last_ts = msg.ts
            # a cheap estimate of rows, to decide when to flush
            self._pending_rows += 1 + 2 * len(msg.samples) + len(msg.predictions)
        else:
            self._records.append(msg)
            self._pending_rows += 1

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
            if self._steps or self._records:
                await self.flush()

    def _take(self) -> tuple[list[Step], list[Record]]:
        steps, records = self._steps, self._records
        self._steps, self._records, self._pending_rows = [], [], 0
        return steps, records

    async def flush(self) -> None:
        async with self._lock:
            if not (self._steps or self._records):
                return
            steps, records = self._take()
            self._writing = len(steps)
            try:
                await trio.to_thread.run_sync(self._write, steps, records)
            finally:
                self._writing = 0

    def _write(self, steps: list[Step], records: list[Record]) -> None:
        rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in _ORDER}
        n = 0
        for step in steps:
            n += step_rows(self.run_id, step, rows)
        positions = steps[-1].positions if steps else None
        with Transaction(self.conn) as conn:
            for table in _ORDER:
                if rows[table]:
                    conn.executemany(SQL[table], rows[table])
            for rec in records:
                row = rec.row if "run_id" in rec.row else {"run_id": self.run_id, **rec.row}
                cols = list(row)
                conn.execute(f"INSERT INTO {rec.table} ({', '.join(cols)}) "
                             f"VALUES ({', '.join('?' * len(cols))})", list(row.values()))
            if positions is not None:
                conn.execute("DELETE FROM positions WHERE run_id=?", (self.run_id,))
                conn.executemany(
                    "INSERT INTO positions (run_id, symbol, quote, side, qty, entry_price, "
                    "entry_ts, stop_price, take_price, mark_price, unrealized, updated_ts) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(self.run_id, p.symbol, p.quote, p.side, p.qty, p.entry_price, p.entry_ts,
                      p.stop_price, p.take_price, p.mark_price, p.unrealized, steps[-1].ts)
                     for p in positions])
                conn.execute("UPDATE runs SET bars=?, first_ts=?, last_ts=? WHERE id=?",
                             (self.bars, self.first_ts, self.last_ts, self.run_id))
        self.rows_written += n + len(records)
        self.flushes += 1

    def status(self) -> dict[str, Any]:
        return {"rows_written": self.rows_written, "flushes": self.flushes,
                "buffered_steps": len(self._steps) + self._writing}
