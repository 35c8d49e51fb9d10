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

With a Q-learning agent (qtraderd.learning.rl) the rule's quantity is scaled by the agent's chosen
multiplier. The agent learns from what happened to its own entries, which the sizer
follows through later steps of the same chain (no second input, so no race):
* remembered per symbol (state, action, intent id) when the entry is emitted;
* confirmed by a Fill of that order id with reason "entry" in a later step; dropped at
  the symbol's next bar without one (risk denied it, or the broker refused it);
* rewarded when the Trade of that position closes (step.closed): reward is the trade's
  net return on the *rule's* margin, `return_pct * multiplier`. return_pct alone is the
  same for every size (PnL and margin both scale with qty), so it could not teach the
  agent anything about size; this way a bigger multiplier earns proportionally more
  where entries pay and loses more where they do not.
Every update's rows (rl_q upsert + rl_updates row) travel in the step that learned them,
so they are committed with it or not at all, and the table and the agent restored after
a crash always agree.

Plugins (qtraderd.plugins): an entry that passed the rule is shown to the signal filters
before the agent sizes it. A veto records the signal with action "veto" and reason
"plugin:NAME:why" and makes no order; a scale multiplies the quantity by a factor in
[0, 1] (the signal's reason names the filter). Filters can only shrink an entry, and risk
still applies every limit after them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from qtraderd.core.checkpoint import put, take
from qtraderd.core.config import Config, MonitorConfig, SizingConfig, per_quote
from qtraderd.core.costs import CostModel
from qtraderd.core.instruments import quote_asset
from qtraderd.core.messages import OrderIntent, Prediction, Record, Signal, Step, Trade, replace
from qtraderd.features.spec import FEATURE_NAMES
from qtraderd.learning.rl import QAgent, state_key
from qtraderd.plugins.host import PluginHost
from qtraderd.runtime.supervisor import StepActor

log = logging.getLogger("qtraderd.sizer")

_I_ATR = FEATURE_NAMES.index("atr_14")


@dataclass(slots=True)
class _Entry:
    """An entry the agent sized, followed until its trade closes (or it never fills)."""

    state: str
    action: int
    intent_id: str
    decided_ts: int  # the decision bar; its fill must come at the symbol's next bar
    fill_ts: int = 0  # set when confirmed; the Trade's entry_ts must match it


class SizerActor(StepActor):
    name = "sizer"

    def __init__(self, sizing: SizingConfig, monitor: MonitorConfig, costs: CostModel,
                 inbox: trio.MemoryReceiveChannel[Step],
                 outbox: trio.MemorySendChannel[Step], *, agent: QAgent | None = None,
                 plugins: PluginHost | None = None) -> None:
        """`agent`: a preloaded Q agent (see rl.restore); None or disabled = the rule alone.
        `plugins`: the daemon's plugin host (signal filters); None = no plugins."""
        super().__init__(inbox, outbox)
        self.plugins = plugins
        self.vetoed = 0
        self.agent = agent if agent is not None and agent.enabled else None
        self._records: list[Record] = []  # Q updates of the step being handled
        self._pending: dict[str, _Entry] = {}  # emitted, waiting for the fill
        self._open: dict[str, _Entry] = {}  # filled, waiting for the trade to close
        self._peak: dict[str, float] = {}  # running equity peak per quote
        self._drawdown: dict[str, float] = {}
        self.rl_dropped = 0  # entries that never filled
        self.rl_lost = 0  # positions that vanished without a Trade we could match
        self.cfg = sizing
        self.monitor = monitor
        self.costs = costs
        self.tp = sizing.take_profit_pct / 100.0
        self.sl = sizing.stop_loss_pct / 100.0
        self.min_edge = sizing.min_edge_pct / 100.0
        self._margins: dict[str, float] = {}  # per symbol, from cfg.margin (reset on reload)
        self.entries = 0
        self.skipped = 0

    def reconfigure(self, cfg: Config) -> None:
        """Entry thresholds, sizes and ATR settings; the agent's exploration and learning
        rates (its action space, rl.multipliers, needs a restart)."""
        self.cfg = cfg.sizing
        self.monitor = cfg.monitor
        self.tp = cfg.sizing.take_profit_pct / 100.0
        self.sl = cfg.sizing.stop_loss_pct / 100.0
        self.min_edge = cfg.sizing.min_edge_pct / 100.0
        self._margins = {}
        if self.agent is not None:
            self.agent.cfg = cfg.rl

    def _barriers(self, atr_frac: float) -> tuple[float, float]:
        if not self.monitor.atr_dynamic or not atr_frac > 0:
            return self.tp, self.sl
        tp = min(0.2, max(0.001, self.monitor.tp_atr_mult * atr_frac))
        sl = min(0.2, max(0.001, self.monitor.sl_atr_mult * atr_frac))
        return tp, sl

    def _side(self, p: Prediction) -> tuple[int, float]:
        """The likelier side and its probability (ties go long; shorts only if allowed)."""
        if self.cfg.allow_short and p.p_short > p.p_long:
            return -1, p.p_short
        return 1, p.p_long

    # -- crash-only state ----------------------------------------------------------------
    _STATE = ("_pending", "_open", "_peak", "_drawdown", "rl_dropped", "rl_lost",
              "entries", "skipped", "vetoed")

    def export_state(self) -> dict[str, Any]:
        """Entries followed for the agent, equity peaks, and the agent's table and random
        generator (the same draws after a restart as without one)."""
        state = take(self, self._STATE)
        if self.agent is not None:
            state["agent"] = self.agent.export_state()
        return state

    def restore_state(self, state: dict[str, Any]) -> None:
        put(self, state, self._STATE)
        if self.agent is not None and "agent" in state:
            self.agent.restore_state(state["agent"])

    def handle(self, step: Step) -> Step:
        out = self._handle(step)
        if self._records:  # Q updates are rows of this step: committed with it or not at all
            records, self._records = self._records, []
            out = replace(out, records=(*out.records, *records))
        return out

    def _handle(self, step: Step) -> Step:
        if self.agent is not None:
            self._follow(step)  # every step, before anything may return early
        if self.plugins is not None:
            self.plugins.observe_samples(step.samples)  # regime ages, every step
        ensemble = step.predictions  # the predictor sends the ensemble here
        if not ensemble:
            return step
        open_symbols = {p.symbol for p in step.positions}
        closes = {b.symbol: b.close for b in step.bars}
        samples = {s.symbol: s for s in step.samples}
        signals: list[Signal] = []
        intents: list[OrderIntent] = []
        for p in ensemble:
            side, prob = self._side(p)
            if prob < self.cfg.min_confidence:
                continue  # not a signal at all
            sample = samples[p.symbol]
            edge = self.costs.expected_edge(prob, self.tp, self.sl)
            price = closes[p.symbol]
            margin = self._margins.get(p.symbol)
            if margin is None:  # a lookup per symbol, not per prediction
                margin = self._margins[p.symbol] = per_quote(self.cfg.margin,
                                                             quote_asset(p.symbol))
            if p.symbol in open_symbols:
                action, reason = "skip", "position_open"
            elif edge <= self.min_edge:
                action, reason = "skip", "edge_below_costs"
            elif margin <= 0 or price <= 0:
                action, reason = "skip", "no_margin_for_quote"
            else:
                action, reason = "enter", "signal"
            scale = 1.0
            if action == "enter" and self.plugins is not None and self.plugins.filters:
                scale, why = self.plugins.filter_signal(p, side, prob, edge, sample, price,
                                                        step)
                if scale <= 0.0:
                    action, reason = "veto", why
                    self.vetoed += 1
                elif why:
                    reason = why
            signals.append(Signal(p.symbol, p.ts, side, prob, edge, sample.regime, action,
                                  reason))
            if action != "enter":
                self.skipped += 1
                continue
            tp, sl = self._barriers(sample.features[_I_ATR])
            intent_id = f"{step.seq}-{p.symbol}-E"
            qty = margin * self.cfg.leverage / price * scale
            mult, key = 1.0, ""
            if self.agent is not None:
                key = self._state(p.symbol, sample.regime, prob)
                action = self.agent.choose(key)
                mult = self.agent.multipliers[action]
                qty *= mult
                self._pending[p.symbol] = _Entry(key, action, intent_id, step.ts)
            intents.append(OrderIntent(
                id=intent_id, symbol=p.symbol, ts=step.ts, side=side,
                qty=qty, ref_price=price, purpose="entry",
                reason="signal", tp_pct=tp, sl_pct=sl, leverage=self.cfg.leverage,
                size_multiplier=mult, rl_state=key))
            self.entries += 1
        if not signals:
            return step
        return replace(step, signals=tuple(signals), intents=(*step.intents, *intents))

    # -- the agent's bookkeeping -------------------------------------------------------
    def _state(self, symbol: str, regime: str, prob: float) -> str:
        return state_key(regime, prob, self._drawdown.get(quote_asset(symbol), 0.0))

    def _follow(self, step: Step) -> None:
        """Drawdowns, then fills (confirm), bars without a fill (drop), closes (learn).

        Fills before closes: an entry can fill at the open and stop out in the same bar.
        A step without accounts had no broker snapshot (execution degraded): it says
        nothing about fills, so nothing is confirmed or dropped on it.
        """
        if not step.accounts:
            return
        for a in step.accounts:
            peak = max(self._peak.get(a.quote, a.equity), a.equity)
            self._peak[a.quote] = peak
            self._drawdown[a.quote] = 1.0 - a.equity / peak if peak > 0 else 0.0
        for f in step.fills:
            e = self._pending.get(f.symbol)
            # one pending entry per symbol: its fill is the symbol's entry fill after the
            # decision bar (fills name the venue's client id, not the intent)
            if f.reason == "entry" and e is not None and f.ts > e.decided_ts:
                e.fill_ts = f.ts
                self._open[f.symbol] = self._pending.pop(f.symbol)
        if self._pending:
            for b in step.bars:
                e = self._pending.get(b.symbol)
                if e is not None and b.open_time > e.decided_ts:
                    del self._pending[b.symbol]
                    self.rl_dropped += 1
        for t in step.closed:
            e = self._open.get(t.symbol)
            if e is not None and t.entry_ts == e.fill_ts:
                del self._open[t.symbol]
                self._reward(e, t, step)
        if self._open:
            held = {p.symbol for p in step.positions}
            for sym in [s for s in self._open if s not in held]:
                log.warning("rl: position %s closed without a matching trade; not learned",
                            sym)
                del self._open[sym]
                self.rl_lost += 1

    def _reward(self, e: _Entry, trade: Trade, step: Step) -> None:
        assert self.agent is not None
        nxt = None
        if self.agent.cfg.gamma > 0:  # s' = the state at the close, if the bar has one
            pred = next((p for p in step.predictions if p.symbol == trade.symbol), None)
            sample = next((s for s in step.samples if s.symbol == trade.symbol), None)
            if pred is not None and sample is not None:
                nxt = self._state(trade.symbol, sample.regime, self._side(pred)[1])
        reward = trade.return_pct * self.agent.multipliers[e.action]
        update = self.agent.learn(e.state, e.action, reward, nxt)
        self._records.extend(update.records(step.close_ts, trade.symbol))

    def rl_status(self) -> dict[str, Any]:
        """For `ctl rl`: the agent's table plus what the sizer is following right now."""
        if self.agent is None:
            return {"enabled": False}
        return {**self.agent.status(), "pending_entries": sorted(self._pending),
                "open_entries": sorted(self._open), "dropped_entries": self.rl_dropped,
                "lost_positions": self.rl_lost,
                "drawdown_pct": {q: round(100 * d, 3) for q, d in sorted(self._drawdown.items())}}

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"entries": self.entries, "skipped_signals": self.skipped}
        if self.plugins is not None and (self.vetoed or self.plugins.filters):
            out["plugin_vetoes"] = self.vetoed
        if self.agent is not None:
            out.update(rl_updates=self.agent.updates, rl_pending=len(self._pending),
                       rl_open=len(self._open))
        return out

    def publish(self) -> dict[str, Any]:
        return {**self.status(), "rl": self.rl_status()}
