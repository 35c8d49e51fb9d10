"""Monitor actor: manages open positions' exits after each bar.

TP/SL orders rest at the broker and trigger inside each bar's range there (stop first
when both are touched). The monitor decides how they move, from the closed bar:
* trailing stop: once the best price since entry is `trailing_activation_pct` in profit,
  the stop follows it at `trailing_callback_pct` (like Binance's TRAILING_STOP_MARKET
  with an activation price and callback rate); it only ever tightens;
* time stop: a position held `time_stop_bars` bars is closed at the next open.
ATR-based TP/SL distances are chosen at entry by the sizer (`monitor.atr_dynamic`).
Amendments apply from the next bar: the path inside the bar that produced them is unknown.
"""

from __future__ import annotations

from typing import Any

import trio

from qtraderd.core.config import Config, MonitorConfig
from qtraderd.core.messages import Amend, OrderIntent, Step, replace
from qtraderd.runtime.supervisor import StepActor


class MonitorActor(StepActor):
    name = "monitor"

    def __init__(self, cfg: MonitorConfig, inbox: trio.MemoryReceiveChannel[Step],
                 outbox: trio.MemorySendChannel[Step]) -> None:
        super().__init__(inbox, outbox)
        self.cfg = cfg
        self.activation = cfg.trailing_activation_pct / 100.0
        self.callback = cfg.trailing_callback_pct / 100.0
        self.trail_moves = 0
        self.time_stops = 0

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg.monitor
        self.activation = cfg.monitor.trailing_activation_pct / 100.0
        self.callback = cfg.monitor.trailing_callback_pct / 100.0

    def handle(self, step: Step) -> Step:
        if not step.positions:
            return step
        has_bar = {b.symbol for b in step.bars}
        amends: list[Amend] = []
        exits: list[OrderIntent] = []
        for pos in step.positions:
            if pos.symbol not in has_bar:
                continue
            if self.cfg.time_stop_bars and pos.bars_held >= self.cfg.time_stop_bars:
                exits.append(OrderIntent(
                    id=f"{step.seq}-{pos.symbol}-T", symbol=pos.symbol, ts=step.ts,
                    side=-pos.side, qty=pos.qty, ref_price=pos.mark_price, purpose="exit",
                    reason="time_stop"))
                self.time_stops += 1
                continue
            if self.cfg.trailing:
                gain = pos.side * (pos.best_price / pos.entry_price - 1.0)
                if gain >= self.activation:
                    trail = pos.best_price * (1.0 - pos.side * self.callback)
                    tighter = trail > pos.stop_price if pos.side > 0 else (
                        pos.stop_price == 0.0 or trail < pos.stop_price)
                    if tighter:
                        amends.append(Amend(pos.symbol, trail, pos.take_price, "trailing"))
                        self.trail_moves += 1
        if not amends and not exits:
            return step
        return replace(step, amends=(*step.amends, *amends), intents=(*step.intents, *exits))

    def status(self) -> dict[str, Any]:
        return {"trailing_moves": self.trail_moves, "time_stops": self.time_stops}
