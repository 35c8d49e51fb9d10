"""Sizer actor: the seed's rule-based "Math AI" — from ensemble probabilities to orders.

For each symbol with an ensemble prediction it picks the likelier side (long, or short
when allowed), and enters only if
* that side's probability is at least `min_confidence`, and
* the expected net return after costs is above `min_edge_pct`:
  p * TP - (1 - p) * SL - round-trip costs (costs.CostModel.expected_edge; conservative,
  it counts every non-win as a full stop).
Size: `margin` (in the pair's quote currency) times `leverage`, at the last close; the
order fills at the next bar's open. TP/SL distances are the configured percentages, or
ATR multiples when `monitor.atr_dynamic` is on. Risk may still reduce or deny the order.
"""

from __future__ import annotations

from typing import Any

import trio

from qtraderd.config import MonitorConfig, SizingConfig, per_quote
from qtraderd.costs import CostModel
from qtraderd.features import FEATURE_NAMES
from qtraderd.messages import OrderIntent, Signal, Step, replace
from qtraderd.supervisor import StepActor
from qtraderd.venues.paper import quote_of

_I_ATR = FEATURE_NAMES.index("atr_14")


class SizerActor(StepActor):
    name = "sizer"

    def __init__(self, sizing: SizingConfig, monitor: MonitorConfig, costs: CostModel,
                 inbox: trio.MemoryReceiveChannel[Step],
                 outbox: trio.MemorySendChannel[Step]) -> None:
        super().__init__(inbox, outbox)
        self.cfg = sizing
        self.monitor = monitor
        self.costs = costs
        self.tp = sizing.take_profit_pct / 100.0
        self.sl = sizing.stop_loss_pct / 100.0
        self.min_edge = sizing.min_edge_pct / 100.0
        self.entries = 0
        self.skipped = 0

    def _barriers(self, atr_frac: float) -> tuple[float, float]:
        if not self.monitor.atr_dynamic or not atr_frac > 0:
            return self.tp, self.sl
        tp = min(0.2, max(0.001, self.monitor.tp_atr_mult * atr_frac))
        sl = min(0.2, max(0.001, self.monitor.sl_atr_mult * atr_frac))
        return tp, sl

    def handle(self, step: Step) -> Step:
        ensemble = step.predictions  # the predictor sends the ensemble here
        if not ensemble:
            return step
        open_symbols = {p.symbol for p in step.positions}
        closes = {b.symbol: b.close for b in step.bars}
        samples = {s.symbol: s for s in step.samples}
        signals: list[Signal] = []
        intents: list[OrderIntent] = []
        for p in ensemble:
            if self.cfg.allow_short and p.p_short > p.p_long:
                side, prob = -1, p.p_short
            else:
                side, prob = 1, p.p_long
            if prob < self.cfg.min_confidence:
                continue  # not a signal at all
            sample = samples[p.symbol]
            edge = self.costs.expected_edge(prob, self.tp, self.sl)
            price = closes[p.symbol]
            margin = per_quote(self.cfg.margin, quote_of(p.symbol))
            if p.symbol in open_symbols:
                action, reason = "skip", "position_open"
            elif edge <= self.min_edge:
                action, reason = "skip", "edge_below_costs"
            elif margin <= 0 or price <= 0:
                action, reason = "skip", "no_margin_for_quote"
            else:
                action, reason = "enter", "signal"
            signals.append(Signal(p.symbol, p.ts, side, prob, edge, sample.regime, action,
                                  reason))
            if action != "enter":
                self.skipped += 1
                continue
            tp, sl = self._barriers(sample.features[_I_ATR])
            intents.append(OrderIntent(
                id=f"{step.seq}-{p.symbol}-E", symbol=p.symbol, ts=step.ts, side=side,
                qty=margin * self.cfg.leverage / price, ref_price=price, purpose="entry",
                reason="signal", tp_pct=tp, sl_pct=sl, leverage=self.cfg.leverage))
            self.entries += 1
        if not signals:
            return step
        return replace(step, signals=tuple(signals), intents=(*step.intents, *intents))

    def status(self) -> dict[str, Any]:
        return {"entries": self.entries, "skipped_signals": self.skipped}
