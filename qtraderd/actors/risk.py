"""Risk actor: the last word on every order, and the trading state machine.

States: ACTIVE; REDUCING (a loss limit is `reduce_at` of the way to breached: entries are
scaled by `reduce_factor`); HALTED (drawdown or daily loss breached, or `ctl halt`: no new
entries; exits always pass). Equity arrives with each step, marked at the bar's close,
so a breach halts entries on the same bar it happens. A daily-loss halt lifts at the next
UTC day; a drawdown or manual halt holds until `ctl resume`, which also resets the
drawdown reference to current equity (otherwise the same breach would re-halt at once).

Venue rejections (REJECTED order updates, reason `binance CODE: msg` from
core.orders.rejection_reason) are counted by the step's close time, never wall time, so a
replay halts on the same bar: `max_rejections` of them within `rejection_window_min`
minutes halt trading (REJECTIONS) until `ctl resume`, which also clears the window. The
window is checkpointed with the rest of the state, so a restart does not forget it.

Every entry passes through the limits in a fixed order — state, pause, open position,
leverage, open positions, then notional, symbol and total exposure and free margin, which
reduce the size — and every decision carries a reason code that is recorded with the
order. Per-symbol statistics and pauses live in portfolio.Portfolio.

Plugins (qtraderd.plugins): an entry that passed every built-in limit is put to the risk
rules last, in NAME order; a denial is recorded like a built-in one, with the reason code
"plugin:NAME:code". Exits never go to plugins. The finished step's events (entries filled,
trades closed, risk and symbol state changes) are queued for the notifier plugins, and
events caused by commands as soon as they happen — never blocking.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import trio

from qtraderd.core.checkpoint import put, take
from qtraderd.core.clock import Clock, iso
from qtraderd.core.config import Config, PortfolioConfig, RiskConfig, per_quote
from qtraderd.core.costs import CostModel
from qtraderd.core.enums import OrderStatus, RiskState
from qtraderd.core.instruments import quote_asset
from qtraderd.core.messages import (
    AccountView,
    Command,
    OrderIntent,
    Record,
    RiskDecision,
    RiskEvent,
    Step,
    replace,
)
from qtraderd.core.portfolio import Portfolio
from qtraderd.plugins.host import PluginHost
from qtraderd.runtime.supervisor import StepActor, answer

log = logging.getLogger("qtraderd.risk")

ACTIVE, REDUCING, HALTED = RiskState.ACTIVE, RiskState.REDUCING, RiskState.HALTED
DAY_MS = 86_400_000
CHANGES = ("halt", "resume", "flatten", "pause", "resume-symbol")  # commands that change state
MIN_FRACTION = 0.2  # an entry cut below this share of its request is denied instead
MAX_REASON = 200  # a halt reason is one line of text (control.schema checks it first)
MINUTE_MS = 60_000


@dataclass
class _Account:
    peak: float
    day: int
    day_start: float
    equity: float = 0.0
    drawdown: float = 0.0
    daily_loss: float = 0.0


class RiskActor(StepActor):
    name = "risk"

    def __init__(self, cfg: RiskConfig, portfolio_cfg: PortfolioConfig, costs: CostModel,
                 clock: Clock, interval_ms: int, inbox: trio.MemoryReceiveChannel[Step],
                 outbox: trio.MemorySendChannel[Step],
                 commands: trio.MemoryReceiveChannel[Command],
                 records: trio.MemorySendChannel[Record] | None = None,
                 plugins: PluginHost | None = None, stale_after_ms: int | None = None
                 ) -> None:
        """`stale_after_ms` (live trading: risk.max_signal_age_s): an entry decided on a
        bar that closed longer ago than this — a catch-up step after a start or an
        outage — is denied (STALE_BAR): its order would no longer fill near the next
        open, as the backtest assumes, but at whatever the price is by then."""
        super().__init__(inbox, outbox)
        self.stale_after_ms = stale_after_ms
        self.plugins = plugins  # risk rules and event notifications; None = no plugins
        self.records = records  # events caused by commands are written at once
        self._in_command = False
        self.cfg = cfg
        self.costs = costs
        self.clock = clock
        self.commands = commands
        self.portfolio = Portfolio(portfolio_cfg, interval_ms)
        self.state = ACTIVE
        self.reason = ""
        self.reason_code = ""
        self.manual_halt = False
        self.drawdown_latched = False
        self.rejections: list[tuple[int, str]] = []  # (step close ms, reason), in window
        self.rejections_latched = ""  # the REJECTIONS halt's detail until ctl resume
        self.halted_since = 0  # clock ms of the transition into HALTED
        self.manual_reason = ""  # the first `ctl halt` reason since the last resume
        self.accounts: dict[str, _Account] = {}
        self.denied = 0
        self.reduced = 0
        self._flatten = False
        self._pending_events: list[RiskEvent] = []
        self._last_step_ts = 0
        self._last_seq = 0  # the last step handled: where a command falls between steps
        self._replaying = False

    # -- the actor -----------------------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._command_loop)
            try:
                await super().run()
            finally:
                nursery.cancel_scope.cancel()

    async def _command_loop(self) -> None:
        async for cmd in self.commands:
            try:
                result: Any = self.command(cmd.name, cmd.args)
                if cmd.name in CHANGES and self.records is not None:
                    # Durable before the answer: a restart from a checkpoint taken before
                    # this command re-applies it (reapply), so a ctl halt survives a crash.
                    await self.records.send(Record("risk_commands", {
                        "after_seq": self._last_seq, "name": cmd.name,
                        "args": json.dumps(cmd.args, sort_keys=True, default=str)}))
            except (KeyError, ValueError) as exc:
                result = {"error": str(exc)}
            self.changed()
            answer(cmd, result)

    def reconfigure(self, cfg: Config) -> None:
        """New limits apply from the next step's evaluation (a loosened limit can lift a
        DAILY_LOSS halt there; a drawdown or manual halt still needs `ctl resume`)."""
        self.cfg = cfg.risk
        self.portfolio.reconfigure(cfg.portfolio)

    # -- crash-only state ----------------------------------------------------------------
    _STATE = ("portfolio", "state", "reason", "reason_code", "manual_halt", "drawdown_latched",
              "accounts", "denied", "reduced", "_flatten", "_pending_events", "_last_step_ts",
              "_last_seq", "halted_since", "manual_reason", "rejections",
              "rejections_latched")

    def export_state(self) -> dict[str, Any]:
        """The state machine, its day and drawdown figures, symbol stats and pauses."""
        return take(self, self._STATE)

    def restore_state(self, state: dict[str, Any]) -> None:
        cfg = self.portfolio.cfg
        state = {"halted_since": state.get("_last_step_ts", 0),  # older checkpoints
                 "manual_reason": state.get("reason", ""), "rejections": [],
                 "rejections_latched": "", **state}
        put(self, state, self._STATE)
        self.portfolio.reconfigure(cfg)  # the limits in force now, not the stored ones
        if state.get("reapply"):
            self.reapply(state["reapply"])

    def reapply(self, commands: list[tuple[str, dict[str, Any]]]) -> None:
        """Commands given after the restored checkpoint (recorded in `risk_commands`),
        applied again in order. Their events were recorded the first time: not again."""
        self._replaying = True
        try:
            for name, args in commands:
                try:
                    self.command(name, args)
                    log.warning("risk: re-applied ctl %s from before the restart", name)
                except (KeyError, ValueError) as exc:
                    log.warning("risk: ctl %s from before the restart no longer applies: %s",
                                name, exc)
        finally:
            self._replaying = False

    # -- commands (from the control socket) ---------------------------------------------
    def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        self._in_command = True
        try:
            return self._command(name, args)
        finally:
            self._in_command = False

    def _command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        ts = self.clock.now_ms()
        if name == "halt":
            if not self.manual_halt:
                self.manual_reason = _reason(args)
            self.manual_halt = True
            if self.state == HALTED:
                # The first reason stands (a second halt must not hide why trading
                # stopped); the halt now also holds until `ctl resume`: if a limit halted
                # trading, the ctl halt's reason takes over when that limit lifts.
                note = f"already halted since {iso(self.halted_since)} ({self.reason})"
                log.warning("risk: ctl halt: %s", note)
                return {**self.status(), "note": note}
            self._transition(HALTED, "MANUAL", self.manual_reason, ts)
        elif name == "resume":
            self.manual_halt = False
            self.manual_reason = ""
            self.drawdown_latched = False
            self.rejections, self.rejections_latched = [], ""
            for acc in self.accounts.values():
                acc.peak = acc.day_start = acc.equity
                acc.drawdown = acc.daily_loss = 0.0
            self._transition(ACTIVE, "RESUMED", "ctl resume: loss references reset", ts)
        elif name == "flatten":
            self._flatten = True
            log.warning("flatten requested: closing every position at the next bar")
        elif name == "pause":
            symbol = _symbol(args)
            ev = self.portfolio.pause(symbol, ts, "MANUAL", "ctl pause", self.state, manual=True)
            self._record(ev)
            log.warning("symbol paused: %s (ctl pause)", symbol)
        elif name == "resume-symbol":
            symbol = _symbol(args)
            ev = self.portfolio.resume(symbol, ts, self.state, "ctl resume-symbol")
            if ev is None:
                raise ValueError(f"symbol {symbol} is not paused")
            self._record(ev)
            log.warning("symbol resumed: %s (ctl resume-symbol)", symbol)
        elif name != "status":
            raise ValueError(f"risk has no command {name!r}")
        return self.status()

    # -- one step ------------------------------------------------------------------------
    def handle(self, step: Step) -> Step:
        self._last_step_ts = step.close_ts
        self._last_seq = step.seq
        events = self._pending_events
        self._pending_events = []
        for trade in step.closed:
            for ev in self.portfolio.on_trade(trade, step.close_ts, self.state):
                log.warning("symbol paused: %s (%s)", ev.symbol, ev.detail)
                events.append(ev)
        for ev in self.portfolio.expire(step.close_ts, self.state):
            log.info("symbol resumed: %s (pause expired)", ev.symbol)
            events.append(ev)
        self._count_rejections(step)
        for alert in step.venue_alerts:
            self._venue_halt(alert, step.close_ts)
        self._evaluate(step.accounts, step.close_ts)
        events.extend(self._pending_events)
        self._pending_events = []
        intents = list(step.intents)
        if self._flatten and step.accounts:  # no accounts: no broker snapshot (degraded)
            self._flatten = False
            exiting = {i.symbol for i in intents if i.purpose == "exit"}
            for pos in step.positions:
                if pos.symbol not in exiting:
                    intents.append(OrderIntent(
                        id=f"{step.seq}-{pos.symbol}-F", symbol=pos.symbol, ts=step.ts,
                        side=-pos.side, qty=pos.qty, ref_price=pos.mark_price,
                        purpose="exit", reason="flatten"))
        decisions = self._decide(intents, step) if intents else []
        if self.plugins is not None:
            self.plugins.step_events(step, events)
        return replace(step, intents=tuple(intents), decisions=tuple(decisions),
                       risk_state=self.state, risk_events=(*step.risk_events, *events))

    def _venue_halt(self, alert: str, ts: int) -> None:
        """The venue found something trading must not go on with (an unknown position on
        the exchange): a halt that holds like `ctl halt`, until `ctl resume`."""
        if not self.manual_halt:
            self.manual_reason = alert
        self.manual_halt = True
        if self.state != HALTED:
            self._transition(HALTED, "MANUAL", alert, ts)
        else:
            log.warning("risk: venue alert while halted: %s", alert)

    def _count_rejections(self, step: Step) -> None:
        """Add the step's REJECTED updates to the window (at the step's close time) and
        halt when `max_rejections` of them fall within `rejection_window_min` minutes."""
        new = [u.reason or "no reason given" for u in step.orders
               if u.status == OrderStatus.REJECTED]
        if not new and not self.rejections:
            return
        ts = step.close_ts
        window = int(self.cfg.rejection_window_min * MINUTE_MS)
        kept = [r for r in self.rejections if ts - r[0] <= window]
        kept.extend((ts, reason) for reason in new)
        n = self.cfg.max_rejections
        self.rejections = kept[-n:] if n > 0 else []
        if n <= 0 or len(kept) < n or not new or self.rejections_latched:
            return
        self.rejections_latched = (f"{len(kept)} order rejections within "
                                   f"{self.cfg.rejection_window_min:g} min (last: {new[-1]})")
        if self.state == HALTED and self.reason_code in ("MANUAL", "DRAWDOWN"):
            return  # that halt stands; this one takes over when it lifts (_evaluate)
        self._transition(HALTED, "REJECTIONS", self.rejections_latched, ts)

    def _evaluate(self, accounts: tuple[AccountView, ...], ts: int) -> None:
        if not accounts:
            return  # no equity on this step (execution degraded): no news, keep the state
        day = ts // DAY_MS
        worst_dd = worst_daily = 0.0
        for a in accounts:
            st = self.accounts.get(a.quote)
            if st is None:
                st = self.accounts[a.quote] = _Account(peak=a.equity, day=day,
                                                       day_start=a.equity)
            if day != st.day:
                st.day, st.day_start = day, a.equity
            st.equity = a.equity
            st.peak = max(st.peak, a.equity)
            st.drawdown = 1.0 - a.equity / st.peak if st.peak > 0 else 0.0
            st.daily_loss = 1.0 - a.equity / st.day_start if st.day_start > 0 else 0.0
            worst_dd = max(worst_dd, st.drawdown)
            worst_daily = max(worst_daily, st.daily_loss)
        c = self.cfg
        dd_limit, daily_limit = c.max_drawdown_pct / 100.0, c.daily_loss_pct / 100.0
        if worst_dd >= dd_limit:
            self.drawdown_latched = True
        if self.manual_halt and self.state == HALTED and self.reason_code == "MANUAL":
            return  # a ctl halt stands until ctl resume, whatever else happens meanwhile
        if self.drawdown_latched:
            target, reason = HALTED, "DRAWDOWN"
            detail = f"drawdown {worst_dd:.2%} (limit {dd_limit:.2%})"
        elif self.rejections_latched:
            target, reason, detail = HALTED, "REJECTIONS", self.rejections_latched
        elif worst_daily >= daily_limit:
            target, reason = HALTED, "DAILY_LOSS"
            detail = f"daily loss {worst_daily:.2%} (limit {daily_limit:.2%})"
        elif self.manual_halt:  # a limit halted first; now only the ctl halt holds
            target, reason, detail = HALTED, "MANUAL", self.manual_reason or "ctl halt"
        elif worst_dd >= c.reduce_at * dd_limit or worst_daily >= c.reduce_at * daily_limit:
            target, reason = REDUCING, "NEAR_LIMIT"
            detail = f"drawdown {worst_dd:.2%}, daily loss {worst_daily:.2%}"
        else:
            target, reason, detail = ACTIVE, "WITHIN_LIMITS", ""
        if target != self.state or (target == HALTED and reason != self.reason_code):
            self._transition(target, reason, detail, ts)  # e.g. DAILY_LOSS -> DRAWDOWN

    def _transition(self, state: str, reason: str, detail: str, ts: int) -> None:
        prev = self.state
        if state == prev and reason == self.reason_code and reason != "MANUAL":
            return
        if state == HALTED and prev != HALTED:
            self.halted_since = ts
        self.state, self.reason_code, self.reason = state, reason, detail or reason
        logger = log.warning if state != ACTIVE else log.info
        logger("risk state %s (%s%s; was %s)", state, reason, f": {detail}" if detail else "",
               prev)
        self._record(RiskEvent(ts, state, prev, reason, detail))

    def _record(self, ev: RiskEvent) -> None:
        """Step-driven events travel with their step; command events need not wait for one
        (a halted or finished replay may never send another bar)."""
        if self._replaying:
            return
        if self._in_command and self.records is not None:
            try:
                self.records.send_nowait(Record("risk_events", {
                    "ts": ev.ts, "state": ev.state, "prev_state": ev.prev_state,
                    "reason": ev.reason, "detail": ev.detail, "symbol": ev.symbol}))
                if self.plugins is not None:
                    self.plugins.emit_risk_event(ev)
                return
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        self._pending_events.append(ev)

    def _decide(self, intents: list[OrderIntent], step: Step) -> list[RiskDecision]:
        c = self.cfg
        accounts = {a.quote: a for a in step.accounts}
        held = {p.symbol for p in step.positions}
        open_count = len(step.positions)
        extra_exposure: dict[str, float] = {}
        extra_margin: dict[str, float] = {}
        out: list[RiskDecision] = []
        for it in intents:
            if it.purpose == "exit":
                out.append(RiskDecision(it.id, it.symbol, "allow", "EXIT", it.qty))
                continue
            deny = None
            quote = quote_asset(it.symbol)
            acct = accounts.get(quote)
            if self.state == HALTED:
                deny = "HALTED"
            elif self.portfolio.is_paused(it.symbol):
                deny = "SYMBOL_PAUSED"
            elif it.symbol in held:
                deny = "POSITION_OPEN"
            elif (self.stale_after_ms is not None
                  and self.clock.now_ms() - step.close_ts > self.stale_after_ms):
                deny = "STALE_BAR"
            elif it.leverage > c.max_leverage:
                deny = "MAX_LEVERAGE"
            elif open_count >= c.max_open_positions:
                deny = "MAX_OPEN_POSITIONS"
            elif acct is None or acct.equity <= 0:
                deny = "NO_EQUITY"
            if deny is not None or acct is None:
                out.append(RiskDecision(it.id, it.symbol, "deny", deny or "NO_EQUITY", 0.0))
                self.denied += 1
                continue
            price, qty, reason = it.ref_price, it.qty, "OK"
            equity = acct.equity
            if self.state == REDUCING:
                qty, reason = qty * c.reduce_factor, "REDUCING"
            cap = c.max_order_notional_pct / 100.0 * equity
            absolute = per_quote(c.max_order_notional, quote, 0.0)
            if absolute > 0:
                cap = min(cap, absolute)
            limits = (
                (cap, "MAX_NOTIONAL"),
                (c.max_symbol_exposure_pct / 100.0 * equity, "SYMBOL_EXPOSURE"),
                (c.max_total_exposure_pct / 100.0 * equity - acct.exposure
                 - extra_exposure.get(quote, 0.0), "TOTAL_EXPOSURE"),
            )
            for room, code in limits:
                if qty * price > room:
                    qty, reason = max(0.0, room) / price, code
            free = equity - acct.margin_used - extra_margin.get(quote, 0.0)
            per_unit = price / it.leverage + price * self.costs.taker_fee
            if qty * per_unit > free:
                qty, reason = max(0.0, free) / per_unit, "INSUFFICIENT_MARGIN"
            if qty < MIN_FRACTION * it.qty:
                out.append(RiskDecision(it.id, it.symbol, "deny", reason, 0.0))
                self.denied += 1
                continue
            if self.plugins is not None:
                code = self.plugins.check_order(it, qty, acct, step, self.state)
                if code is not None:
                    out.append(RiskDecision(it.id, it.symbol, "deny", code, 0.0))
                    self.denied += 1
                    continue
                self.plugins.note_entry(it.symbol, step.close_ts)
            action = "allow" if reason == "OK" else "reduce"
            if action == "reduce":
                self.reduced += 1
            out.append(RiskDecision(it.id, it.symbol, action, reason, qty))
            open_count += 1
            extra_exposure[quote] = extra_exposure.get(quote, 0.0) + qty * price
            extra_margin[quote] = extra_margin.get(quote, 0.0) + qty * price / it.leverage
        return out

    def status(self) -> dict[str, Any]:
        return {
            "risk_state": self.state,
            "reason": self.reason,
            "denied": self.denied,
            "reduced": self.reduced,
            # the limits in force (a config reload may have changed them)
            "daily_loss_limit_pct": self.cfg.daily_loss_pct,
            "drawdown_limit_pct": self.cfg.max_drawdown_pct,
            "max_open_positions": self.cfg.max_open_positions,
            "rejections_in_window": len(self.rejections),
            "max_rejections": self.cfg.max_rejections,
            "paused_symbols": self.portfolio.paused(),
            "accounts": {q: {"drawdown_pct": round(100 * a.drawdown, 3),
                             "daily_loss_pct": round(100 * a.daily_loss, 3)}
                         for q, a in sorted(self.accounts.items())},
        }

    def publish(self) -> dict[str, Any]:
        return {**self.status(), "state": self.state, "portfolio": self.portfolio.stats()}


def _symbol(args: dict[str, Any]) -> str:
    """The command's symbol (control.schema has checked it; re-applied commands read back
    from the store have not been through the socket this time)."""
    symbol = args.get("symbol", "")
    if not isinstance(symbol, str) or not symbol.strip():
        raise ValueError(f"this command needs a SYMBOL, got {symbol!r:.60}")
    return symbol.strip().upper()


def _reason(args: dict[str, Any]) -> str:
    """A halt reason as one line of text, whatever arrived: it becomes a log line and a
    `risk_events` row, and a value the store cannot hold must never get that far."""
    reason = args.get("reason")
    text = reason if isinstance(reason, str) else "" if reason is None else repr(reason)
    text = " ".join(text.split())[:MAX_REASON]
    return text or "ctl halt"


