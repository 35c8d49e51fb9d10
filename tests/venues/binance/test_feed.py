"""BinanceSource against a fake market on loopback (real HTTP and WebSocket sockets): steps
grouped by open time, a late symbol left out and fetched over REST (never emitted, stored
once), the backfill after a reconnect before any stream bar, the start-up warm-up and its
resumption. The market's clock runs at 600x (a 1m bar every 0.1 s) of Trio time, and the
tests run on Trio's autojump clock: time moves only while every task waits, so a loaded
machine cannot make a bar late (the sockets are still real; the kernel hands loopback data
over before the loop looks for the next timer)."""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from qtraderd.core.clock import LiveClock
from qtraderd.core.config import Config, load, with_changes
from qtraderd.core.instruments import quote_asset
from qtraderd.core.messages import Bar
from qtraderd.store.db import connect
from qtraderd.venues.binance.feed import BinanceSource
from qtraderd.venues.binance.warmup import missing_ranges
from tests.venues.binance.market import T0, Market, price

M1 = 60_000


def config(market: Market, **exchange: object) -> Config:
    ex = {"environment": "custom", "base_url": market.http.url, "ws_url": market.ws.url,
          "close_deadline_s": 0.25, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3}
    ex.update(exchange)
    return with_changes(load(env={}), feed={"source": "binance", "symbols": market.symbols,
                                            "interval": market.interval,
                                            "speed": market.speed}, exchange=ex)


class Consumer:
    """Runs a source like the feed actor does; keeps its steps and the bars it stored."""

    def __init__(self, source: BinanceSource, market: Market) -> None:
        self.source = source
        self.market = market
        # (open time, bars, how many REST requests the market had seen by then): under the
        # autojump clock no time passes between events, so order is told by that count
        self.steps: list[tuple[int, tuple[Bar, ...], int]] = []
        self.stored: list[Bar] = []
        self.finished = trio.Event()
        source.store = self._store

    async def _store(self, bars: object) -> None:
        self.stored.extend(bars)  # type: ignore[arg-type]

    async def start(self, nursery: trio.Nursery) -> Consumer:
        await nursery.start(self.source.run)
        nursery.start_soon(self._consume)
        return self

    async def _consume(self) -> None:
        async for ts, bars in self.source.batches():
            self.steps.append((ts, bars, len(self.market.http.requests)))
        self.finished.set()

    def emitted(self) -> list[tuple[str, int]]:
        return [(b.symbol, b.open_time) for _, bars, _ in self.steps for b in bars]

    def every_bar(self) -> list[tuple[str, int]]:
        """Each bar the feed handed on: in a step or to the store."""
        return self.emitted() + [(b.symbol, b.open_time) for b in self.stored]


async def run_market(market: Market, *, end_bar: int, **exchange: object) -> Consumer:
    async with trio.open_nursery() as n:
        await market.start(n)
        source = BinanceSource(config(market, **exchange), market.symbols,
                               LiveClock(market.speed), end_ms=market.open_time(end_bar))
        c = await Consumer(source, market).start(n)
        with trio.fail_after(10):
            await c.finished.wait()
        n.cancel_scope.cancel()
    await source.aclose()
    return c


def check_exactly_once(c: Consumer, market: Market, end_bar: int) -> None:
    """From the first step to the end: every bar emitted or stored, none twice."""
    first = c.steps[0][0]
    got = c.every_bar()
    assert len(got) == len(set(got)), "a bar was handed on twice"
    want = {k for k in market.all_bars(first) if k[1] <= market.open_time(end_bar)}
    assert set(got) >= want
    ts = [t for t, _, _ in c.steps]
    assert ts == sorted(set(ts)), "steps not strictly increasing"


async def test_steps_grouped_by_open_time_even_out_of_order(autojump_clock):
    m = Market(("AAAUSDT", "BBBUSDT", "CCCUSDT"), history=10, live=8)
    m.delay[("CCCUSDT", m.open_time(1))] = 1  # comes after bar 2's klines, within deadline
    c = await run_market(m, end_bar=7, close_deadline_s=0.6)
    # a deadline of 6 bars (0.6 s at 600x): the last history bars are recent enough to
    # trade (from the backfill at connect), older ones were not
    first = c.steps[0][0]
    assert T0 - 7 * M1 <= first <= T0 - M1
    assert [t for t, _, _ in c.steps] == list(range(first, m.open_time(8), M1))
    for t, bars, _ in c.steps:
        assert [b.symbol for b in bars] == ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
        assert all(b.open_time == t for b in bars)
        b = bars[0]
        assert b.open == price("AAAUSDT", t, M1) and b.high == b.open + 1
    assert c.stored == [] and c.source.late_bars == 0
    check_exactly_once(c, m, 7)


async def test_late_symbol_left_out_fetched_over_rest_stored_once_never_emitted(
        caplog, autojump_clock):
    caplog.set_level(logging.INFO)
    m = Market(("AAAUSDT", "BBBUSDT"), history=5, live=10)
    t2, t4 = m.open_time(2), m.open_time(4)
    m.hold.add(("BBBUSDT", t2))  # never on the stream
    m.delay[("BBBUSDT", t4)] = 4  # on the stream 0.4 s late: after its 0.25 s deadline
    c = await run_market(m, end_bar=9)
    steps = {t: [b.symbol for b in bars] for t, bars, _ in c.steps}
    assert steps[t2] == ["AAAUSDT"] and steps[t4] == ["AAAUSDT"]
    assert all(syms == ["AAAUSDT", "BBBUSDT"] for t, syms in steps.items() if t not in (t2, t4))
    stored = [(b.symbol, b.open_time) for b in c.stored]
    assert sorted(stored) == [("BBBUSDT", t2), ("BBBUSDT", t4)]
    rest = [r.query for r in m.http.requests if r.path == "/fapi/v1/klines"]
    assert {"symbol": "BBBUSDT", "startTime": str(t2)}.items() <= next(
        q for q in rest if q["startTime"] == str(t2)).items()
    text = caplog.text
    assert f"bar late: BBBUSDT {_iso(t2)} fetched over REST, not traded" in text
    assert c.source.late_bars == 2
    check_exactly_once(c, m, 9)


async def test_a_hole_in_the_exchange_data_is_given_up_at_once_not_retried(
        caplog, autojump_clock):
    """A candle the exchange never has (its data has holes) is not "not closed yet": once
    the next candle is closed the late fetch stops, instead of ten tries with backoff that
    held the end of a dry run for minutes per hole."""
    caplog.set_level(logging.INFO)
    m = Market(("AAAUSDT", "BBBUSDT"), history=5, live=10)
    t2 = m.open_time(2)
    m.gone.add(("BBBUSDT", t2))
    c = await run_market(m, end_bar=9)
    asked = [r for r in m.http.requests if r.path == "/fapi/v1/klines"
             and r.query.get("symbol") == "BBBUSDT" and r.query["startTime"] == str(t2)]
    assert 1 <= len(asked) <= 2, len(asked)  # the first try, maybe one before the next closed
    assert f"bar late: BBBUSDT {_iso(t2)}: the exchange has no such candle" in caplog.text
    assert "not fetched over REST" not in caplog.text
    assert c.source.holes == 1 and ("BBBUSDT", t2) not in c.every_bar()
    assert [b.symbol for t, bars, _ in c.steps if t == t2 for b in bars] == ["AAAUSDT"]


async def test_reconnect_backfills_before_stream_bars_no_gap_no_duplicate(
        caplog, autojump_clock):
    caplog.set_level(logging.INFO)
    m = Market(("AAAUSDT", "BBBUSDT"), history=5, live=16)
    m.blackout(3, 9)  # connections dropped and refused while bars 3..8 close
    c = await run_market(m, end_bar=15)
    check_exactly_once(c, m, 15)
    missed = {m.open_time(k) for k in range(3, 9)}
    assert not missed & {t for t, _, _ in c.steps if t < m.open_time(7)}
    history = {(b.symbol, b.open_time) for b in c.stored}
    # stored, not traded: the bars missed during the blackout, and (timing) a bar whose
    # deadline passed while the first connection was still coming up
    first_step = min(t for t, _, _ in c.steps)
    assert history and all(t in missed or t >= m.open_time(9) or t < first_step
                           for _, t in history)
    # the backfill's requests came before the first step after the reconnect
    backfill = [i for i, r in enumerate(m.http.requests) if r.path == "/fapi/v1/klines"
                and int(r.query["startTime"]) == m.open_time(3)]
    assert {m.http.requests[i].query["symbol"] for i in backfill} == {"AAAUSDT", "BBBUSDT"}
    seen_by_then = min(n for t, _, n in c.steps if t > m.open_time(2))
    assert max(backfill) < seen_by_then
    assert "stored as history, not traded" in caplog.text
    assert c.source.stream.reconnects >= 1 and c.source.history_bars == len(history)
    st = c.source.status()
    assert st["backfilled_bars"] >= len(history) and st["clock_offset_ms"] is not None


async def test_warm_up_stores_history_and_a_restart_fetches_only_what_is_missing(
        tmp_path: Path, autojump_clock):
    m = Market(("AAAUSDT", "BBBUSDT"), history=300, live=6)
    days = 200 * M1 / 86_400_000
    conn = connect(tmp_path)

    def counts() -> dict[str, int]:
        return dict(conn.execute("SELECT symbol, count(*) FROM bars WHERE interval='1m' "
                                 "GROUP BY symbol").fetchall())

    def klines_requests(since: int) -> list[dict[str, str]]:
        return [r.query for r in m.http.requests[since:] if r.path == "/fapi/v1/klines"]

    async def prepare() -> BinanceSource:
        source = BinanceSource(config(m, warmup_days=days), m.symbols, LiveClock(m.speed))
        await source.prepare(conn)
        await source.aclose()
        return source

    async with trio.open_nursery() as n:
        await m.start(n)
        first = await prepare()
        assert counts() == {"AAAUSDT": 200, "BBBUSDT": 200}
        assert first.warmup_bars == 400
        assert quote_asset("AAAUSDT") == "USDT"  # the exchange's filters are the instruments
        last = conn.execute("SELECT max(open_time) FROM bars").fetchone()[0]
        with trio.fail_after(5):
            await m.bar_done[2].wait()  # three more bars closed meanwhile
        mark = len(m.http.requests)
        await prepare()
        again = klines_requests(mark)
        assert sorted(q["symbol"] for q in again) == ["AAAUSDT", "BBBUSDT"]
        assert all(q["startTime"] == str(last + M1) for q in again)
        grown = counts()
        assert grown["AAAUSDT"] == grown["BBBUSDT"] >= 203
        hole = (last - 100 * M1, last - 90 * M1)
        conn.execute("DELETE FROM bars WHERE symbol='AAAUSDT' AND open_time>=? AND "
                     "open_time<?", hole)
        mark = len(m.http.requests)
        await prepare()
        asked = [q for q in klines_requests(mark) if q["symbol"] == "AAAUSDT"]
        assert asked[0]["startTime"] == str(hole[0])
        assert asked[0]["endTime"] == str(hole[1] - 1)
        assert counts()["AAAUSDT"] >= grown["AAAUSDT"]
        n.cancel_scope.cancel()
    rows = conn.execute("SELECT symbol, open_time, open, volume FROM bars WHERE "
                        "symbol='BBBUSDT' ORDER BY open_time").fetchall()
    times = [r[1] for r in rows]
    assert times == list(range(times[0], times[-1] + M1, M1))  # no gap
    assert rows[0][2] == price("BBBUSDT", rows[0][1], M1)
    conn.close()


def test_missing_ranges_are_the_runs_of_missing_bars_cut_at_a_page():
    assert missing_ranges([], 0, 50, 10) == [(0, 50)]
    assert missing_ranges([10, 20], 0, 50, 10) == [(0, 10), (30, 50)]
    assert missing_ranges(range(0, 50, 10), 0, 50, 10) == []
    assert missing_ranges([], 0, 50, 10, page=2) == [(0, 20), (20, 40), (40, 50)]
    assert missing_ranges([20], 5, 45, 10) == [(10, 20), (30, 45)]


def _iso(ms: int) -> str:
    from qtraderd.core.clock import iso

    return iso(ms)
