"""SizerActor.handle: from ensemble probabilities to signals and sized entry intents."""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any

import pytest
import trio

from qtraderd.actors.sizer import SizerActor
from qtraderd.core.config import load, with_changes
from qtraderd.core.costs import CostModel
from qtraderd.core.messages import (
    AccountView,
    Bar,
    Fill,
    ModelOutput,
    OrderIntent,
    PositionView,
    Prediction,
    Record,
    Sample,
    Signal,
    Step,
    Trade,
    replace,
)
from qtraderd.features.spec import FEATURE_NAMES
from qtraderd.learning.rl import QAgent

IV = 300_000
T0 = 1_700_000_000_000 - (1_700_000_000_000 % IV)
SEQ = 11
TS = T0 + SEQ * IV
I_ATR = FEATURE_NAMES.index("atr_14")
RT = 2 * (0.0005 + 0.0002)  # default round trip


def sizer(sizing: dict[str, object] | None = None,
          monitor: dict[str, object] | None = None) -> SizerActor:
    cfg = with_changes(load(env={}), sizing=sizing or {}, monitor=monitor or {})
    send, recv = trio.open_memory_channel[Step](1)
    return SizerActor(cfg.sizing, cfg.monitor, CostModel.from_config(cfg.costs), recv, send)


def features(atr: float = 0.0) -> tuple[float, ...]:
    row = [0.0] * len(FEATURE_NAMES)
    row[I_ATR] = atr
    return tuple(row)


def pred(symbol: str, p_long: float, p_short: float, model: str = "ensemble") -> Prediction:
    return Prediction(symbol, TS, model, "v1", p_long, p_short)


def step(*preds: Prediction, closes: dict[str, float] | None = None, atr: float = 0.0,
         positions: tuple[PositionView, ...] = (), intents: tuple[OrderIntent, ...] = (),
         regime: str = "range") -> Step:
    closes = closes or {p.symbol: 0.05 for p in preds}
    bars = tuple(Bar(s, TS, c, c, c, c, 1.0) for s, c in sorted(closes.items()))
    samples = tuple(Sample(s, TS, features(atr), regime) for s in sorted(closes))
    return Step(seq=SEQ, ts=TS, close_ts=TS + IV, bars=bars, samples=samples,
                predictions=preds, positions=positions, intents=intents)


def position(symbol: str) -> PositionView:
    return PositionView(symbol, "BTC", 1, 1.0, 0.05, T0, 0.0496, 0.0508, 0.0167, 3, 0.05,
                        False, 0.05, 0.0)


def edge(p: float, tp: float = 0.016, sl: float = 0.008) -> float:
    return p * tp - (1 - p) * sl - RT


def test_only_the_ensemble_is_traded_not_single_models() -> None:
    """Single models' outputs ride along in model_outputs; without an ensemble there is
    nothing to size, however confident one model is."""
    s = step(closes={"ETHBTC": 0.05})
    s = replace(s, model_outputs=(ModelOutput("xgboost", "v1", TS, ("ETHBTC",), (0.9,),
                                              (0.05,)),))
    assert sizer().handle(s) is s


def test_below_min_confidence_is_not_a_signal() -> None:
    sz = sizer()
    s = step(pred("ETHBTC", 0.29, 0.25))
    out = sz.handle(s)
    assert out is s
    assert out.signals == () and out.intents == ()
    assert sz.status() == {"entries": 0, "skipped_signals": 0}


def test_negative_edge_gives_a_skip_signal() -> None:
    sz = sizer()
    out = sz.handle(step(pred("ETHBTC", 0.35, 0.10), regime="trend_up"))
    (sig,) = out.signals
    assert sig == Signal("ETHBTC", TS, 1, 0.35, pytest.approx(edge(0.35)), "trend_up", "skip",
                         "edge_below_costs")
    assert sig.edge < 0
    assert out.intents == ()
    assert sz.status() == {"entries": 0, "skipped_signals": 1}


def test_at_breakeven_edge_is_skipped() -> None:
    p = CostModel.from_config(load(env={}).costs).breakeven_win_rate(0.016, 0.008)
    out = sizer().handle(step(pred("ETHBTC", p - 1e-9, 0.0)))
    assert out.signals[0].action == "skip"
    out = sizer().handle(step(pred("ETHBTC", p + 1e-6, 0.0)))
    assert out.signals[0].action == "enter"


def test_long_entry_qty_uses_the_btc_margin_for_ethbtc() -> None:
    sz = sizer()
    out = sz.handle(step(pred("ETHBTC", 0.6, 0.1), closes={"ETHBTC": 0.05}))
    (sig,) = out.signals
    assert (sig.side, sig.action, sig.reason) == (1, "enter", "signal")
    assert sig.confidence == 0.6
    assert sig.edge == pytest.approx(0.005)
    (it,) = out.intents
    assert it.qty == pytest.approx(0.025 * 3.0 / 0.05)  # 1.5 ETH
    assert it == OrderIntent(id=f"{SEQ}-ETHBTC-E", symbol="ETHBTC", ts=TS, side=1,
                             qty=pytest.approx(1.5), ref_price=0.05, purpose="entry",
                             reason="signal", tp_pct=pytest.approx(0.016),
                             sl_pct=pytest.approx(0.008), leverage=3.0)
    assert sz.status() == {"entries": 1, "skipped_signals": 0}


def test_usdt_pair_uses_the_usdt_margin() -> None:
    out = sizer().handle(step(pred("XRPUSDT", 0.6, 0.1), closes={"XRPUSDT": 0.5}))
    (it,) = out.intents
    assert it.qty == pytest.approx(300.0 * 3.0 / 0.5)


def test_margin_table_and_leverage_from_config() -> None:
    sz = sizer({"margin": {"BTC": 0.01, "*": 50.0}, "leverage": 2.0})
    out = sz.handle(step(pred("ETHBTC", 0.6, 0.1), pred("XRPUSDT", 0.6, 0.1),
                         closes={"ETHBTC": 0.04, "XRPUSDT": 0.5}))
    by_symbol = {i.symbol: i for i in out.intents}
    assert by_symbol["ETHBTC"].qty == pytest.approx(0.01 * 2.0 / 0.04)
    assert by_symbol["XRPUSDT"].qty == pytest.approx(50.0 * 2.0 / 0.5)
    assert {i.leverage for i in out.intents} == {2.0}


def test_short_chosen_when_p_short_beats_p_long() -> None:
    out = sizer().handle(step(pred("ETHBTC", 0.3, 0.6)))
    (sig,) = out.signals
    assert sig.side == -1 and sig.confidence == 0.6 and sig.action == "enter"
    (it,) = out.intents
    assert it.side == -1 and it.qty == pytest.approx(1.5)


def test_tie_goes_long() -> None:
    (sig,) = sizer().handle(step(pred("ETHBTC", 0.5, 0.5))).signals
    assert sig.side == 1


def test_shorts_not_allowed_falls_back_to_the_long_side() -> None:
    sz = sizer({"allow_short": False})
    out = sz.handle(step(pred("ETHBTC", 0.2, 0.7)))
    assert out.signals == () and out.intents == ()  # p_long 0.2 < min_confidence
    (sig,) = sz.handle(step(pred("ETHBTC", 0.32, 0.6))).signals
    assert sig.side == 1 and sig.confidence == 0.32


def test_custom_min_confidence() -> None:
    sz = sizer({"min_confidence": 0.55})
    assert sz.handle(step(pred("ETHBTC", 0.54, 0.1))).signals == ()
    assert sz.handle(step(pred("ETHBTC", 0.55, 0.1))).signals[0].action == "enter"


def test_min_edge_pct() -> None:
    # p=0.6: edge 0.5 % of notional
    assert sizer({"min_edge_pct": 0.6}).handle(
        step(pred("ETHBTC", 0.6, 0.1))).signals[0].reason == "edge_below_costs"
    assert sizer({"min_edge_pct": 0.4}).handle(
        step(pred("ETHBTC", 0.6, 0.1))).signals[0].reason == "signal"


def test_open_position_skips_the_entry() -> None:
    sz = sizer()
    out = sz.handle(step(pred("ETHBTC", 0.8, 0.1), pred("LTCBTC", 0.8, 0.1),
                         positions=(position("ETHBTC"),)))
    sigs = {s.symbol: s for s in out.signals}
    assert (sigs["ETHBTC"].action, sigs["ETHBTC"].reason) == ("skip", "position_open")
    assert sigs["LTCBTC"].action == "enter"
    assert [i.symbol for i in out.intents] == ["LTCBTC"]
    assert sz.status() == {"entries": 1, "skipped_signals": 1}


def test_existing_intents_are_kept() -> None:
    exit_intent = OrderIntent("7-LTCBTC-T", "LTCBTC", TS, -1, 1.0, 0.01, "exit", "time_stop")
    out = sizer().handle(step(pred("ETHBTC", 0.8, 0.1), intents=(exit_intent,)))
    assert out.intents[0] == exit_intent
    assert [i.purpose for i in out.intents] == ["exit", "entry"]


def test_atr_dynamic_barriers() -> None:
    sz = sizer(monitor={"atr_dynamic": True, "tp_atr_mult": 3.0, "sl_atr_mult": 1.5})
    (it,) = sz.handle(step(pred("ETHBTC", 0.8, 0.1), atr=0.004)).intents
    assert it.tp_pct == pytest.approx(0.012)
    assert it.sl_pct == pytest.approx(0.006)


def test_atr_dynamic_barriers_are_clamped() -> None:
    sz = sizer(monitor={"atr_dynamic": True})
    (it,) = sz.handle(step(pred("ETHBTC", 0.8, 0.1), atr=0.1)).intents
    assert (it.tp_pct, it.sl_pct) == (pytest.approx(0.2), pytest.approx(0.15))
    (it,) = sz.handle(step(pred("ETHBTC", 0.8, 0.1), atr=0.0001)).intents
    assert (it.tp_pct, it.sl_pct) == (pytest.approx(0.001), pytest.approx(0.001))


@pytest.mark.parametrize("atr", [0.0, -0.01, math.nan])
def test_atr_dynamic_without_a_usable_atr_uses_fixed_pcts(atr: float) -> None:
    sz = sizer(monitor={"atr_dynamic": True})
    (it,) = sz.handle(step(pred("ETHBTC", 0.8, 0.1), atr=atr)).intents
    assert (it.tp_pct, it.sl_pct) == (pytest.approx(0.016), pytest.approx(0.008))


def test_atr_ignored_when_not_dynamic() -> None:
    (it,) = sizer().handle(step(pred("ETHBTC", 0.8, 0.1), atr=0.004)).intents
    assert (it.tp_pct, it.sl_pct) == (pytest.approx(0.016), pytest.approx(0.008))


def test_configured_tp_sl_pcts_reach_the_intent_and_the_edge() -> None:
    sz = sizer({"take_profit_pct": 3.0, "stop_loss_pct": 1.0})
    out = sz.handle(step(pred("ETHBTC", 0.4, 0.1)))
    assert out.signals[0].edge == pytest.approx(edge(0.4, 0.03, 0.01))
    (it,) = out.intents
    assert (it.tp_pct, it.sl_pct) == (pytest.approx(0.03), pytest.approx(0.01))


def test_default_config_is_what_these_tests_assume() -> None:
    s = load(env={}).sizing
    assert (s.margin, s.leverage, s.min_confidence, s.min_edge_pct, s.allow_short) == (
        {"BTC": 0.025, "USDT": 300.0}, 3.0, 0.30, 0.0, True)
    assert (s.take_profit_pct, s.stop_loss_pct) == (1.6, 0.8)


# -- the Q-learning agent (qtraderd.learning.rl) scaling the rule's size ----------------

def rl_sizer(rl: dict[str, object] | None = None, agent: QAgent | None = None,
             sizing: dict[str, object] | None = None) -> SizerActor:
    cfg = with_changes(load(env={}), sizing=sizing or {}, rl={"epsilon": 0.0, **(rl or {})})
    send, recv = trio.open_memory_channel[Step](1)
    return SizerActor(cfg.sizing, cfg.monitor, CostModel.from_config(cfg.costs), recv, send,
                      agent=agent or QAgent(cfg.rl, cfg.seed))


def replace_rl(cfg: Any, **changes: Any) -> Any:
    """A copy of an RLConfig (frozen dataclass) with some fields changed."""
    return dataclasses.replace(cfg, **changes)


def account(equity: float = 1.0, quote: str = "BTC") -> AccountView:
    return AccountView(quote, equity, equity, 0.0, 0.0, 0)


def at(k: int, *preds: Prediction, closes: dict[str, float] | None = None,
       fills: tuple[Fill, ...] = (), closed: tuple[Trade, ...] = (),
       positions: tuple[PositionView, ...] = (), equity: float = 1.0,
       regime: str = "range") -> Step:
    """Step number SEQ + k, with bars for `closes` (default ETHBTC) and the BTC account."""
    ts = TS + k * IV
    closes = closes or {"ETHBTC": 0.05}
    bars = tuple(Bar(s, ts, c, c, c, c, 1.0) for s, c in sorted(closes.items()))
    samples = tuple(Sample(s, ts, features(), regime) for s in sorted(closes))
    preds = tuple(replace(p, ts=ts) for p in preds)
    return Step(seq=SEQ + k, ts=ts, close_ts=ts + IV, bars=bars, samples=samples,
                predictions=preds, fills=fills, closed=closed, positions=positions,
                accounts=(account(equity),))


def entry_fill(k: int, symbol: str = "ETHBTC", qty: float = 1.5) -> Fill:
    return Fill(f"{SEQ}-{symbol}-E", symbol, TS + k * IV, 1, qty, 0.05, 0.0, "taker", "entry")


def trade(k_in: int, k_out: int, ret: float, symbol: str = "ETHBTC") -> Trade:
    return Trade(1, symbol, "BTC", 1, 1.5, TS + k_in * IV, 0.05, TS + k_out * IV, 0.051,
                 0.0015, 0.0001, 0.0014, ret, "take_profit", k_out - k_in)


def drain(rx: trio.MemoryReceiveChannel[Record]) -> list[Record]:
    out = []
    while True:
        try:
            out.append(rx.receive_nowait())
        except trio.WouldBlock:
            return out


def test_disabled_agent_is_the_rule_alone_and_records_nothing() -> None:
    plain = sizer()
    off = rl_sizer({"enabled": False, "epsilon": 1.0})
    assert off.agent is None
    for k, p in enumerate([pred("ETHBTC", 0.6, 0.1), pred("ETHBTC", 0.3, 0.7)]):
        s = at(k * 2, p)
        assert off.handle(s) == plain.handle(s)
    s = at(1, fills=(entry_fill(1),), positions=(position("ETHBTC"),))
    assert off.handle(s) is s
    assert off.handle(at(2, closed=(trade(1, 2, 3.0),))).records == ()
    assert off.status() == plain.status()
    assert off.rl_status() == {"enabled": False}


def test_untrained_agent_sizes_like_the_rule_and_tags_the_intent() -> None:
    sz = rl_sizer()
    (it,) = sz.handle(at(0, pred("ETHBTC", 0.47, 0.1), regime="trend_up")).intents
    assert it.qty == pytest.approx(1.5) and it.size_multiplier == 1.0
    assert it.rl_state == "trend_up|c2|d0"
    assert sz.status() == {"entries": 1, "skipped_signals": 0, "rl_updates": 0,
                           "rl_pending": 1, "rl_open": 0}


def test_the_chosen_multiplier_scales_the_rule_quantity() -> None:
    cfg = load(env={}).rl
    agent = QAgent(replace_rl(cfg, epsilon=0.0), 1)
    agent.learn("range|c4|d0", agent.multipliers.index(1.5), 2.0)
    agent.learn("range|c4|d0", agent.multipliers.index(1.0), 1.0)
    (it,) = rl_sizer(agent=agent).handle(at(0, pred("ETHBTC", 0.8, 0.1))).intents
    assert it.qty == pytest.approx(1.5 * 1.5) and it.size_multiplier == 1.5


def test_entry_fill_close_gives_one_update_with_the_trade_return() -> None:
    sz = rl_sizer({"alpha": 0.5})
    (it,) = sz.handle(at(0, pred("ETHBTC", 0.55, 0.1))).intents
    assert (it.size_multiplier, it.rl_state) == (1.0, "range|c3|d0")
    sz.handle(at(1, fills=(entry_fill(1),), positions=(position("ETHBTC"),)))
    assert sz.status()["rl_open"] == 1 and sz.status()["rl_pending"] == 0
    for k in (2, 3):  # held: nothing happens, and no new entry while the position is open
        sz.handle(at(k, pred("ETHBTC", 0.9, 0.0), positions=(position("ETHBTC"),)))
    assert sz.agent is not None and sz.agent.updates == 0
    done = sz.handle(at(4, closed=(trade(1, 4, 4.8),)))
    assert sz.agent.updates == 1
    assert sz.agent.q["range|c3|d0"][2] == pytest.approx(0.5 * 4.8)
    rq, ru = done.records  # rows of this step: committed with it, or not at all
    assert rq == Record("rl_q", {"state": "range|c3|d0", "action": 1000,
                                 "q": pytest.approx(2.4), "n": 1,
                                 "updated_ts": TS + 5 * IV}, mode="replace")
    assert "run_id" not in rq.row
    assert ru == Record("rl_updates", {"ts": TS + 5 * IV, "symbol": "ETHBTC",
                                       "state": "range|c3|d0", "action": 1000,
                                       "multiplier": 1.0, "reward": 4.8,
                                       "q": pytest.approx(2.4)})
    assert sz.status()["rl_open"] == 0
    sz.handle(at(5, closed=(trade(1, 4, 4.8),)))  # a repeat is not learned twice
    assert sz.agent.updates == 1


def test_reward_is_the_return_on_the_rules_margin() -> None:
    """return_pct is the same at any size; scaled by the multiplier it tells sizes apart."""
    cfg = load(env={}).rl
    agent = QAgent(replace_rl(cfg, epsilon=0.0, alpha=1.0), 1)
    agent.learn("range|c3|d0", agent.multipliers.index(0.5), 0.1)
    sz = rl_sizer(agent=agent)
    (it,) = sz.handle(at(0, pred("ETHBTC", 0.55, 0.1))).intents
    assert it.size_multiplier == 0.5
    sz.handle(at(1, fills=(entry_fill(1, qty=it.qty),), positions=(position("ETHBTC"),)))
    sz.handle(at(2, closed=(trade(1, 2, -2.0),)))
    assert agent.q["range|c3|d0"][0] == pytest.approx(-1.0)


def test_fill_and_stop_in_the_same_bar_is_learned() -> None:
    sz = rl_sizer()
    sz.handle(at(0, pred("ETHBTC", 0.55, 0.1)))
    sz.handle(at(1, fills=(entry_fill(1),), closed=(trade(1, 1, -2.5),)))
    assert sz.agent is not None and sz.agent.updates == 1
    assert sz.agent.n["range|c3|d0"] == [0, 0, 1, 0, 0]


def test_denied_entry_is_dropped_at_the_next_bar_and_never_learned() -> None:
    sz = rl_sizer()
    sz.handle(at(0, pred("ETHBTC", 0.55, 0.1)))
    sz.handle(at(1))  # the bar came, the fill did not: risk denied it
    assert sz.status()["rl_pending"] == 0 and sz.rl_dropped == 1
    out = sz.handle(at(3, closed=(trade(1, 3, 5.0),)))  # someone else's trade
    assert sz.agent is not None and sz.agent.updates == 0 and out.records == ()


def test_pending_entry_waits_for_the_symbols_own_next_bar() -> None:
    sz = rl_sizer()
    sz.handle(at(0, pred("ETHBTC", 0.55, 0.1), pred("LTCBTC", 0.2, 0.1),
                 closes={"ETHBTC": 0.05, "LTCBTC": 0.01}))
    sz.handle(at(1, closes={"LTCBTC": 0.01}))  # no ETHBTC bar in this step: keep waiting
    assert sz.status()["rl_pending"] == 1
    sz.handle(at(2, fills=(entry_fill(2),), positions=(position("ETHBTC"),)))
    assert sz.status()["rl_open"] == 1


def test_degraded_step_without_a_broker_snapshot_drops_nothing() -> None:
    sz = rl_sizer()
    sz.handle(at(0, pred("ETHBTC", 0.55, 0.1)))
    sz.handle(replace(at(1), accounts=(), degraded=("execution",)))
    assert sz.status()["rl_pending"] == 1


def test_position_gone_without_a_matching_trade_is_forgotten() -> None:
    sz = rl_sizer()
    sz.handle(at(0, pred("ETHBTC", 0.55, 0.1)))
    sz.handle(at(1, fills=(entry_fill(1),), positions=(position("ETHBTC"),)))
    sz.handle(at(2, closed=(trade(0, 2, 1.0),)))  # entry_ts is not our fill's
    assert sz.status()["rl_open"] == 0 and sz.rl_lost == 1
    assert sz.agent is not None and sz.agent.updates == 0


def test_drawdown_bucket_from_the_sizers_own_equity_peak() -> None:
    sz = rl_sizer()
    sz.handle(at(0, equity=1.00))
    sz.handle(at(1, equity=1.10))
    (it,) = sz.handle(at(2, pred("ETHBTC", 0.55, 0.1), equity=1.056)).intents  # -4 %
    assert it.rl_state == "range|c3|d2"
    assert sz.rl_status()["drawdown_pct"] == {"BTC": pytest.approx(4.0)}


def test_gamma_bootstraps_from_the_state_at_the_close() -> None:
    cfg = load(env={}).rl
    agent = QAgent(replace_rl(cfg, epsilon=0.0, alpha=0.5, gamma=0.5), 1)
    agent.q["trend_down|c4|d0"] = [0.0, 0.0, 3.0, 0.0, 0.0]
    agent.n["trend_down|c4|d0"] = [0, 0, 1, 0, 0]
    sz = rl_sizer(agent=agent)
    sz.handle(at(0, pred("ETHBTC", 0.55, 0.1)))
    sz.handle(at(1, fills=(entry_fill(1),), positions=(position("ETHBTC"),)))
    sz.handle(at(2, pred("ETHBTC", 0.1, 0.7), closed=(trade(1, 2, 1.0),),
                 regime="trend_down"))
    assert agent.q["range|c3|d0"][2] == pytest.approx(0.5 * (1.0 + 0.5 * 3.0))


def test_state_round_trip_continues_with_the_same_draws_and_table() -> None:
    """What a checkpoint stores is enough to continue exactly (crash-only restarts)."""
    a = rl_sizer({"epsilon": 0.5})
    a.handle(at(0, pred("ETHBTC", 0.55, 0.1)))
    a.handle(at(1, fills=(entry_fill(1),), closed=(trade(1, 1, 1.0),)))
    b = rl_sizer({"epsilon": 0.5})
    b.restore_state(pickle.loads(pickle.dumps(a.export_state())))
    for k in range(2, 12):
        s = at(k, pred("LTCBTC", 0.56, 0.1), closes={"LTCBTC": 0.01})
        assert a.handle(s) == b.handle(s)
    assert a.agent is not None and b.agent is not None and a.agent.q == b.agent.q


def test_same_seed_same_multipliers_through_the_sizer() -> None:
    def run(seed: int) -> list[float]:
        cfg = load(env={}).rl
        sz = rl_sizer(agent=QAgent(replace_rl(cfg, epsilon=0.5), seed))
        out = []
        for k in range(0, 120, 2):
            (it,) = sz.handle(at(k, pred("ETHBTC", 0.6, 0.1))).intents
            out.append(it.size_multiplier)
            sz.handle(at(k + 1))  # denied: dropped, next entry can come
        return out

    assert run(42) == run(42) and run(42) != run(43)
    assert set(run(42)) == {0.5, 0.75, 1.0, 1.25, 1.5}
