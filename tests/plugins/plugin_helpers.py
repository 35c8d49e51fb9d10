"""Helpers for the plugin tests: plugin sources, minimal steps, polling with a deadline."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import trio

from qtraderd.core.config import load, with_changes
from qtraderd.core.messages import (
    AccountView,
    Bar,
    ModelOutput,
    OrderIntent,
    Prediction,
    Sample,
    Step,
)
from qtraderd.features.spec import FEATURE_NAMES
from qtraderd.plugins.host import PluginHost

IV = 300_000
TS = 1_700_000_100_000 - (1_700_000_100_000 % IV)


def source(name: str = "p", version: str = "1.0", body: str = "", api: int | str = 1) -> str:
    """A plugin module's text; `body` holds its hooks (dedented)."""
    body = textwrap.dedent(body) or "def filter_signal(signal):\n    return None\n"
    return (f"from qtraderd.plugins.api import *\n\nPLUGIN_API = {api}\nNAME = {name!r}\n"
            f"VERSION = {version!r}\n\n{body}")


def host(directory: Path | None, **plugins: object) -> PluginHost:
    """A host with fast settling (real watching still; the code under test is unchanged)."""
    plugins.setdefault("settle_ms", 20.0)
    cfg = with_changes(load(env={}), plugins=plugins)
    return PluginHost(cfg.plugins, directory)


async def until(pred: Callable[[], bool], timeout: float = 10.0, *,
                poke: Callable[[], None] | None = None) -> None:
    """Poll `pred` until true (fail after `timeout`); `poke` is repeated meanwhile (e.g.
    rewriting a file until the watcher, started in a thread, demonstrably sees it)."""
    with trio.fail_after(timeout):
        while not pred():
            if poke is not None:
                poke()
            await trio.sleep(0.03)


def step(symbols: tuple[str, ...] = ("ETHBTC",), regime: str = "range", ts: int = TS,
         seq: int = 1, accounts: tuple[AccountView, ...] = ()) -> Step:
    bars = tuple(Bar(s, ts, 0.05, 0.05, 0.05, 0.05, 1.0) for s in symbols)
    samples = tuple(Sample(s, ts, tuple(float(i) for i in range(len(FEATURE_NAMES))), regime)
                    for s in symbols)
    preds = tuple(Prediction(s, ts, "ensemble", "v", 0.6, 0.2) for s in symbols)
    outputs = (ModelOutput("xgboost", "x1", ts, symbols, (0.7,) * len(symbols),
                           (0.1,) * len(symbols)),)
    return Step(seq=seq, ts=ts, close_ts=ts + IV, bars=bars, samples=samples,
                predictions=preds, model_outputs=outputs, global_regime=regime,
                accounts=accounts)


def filter_call(h: PluginHost, s: Step, i: int = 0) -> tuple[float, str]:
    p, sample = s.predictions[i], s.samples[i]
    h.observe_samples(s.samples)
    return h.filter_signal(p, 1, p.p_long, 0.001, sample, s.bars[i].close, s)


ACCOUNT = AccountView("BTC", 1.0, 1.0, 0.0, 0.0, 0)


def intent(symbol: str = "ETHBTC", qty: float = 1.5, i: int = 0) -> OrderIntent:
    return OrderIntent(f"{i}-{symbol}-E", symbol, TS, 1, qty, 0.05, "entry", "signal",
                       0.016, 0.008, 3.0)


def check_call(h: PluginHost, it: OrderIntent | None = None, s: Step | None = None
               ) -> str | None:
    it = it or intent()
    return h.check_order(it, it.qty, ACCOUNT, s or step(accounts=(ACCOUNT,)), "ACTIVE")
