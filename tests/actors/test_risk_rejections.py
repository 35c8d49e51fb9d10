"""Venue rejections halt trading: `risk.max_rejections` REJECTED order updates within
`risk.rejection_window_min` minutes of step time put risk into HALTED (REJECTIONS), the
reason names Binance's code and message, and the window survives a checkpoint."""

from __future__ import annotations

import logging
import sqlite3
from collections import defaultdict
from typing import Any

import pytest

from qtraderd.actors.risk import ACTIVE, HALTED
from qtraderd.core.config import ConfigError, load
from qtraderd.core.enums import OrderStatus
from qtraderd.core.messages import OrderUpdate, Step, replace
from qtraderd.core.orders import rejection_code, rejection_reason
from qtraderd.store.rows import SQL, step_rows
from qtraderd.store.schema import migrate
from tests.actors.test_risk import DAY0, IV, SYM, decision, entry, make, step

MIN = 60_000
MARGIN = rejection_reason(-2019, "Margin is insufficient.")


def rejected(i: int, *, n: int = 1, reason: str = MARGIN, equity: float | None = 10_000.0,
             intents: tuple[Any, ...] = ()) -> Step:
    """Step `i` (5 min bars) carrying `n` REJECTED updates from phase A."""
    s = step(i, equity=equity, intents=intents)
    ups = tuple(OrderUpdate(f"q1-{i}-{SYM}-E{k}", SYM, s.ts, OrderStatus.REJECTED, reason,
                            prev="new") for k in range(n))
    return replace(s, orders=ups)


# ---------------------------------------------------------------- the reason's one form


def test_rejection_reason_is_the_stable_binance_form() -> None:
    assert MARGIN == "binance -2019: Margin is insufficient."
    assert rejection_reason(-1111, "Precision is over\n the maximum  defined.") == (
        "binance -1111: Precision is over the maximum defined.")
    assert len(rejection_reason(-4164, "x" * 500)) == 200
    assert rejection_code(rejection_reason(-4120, "Order type not supported")) == -4120
    assert rejection_code("position already open") is None


def test_the_reason_is_what_order_events_stores() -> None:
    s = rejected(3, reason=rejection_reason(-4164, "Order's notional must be no smaller "
                                                   "than 5 (unless you choose reduce only)."))
    out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    step_rows(7, s, out)
    conn = sqlite3.connect(":memory:")
    migrate(conn)
    conn.executemany(SQL["order_events"], out["order_events"])
    (reason, to), = conn.execute("SELECT reason, to_status FROM order_events").fetchall()
    assert to == "rejected"
    assert reason.startswith("binance -4164: Order's notional must be no smaller than 5")
    assert rejection_code(reason) == -4164


# ---------------------------------------------------------------------------- config


def test_config_keys_defaults_and_bounds() -> None:
    cfg = load(env={})
    assert (cfg.risk.max_rejections, cfg.risk.rejection_window_min) == (5, 10.0)
    with pytest.raises(ConfigError, match=r"risk\.max_rejections"):
        load(env={"QT_RISK_MAX_REJECTIONS": "-1"})
    with pytest.raises(ConfigError, match=r"risk\.rejection_window_min"):
        load(env={"QT_RISK_REJECTION_WINDOW_MIN": "0"})


# -------------------------------------------------------------------------- the halt


def test_one_rejection_fewer_than_the_limit_does_not_halt() -> None:
    r = make({"max_rejections": 5, "rejection_window_min": 10})
    for i, n in ((0, 2), (1, 1), (2, 1)):  # 4 within 10 minutes (closes at 5, 10, 15)
        assert r.handle(rejected(i, n=n)).risk_state == ACTIVE
    assert r.status()["rejections_in_window"] == 4
    assert decision(r.handle(step(3, intents=(entry(),)))).action == "allow"


def test_the_limit_within_the_window_halts_with_the_code_in_the_reason(caplog) -> None:
    r = make({"max_rejections": 5, "rejection_window_min": 10})
    for i in range(2):  # bars close 5 min apart: steps 0..2 span 10 minutes
        r.handle(rejected(i, n=2))
    caplog.set_level(logging.WARNING, logger="qtraderd.risk")
    out = r.handle(rejected(2, reason=rejection_reason(-1111, "Precision is over the "
                                                              "maximum defined for this asset."),
                            intents=(entry(),)))
    assert out.risk_state == HALTED
    assert decision(out).reason == "HALTED"  # the same step's entry is already denied
    (ev,) = out.risk_events
    assert (ev.state, ev.reason) == (HALTED, "REJECTIONS")
    assert ev.detail == ("5 order rejections within 10 min (last: binance -1111: Precision "
                         "is over the maximum defined for this asset.)")
    assert r.reason_code == "REJECTIONS" and "binance -1111" in r.status()["reason"]
    assert ("risk state HALTED (REJECTIONS: 5 order rejections within 10 min (last: "
            "binance -1111:") in caplog.text


def test_the_limit_spread_beyond_the_window_does_not_halt() -> None:
    r = make({"max_rejections": 3, "rejection_window_min": 10})
    for i in (0, 3, 6, 9, 12):  # 15 minutes apart: never 3 within 10
        assert r.handle(rejected(i)).risk_state == ACTIVE
    assert r.status()["rejections_in_window"] == 1
    # ... but three inside one window do, counted by the steps' close times
    r.handle(rejected(13))
    assert r.handle(rejected(14)).risk_state == HALTED


def test_other_order_updates_do_not_count() -> None:
    r = make({"max_rejections": 2})
    s = rejected(0, n=3)
    s = replace(s, orders=tuple(replace(u, status=st) for u, st in zip(
        s.orders, (OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.FILLED),
        strict=True)))
    assert r.handle(s).risk_state == ACTIVE
    assert r.status()["rejections_in_window"] == 0


def test_a_step_without_accounts_still_halts() -> None:
    r = make({"max_rejections": 2})
    assert r.handle(rejected(0, n=2, equity=None)).risk_state == HALTED


def test_the_halt_holds_until_resume_which_clears_the_window() -> None:
    r = make({"max_rejections": 2, "rejection_window_min": 5})
    r.handle(rejected(0, n=2))
    for i in range(1, 40):  # the window has long passed; equity is fine: still halted
        assert r.handle(step(i)).risk_state == HALTED
    r.command("resume", {})
    assert r.state == ACTIVE
    assert r.status()["rejections_in_window"] == 0
    assert r.handle(rejected(40)).risk_state == ACTIVE  # one more is not two


def test_zero_disables() -> None:
    r = make({"max_rejections": 0})
    assert r.handle(rejected(0, n=50)).risk_state == ACTIVE
    st = r.status()
    assert (st["max_rejections"], st["rejections_in_window"]) == (0, 0)


def test_a_drawdown_halt_is_not_replaced_by_rejections() -> None:
    r = make({"max_rejections": 2, "max_drawdown_pct": 10})
    r.handle(step(0, equity=10_000))
    r.handle(step(1, equity=8_000))
    assert r.reason_code == "DRAWDOWN"
    out = r.handle(rejected(2, n=2, equity=8_000))
    assert (out.risk_state, r.reason_code, out.risk_events) == (HALTED, "DRAWDOWN", ())
    assert r.rejections_latched.startswith("2 order rejections")


def test_rejections_outlast_a_daily_loss_halt() -> None:
    """Daily loss halts; rejections then take over, and the next UTC day stays halted."""
    r = make({"max_rejections": 2, "daily_loss_pct": 5, "max_drawdown_pct": 50})
    r.handle(step(0, equity=10_000))
    assert r.handle(step(1, equity=9_400)).risk_state == HALTED
    assert r.reason_code == "DAILY_LOSS"
    out = r.handle(rejected(2, n=2, equity=9_400))
    assert [(e.prev_state, e.reason) for e in out.risk_events] == [(HALTED, "REJECTIONS")]
    nxt = r.handle(step(0, equity=9_400, day=1))
    assert (nxt.risk_state, r.reason_code) == (HALTED, "REJECTIONS")


# ------------------------------------------------------------------------- restart


def test_the_window_survives_export_and_restore() -> None:
    r = make({"max_rejections": 3, "rejection_window_min": 10})
    r.handle(rejected(0, n=2))
    state = r.export_state()
    fresh = make({"max_rejections": 3, "rejection_window_min": 10})
    fresh.restore_state(state)
    assert fresh.status()["rejections_in_window"] == 2
    assert fresh.handle(rejected(1)).risk_state == HALTED  # 3 within 10 min across it


def test_the_rejection_halt_survives_export_and_restore() -> None:
    r = make({"max_rejections": 2})
    r.handle(rejected(0, n=2))
    fresh = make({"max_rejections": 2})
    fresh.restore_state(r.export_state())
    out = fresh.handle(step(50, intents=(entry(),)))
    assert (out.risk_state, fresh.reason_code) == (HALTED, "REJECTIONS")
    assert decision(out).reason == "HALTED"


def test_counting_uses_step_time_not_the_wall_clock() -> None:
    """Two runs over the same steps halt on the same step, whatever the clock says."""
    def run(clock_ms: int) -> int:
        from qtraderd.core.clock import ReplayClock
        r = make({"max_rejections": 3, "rejection_window_min": 10},
                 clock=ReplayClock(clock_ms))
        for i in (0, 1, 4, 5, 6):
            if r.handle(rejected(i)).risk_state == HALTED:
                return i
        return -1
    assert run(DAY0) == run(DAY0 + 10 * 86_400_000) == 6
    assert IV == 5 * MIN
