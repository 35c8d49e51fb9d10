"""SizerActor.handle: from ensemble probabilities to signals and sized entry intents."""

from __future__ import annotations

import math

import pytest
import trio

from qtraderd.actors.sizer import SizerActor
from qtraderd.config import load, with_changes
from qtraderd.costs import CostModel
from qtraderd.features import FEATURE_NAMES
from qtraderd.messages import (
    Bar,
    ModelOutput,
    OrderIntent,
    PositionView,
    Prediction,
    Sample,
    Signal,
    Step,
    replace,
)

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
