"""`BinanceSource`: live closed bars from Binance USD-M as the daemon's bar source.

What it keeps true (issue 12, items 2-4):
* **One step per open time, strictly increasing.** Closed klines from the stream (and the
  REST backfill) are grouped by open time. A step is emitted as soon as every symbol's bar
  is in, or at its deadline: `exchange.close_deadline_s` after the bar's close on the
  exchange's clock (the clock offset from `GET /fapi/v1/time`). The deadline is wall time
  — a network latency budget — so against the simulator at `feed.speed` N it spans N times
  as much data time.
* **A late bar is never traded.** A symbol missing at the deadline is left out of that
  step, fetched over REST, stored and logged (`bar late: SYMBOL TIME fetched over REST,
  not traded`); if the stream delivers it afterwards it is stored, never emitted. Each
  (symbol, open time) is emitted at most once, ever: a step's open time is always after
  the last one emitted (`last_ts`, restored from the checkpoint after a restart).
* **Nothing missed after a (re)connect.** After every `Connected` that is not a planned
  handover, the bars that closed since the newest one known are fetched over REST (paged,
  rate-limited by the client) before any later stream event is used. Backfilled bars older
  than the next step are history: stored (the learner trains on them), not traded, and
  counted in one log line; a backfilled bar of the next step joins it.
* **Every bar is stored** in the `bars` table, idempotently (`INSERT OR IGNORE`, the rows
  `qtraderd import` writes), through the daemon's one writer: a step's own bars travel in
  the step (`step_records`, committed in the same transaction as the step and its
  checkpoint); late and history bars go to the recorder as loose records (`store`). The
  start-up warm-up (before the writer runs) writes directly: see warmup.py.

While the stream is down no REST request is made per missing bar: the backfill after the
reconnect fetches them all at once.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import trio

from qtraderd.core.clock import LiveClock, iso
from qtraderd.core.config import INTERVAL_MS, Config
from qtraderd.core.instruments import Instrument, define
from qtraderd.core.messages import Bar, Record
from qtraderd.venues.binance.rest import RestClient, RestError
from qtraderd.venues.binance.stream import Connected, Disconnected, KlineStream, StreamEvent
from qtraderd.venues.binance.warmup import bar_record, check_symbols, warm_up
from qtraderd.venues.replay import recent_bars

log = logging.getLogger("qtraderd.binance.feed")

__all__ = ["BinanceSource"]

StoreBars = Callable[[Sequence[Bar]], Awaitable[None]]
_END = None  # sentinel on the ready channel: feed.end reached


class _Seen:
    """Open times per symbol that were emitted or stored (the last `window` of them)."""

    def __init__(self, window: int = 4096) -> None:
        self.window = window
        self._order: dict[str, deque[int]] = {}
        self._set: dict[str, set[int]] = {}

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key[1] in self._set.get(key[0], ())

    def add(self, symbol: str, t: int) -> bool:
        """Remember (symbol, t); False if it was known already."""
        seen = self._set.setdefault(symbol, set())
        if t in seen:
            return False
        order = self._order.setdefault(symbol, deque())
        seen.add(t)
        order.append(t)
        if len(order) > self.window:
            seen.discard(order.popleft())
        return True


LATE_ATTEMPTS = 10  # a late bar's REST tries (backoff from 0.25 s, about 2 min in all)


class BinanceSource:
    """Closed bars of `symbols` from Binance USD-M, grouped into steps (a BarSource).

    Life: `await source.prepare(conn)` once at start-up (symbols checked, instruments
    defined, warm-up stored); then the feed actor runs `await nursery.start(source.run)`
    and iterates `batches()`; `await source.aclose()` at the end. `store` (set by the
    daemon) receives the bars that are stored but not part of a step.
    """

    def __init__(self, cfg: Config, symbols: Sequence[str], clock: LiveClock, *,
                 rest: RestClient | None = None, stream: KlineStream | None = None,
                 end_ms: int | None = None, resync_s: float = 60.0,
                 state_dir: Path | None = None) -> None:
        """`state_dir`: the store `history()` reads the warm-up bars from."""
        if not symbols:
            raise ValueError("BinanceSource needs at least one symbol")
        self.symbols = tuple(symbols)
        self._symset = frozenset(self.symbols)
        self.interval = cfg.feed.interval
        self.iv = INTERVAL_MS[self.interval]
        self.clock = clock
        self.rest = rest or RestClient.from_config(cfg, now_ms=clock.local_ms)
        self.stream = stream or KlineStream.from_config(cfg, self.symbols)
        self.where = self.rest.base_url
        self.deadline_ms = int(cfg.exchange.close_deadline_s * 1000 * clock.speed)
        self.warmup_ms = int(cfg.exchange.warmup_days * 86_400_000)
        self.end_ms = end_ms
        self.resync_s = resync_s
        self.store: StoreBars | None = None
        self.instruments: dict[str, Instrument] = {}
        self.last_ts: int | None = None  # last step emitted (BarSource)
        self.next_ts = 0  # open time of the next step to decide
        self.hwm: dict[str, int] = {}  # per symbol: newest open time known (backfill start)
        self._pending: dict[int, dict[str, Bar]] = {}
        self._seen = _Seen()
        self._late_keys = _Seen(1024)
        self._up: dict[int, bool] = {}  # shard -> connected
        self._ready_tx, self._ready_rx = trio.open_memory_channel[
            tuple[int, tuple[Bar, ...]] | None](math.inf)
        self.steps = self.stream_bars = self.backfilled = self.history_bars = 0
        self.late_bars = self.late_fetched = self.late_arrivals = self.skipped_steps = 0
        self.holes = 0  # late bars the exchange turned out not to have
        self.warmup_bars = 0
        self.ended = False
        self.state_dir = state_dir
        # bars handed to `store` as history, newest last, until history() has been asked:
        # they may not be committed yet when the first step goes out
        self._handed: list[Bar] = []

    @classmethod
    def from_config(cls, cfg: Config, symbols: Sequence[str], clock: LiveClock,
                    end_ms: int | None = None, state_dir: Path | None = None
                    ) -> BinanceSource:
        return cls(cfg, symbols, clock, end_ms=end_ms, state_dir=state_dir)

    # ------------------------------------------------------------------ start-up

    async def sync_clock(self, samples: int = 2) -> None:
        """Measure the exchange clock's offset (GET /fapi/v1/time) into the live clock:
        the sample with the shortest round trip wins (the first request of a process also
        pays for opening the connection, which would skew the midpoint)."""
        best: tuple[int, int] | None = None
        for _ in range(samples):
            t0 = self.clock.local_ms()
            await self.rest.server_time()
            trip = self.clock.local_ms() - t0
            if self.rest.offset_ms is not None and (best is None or trip < best[0]):
                best = (trip, self.rest.offset_ms)
        if best is not None:
            self.rest.offset_ms = best[1]
            self.rest.trip_ms = best[0]
            self.clock.offset_ms = best[1]

    async def prepare(self, conn: sqlite3.Connection) -> dict[str, Instrument]:
        """Start-up, before the first step: exchange clock; symbols checked against
        exchangeInfo (SymbolError names the unknown or not-TRADING ones); their filters
        defined as the instruments; `exchange.warmup_days` of history stored (resumable)."""
        await self.sync_clock()
        info = await self.rest.exchange_info()
        self.instruments = check_symbols(info, self.symbols, self.where)
        define(*self.instruments.values())
        for ins in self.instruments.values():
            log.info("instrument %s: %s/%s tick %g, step %g, min qty %g, min notional %g "
                     "(exchangeInfo)", ins.symbol, ins.base, ins.quote, ins.tick_size,
                     ins.step_size, ins.min_qty, ins.min_notional)
        now = self.clock.now_ms()
        end = now - now % self.iv  # the forming candle's open time
        res = await warm_up(self.rest, conn, self.symbols, self.interval,
                            end - self.warmup_ms, end)
        self.warmup_bars = res.fetched
        for sym, last in res.last.items():
            if last is not None:
                self.hwm[sym] = last
        return self.instruments

    async def aclose(self) -> None:
        await self.rest.aclose()

    # ------------------------------------------------------------------ BarSource

    async def batches(self) -> AsyncIterator[tuple[int, tuple[Bar, ...]]]:
        """Steps (open time, bars sorted by symbol) as `run` decides them; ends at feed.end."""
        while True:
            item = await self._ready_rx.receive()
            if item is _END:
                return
            ts, bars = item
            if self.last_ts is not None and ts <= self.last_ts:
                continue  # decided before a restart of run(): never twice
            self.last_ts = ts
            self.steps += 1
            for b in bars:
                self._seen.add(b.symbol, b.open_time)
            yield ts, bars

    async def history(self, before_ms: int, bars: int) -> tuple[Bar, ...]:
        """The bars before the first live step (see BarSource): the warm-up, stored at
        start-up, and what the first connect's backfill stored as history (handed to the
        store, perhaps not yet committed), the newest `bars` of each symbol."""
        stored: tuple[Bar, ...] = ()
        if self.state_dir is not None:
            stored = await trio.to_thread.run_sync(
                recent_bars, self.state_dir, list(self.symbols), self.interval, before_ms,
                bars)
        handed, self._handed = self._handed, []
        merged = {(b.symbol, b.open_time): b for b in (*stored, *handed)
                  if b.open_time < before_ms}
        per: dict[str, list[Bar]] = {}
        for key in sorted(merged, key=lambda k: (k[1], self.symbols.index(k[0]))):
            per.setdefault(key[0], []).append(merged[key])
        out = [b for sym_bars in per.values() for b in sym_bars[-bars:]]
        out.sort(key=lambda b: (b.open_time, self.symbols.index(b.symbol)))
        return tuple(out)

    def step_records(self, bars: Sequence[Bar]) -> tuple[Record, ...]:
        """The step's own bars as `bars` rows, committed with the step."""
        return tuple(bar_record(b, self.interval) for b in bars)

    def close(self) -> None:
        """Nothing to release synchronously (the HTTP client closes in `aclose`)."""

    def status(self) -> dict[str, Any]:
        """The feed's state for `ctl status`: stream, REST, and this source's counters."""
        st, rs = self.stream.status(), self.rest.status()
        return {"connected": st["connected"], "reconnects": st["reconnects"],
                "max_outage_s": st["max_outage_s"],
                "last_frame_age_s": st["last_frame_age_s"], "warmup_bars": self.warmup_bars,
                "backfilled_bars": self.backfilled, "history_bars": self.history_bars,
                "late_bars": self.late_bars, "holes": self.holes,
                "stream_bars": self.stream_bars,
                "skipped_steps": self.skipped_steps,
                "malformed_frames": st["malformed_frames"] + st["unexpected_frames"],
                "rest_weight_used": rs["weight_used"], "rest_weight_limit": rs["weight_limit"],
                "rest_banned": rs["banned"], "clock_offset_ms": rs["offset_ms"],
                "next_step": iso(self.next_ts) if self.next_ts else "-",
                "stream_error": st["last_error"], "rest_error": rs["last_error"]}

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep the stream up and decide steps until cancelled (or feed.end is passed).
        Safe to run again after it failed: it continues after `last_ts`."""
        while True:  # leftovers of an earlier run(): redone from last_ts
            try:
                self._ready_rx.receive_nowait()
            except trio.WouldBlock:
                break
        try:
            await self.sync_clock()
        except RestError as exc:  # prepare() measured it; the stream may still come up
            log.warning("exchange clock not re-measured at feed start (%s); keeping offset "
                        "%d ms", exc, self.clock.offset_ms)
        self._reset()
        events_tx, events_rx = trio.open_memory_channel[StreamEvent](math.inf)
        late_tx, late_rx = trio.open_memory_channel[tuple[str, int]](math.inf)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.stream.run, events_tx)
            nursery.start_soon(self._resync)
            async with trio.open_nursery() as workers:
                workers.start_soon(self._late_worker, late_rx)
                task_status.started()
                async with late_tx:
                    await self._pump(events_rx, late_tx)
            # late fetches are stored before the end is announced
            self._ready_tx.send_nowait(_END)
            nursery.cancel_scope.cancel()

    def _reset(self) -> None:
        now = self.clock.now_ms()
        # the first open time whose deadline has not passed: older bars are history
        first = (now - self.iv - self.deadline_ms) // self.iv * self.iv + self.iv
        self.next_ts = first if self.last_ts is None else max(first, self.last_ts + self.iv)
        self._pending.clear()
        self._up.clear()
        self.ended = False
        for s in self.symbols:  # undecided bars of an earlier run() are fetched again
            self.hwm[s] = min(self.hwm.get(s, self.next_ts - self.iv), self.next_ts - self.iv)
        log.info("live feed: %d symbols, first step %s (exchange clock %s, deadline %.1f s "
                 "after each close)", len(self.symbols), iso(self.next_ts), iso(now),
                 self.deadline_ms / 1000 / self.clock.speed)

    async def _resync(self) -> None:
        while True:
            await trio.sleep(self.resync_s)
            try:
                await self.sync_clock(samples=1)
            except RestError as exc:
                log.warning("exchange clock not re-measured: %s", exc)

    async def _pump(self, events: trio.MemoryReceiveChannel[StreamEvent],
                    late: trio.MemorySendChannel[tuple[str, int]]) -> None:
        """The one task that decides steps: events in arrival order, deadlines on the
        exchange clock."""
        while not self.ended:
            ev: StreamEvent | None = None
            with trio.move_on_at(self.clock.trio_time(self.next_ts + self.iv
                                                      + self.deadline_ms)):
                try:
                    ev = await events.receive()
                except trio.EndOfChannel:
                    return
            while ev is not None:  # everything already here, before judging deadlines
                await self._handle(ev)
                try:
                    ev = events.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    ev = None
            await self._advance(late)

    async def _handle(self, ev: StreamEvent) -> None:
        if isinstance(ev, Connected):
            self._up[ev.shard] = True
            if not ev.handover:
                try:  # what was missed is judged on the exchange's clock: measure it again
                    await self.sync_clock(samples=1)
                except RestError as exc:
                    log.warning("exchange clock not re-measured after connect: %s", exc)
                await self._backfill(ev.symbols)
        elif isinstance(ev, Disconnected):
            self._up[ev.shard] = False
        else:
            self.stream_bars += 1
            old = self._accept(ev.to_bar(), late=True)
            if old is not None:
                await self._store([old])

    def _accept(self, bar: Bar, *, late: bool) -> Bar | None:
        """Take a bar; return it if it is already decided (to be stored, not traded)."""
        s, t = bar.symbol, bar.open_time
        if s not in self._symset:
            return None
        if t < self.next_ts:
            if not self._seen.add(s, t):
                return None  # emitted or stored already
            if late and (s, t) in self._late_keys:
                self.late_arrivals += 1
                log.warning("bar late: %s %s arrived on the stream after its deadline, "
                            "stored, not traded", s, iso(t))
            return bar
        slot = self._pending.setdefault(t, {})
        if s not in slot:
            slot[s] = bar
            self.hwm[s] = max(self.hwm.get(s, t), t)
        return None

    async def _advance(self, late: trio.MemorySendChannel[tuple[str, int]]) -> None:
        """Emit every step that is complete or past its deadline, in open-time order."""
        now = self.clock.now_ms()
        while True:
            t = self.next_ts
            if self.end_ms is not None and t > self.end_ms:
                self.ended = True
                return
            slot = self._pending.get(t, {})
            if len(slot) < len(self.symbols) and now < t + self.iv + self.deadline_ms:
                return
            self._pending.pop(t, None)
            if slot:
                await self._ready_tx.send((t, tuple(slot[s] for s in sorted(slot))))
            else:
                self.skipped_steps += 1
            # while the stream is down, the reconnect's backfill fetches what is missing
            if self._up and all(self._up.values()):
                for s in self.symbols:
                    if s not in slot:
                        self.late_bars += 1
                        self._late_keys.add(s, t)
                        await late.send((s, t))
            self.next_ts = t + self.iv

    async def _late_worker(self, todo: trio.MemoryReceiveChannel[tuple[str, int]]) -> None:
        """Fetch each late bar over REST and store it (never emitted). A failed request, or
        a candle the exchange does not yet show as closed, is tried again with backoff: a
        hole would otherwise stay until a restart's warm-up."""
        async for s, t in todo:
            delay, problem = 0.25, "no closed candle yet"
            for _attempt in range(LATE_ATTEMPTS):
                if (s, t) in self._seen:
                    break  # the stream or a backfill brought it meanwhile
                try:  # with the next candle: closed and there, it tells a hole from a
                    bars = await self._fetch(s, t, t + 2 * self.iv)  # bar not closed yet
                except RestError as exc:
                    bars, problem = [], str(exc)
                mine = [b for b in bars if b.open_time == t]
                got = [b for b in mine if self._seen.add(b.symbol, b.open_time)]
                if got:
                    self.late_fetched += len(got)
                    await self._store(got)
                    log.warning("bar late: %s %s fetched over REST, not traded", s, iso(t))
                    break
                if mine:
                    break  # already seen: stored once
                if bars:  # a later candle closed and none at t: the exchange has none
                    self.holes += 1
                    log.warning("bar late: %s %s: the exchange has no such candle (a hole "
                                "in its data); nothing to store", s, iso(t))
                    break
                await trio.sleep(delay)
                delay = min(30.0, delay * 2)
            else:
                log.error("bar late: %s %s not fetched over REST after %d tries (%s); a "
                          "restart's warm-up fills the hole", s, iso(t), LATE_ATTEMPTS,
                          problem)

    async def _fetch(self, symbol: str, start: int, end: int) -> list[Bar]:
        out: list[Bar] = []
        async with aclosing(self.rest.closed_klines(symbol, self.interval, start,
                                                    end)) as pages:
            async for page in pages:
                out.extend(k.to_bar() for k in page)
        return out

    async def _backfill(self, symbols: Sequence[str]) -> None:
        """Closed bars since each symbol's newest known one, before any later stream event
        is used; retried (with the client's own retries inside) until it succeeds."""
        now = self.clock.now_ms()
        end = now - now % self.iv + self.iv  # through the forming candle (dropped: open)
        delay = 0.5
        while True:
            try:
                fetched = {s: await self._fetch(s, self.hwm.get(s, self.next_ts - self.iv)
                                                + self.iv, end) for s in symbols}
                break
            except RestError as exc:
                log.error("backfill after connect failed (%s); retrying in %.1f s", exc,
                          delay)
                await trio.sleep(delay)
                delay = min(30.0, delay * 2)
        history: list[Bar] = []
        fresh = 0
        for bars in fetched.values():
            for b in bars:
                old = self._accept(b, late=False)
                if old is not None:
                    history.append(old)
                elif b.open_time >= self.next_ts:
                    fresh += 1
        n = sum(map(len, fetched.values()))
        self.backfilled += n
        self.history_bars += len(history)
        if history:
            await self._store(history)
        log.info("backfill after connect: %d bars of %d symbols over REST: %d stored as "
                 "history, not traded (older than the next step %s), %d for the next "
                 "steps", n, len(symbols), len(history), iso(self.next_ts), fresh)

    async def _store(self, bars: Sequence[Bar]) -> None:
        if self.last_ts is None:  # before the first step: its history may need them
            self._handed.extend(bars)
        if self.store is not None and bars:
            await self.store(bars)
