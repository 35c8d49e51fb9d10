"""Out-of-sample metrics of a model on the validation window, trading ones net of costs.

Only validation rows come in here (the caller passes `Dataset.valid`), so every number is
out-of-sample. The trading metric replays the sizer's entry rule on the model's
probabilities:

* a side qualifies when its probability is >= `sizing.min_confidence` and
  `CostModel.expected_edge` (which counts every non-win as a full stop and subtracts the
  round trip) is > `sizing.min_edge_pct`; short only when `sizing.allow_short`;
  when both qualify the larger edge wins;
* a trade's net return is the label's return to its barrier (take-profit, stop, or the
  close at the time barrier) minus `CostModel.round_trip()`; a win is a take-profit hit,
  the event the breakeven win rate refers to;
* one position per symbol: after an entry the symbol is busy until the label's last bar
  (the bar that settled both sides, a conservative bound on the trade's own exit).
  Counting every qualifying bar instead would count one move dozens of times; that count
  is reported too, as `n_signals`.

Baselines put the numbers in context: "always long" (every bar where flat, same one-
position rule) and random entries with the same count as the model's trades (seeded).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from qtraderd.core.config import Config
from qtraderd.core.costs import CostModel
from qtraderd.core.messages import LABEL_LONG, LABEL_NONE, LABEL_SHORT
from qtraderd.learning.gate import entry_sides
from qtraderd.training.dataset import Split

CLASSES = (LABEL_NONE, LABEL_LONG, LABEL_SHORT)


def _auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC, None when the validation window lacks either outcome."""
    from sklearn.metrics import roc_auc_score

    if y_true.all() or not y_true.any():
        return None
    return float(roc_auc_score(y_true, score))


def _direction_auc(y: np.ndarray, proba: np.ndarray) -> float | None:
    """Among rows where one side won, does the model tell which? (long vs short AUC)

    One-vs-rest AUCs also reward predicting *volatility* (whether any barrier is hit):
    both can sit above 0.5 with no idea of direction. This one only sees direction.
    """
    won = (y == LABEL_LONG) | (y == LABEL_SHORT)
    pl, ps = proba[won, LABEL_LONG], proba[won, LABEL_SHORT]
    denom = pl + ps
    share = np.divide(pl, denom, out=np.full(len(pl), 0.5), where=denom > 0)
    return _auc(y[won] == LABEL_LONG, share)


def _log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    p = np.clip(proba, 1e-15, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    return float(log_loss(y, p, labels=list(CLASSES)))


def _take_non_overlapping(candidates: np.ndarray, side: np.ndarray, v: Split
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-position-per-symbol entries among candidate rows, in time order."""
    busy_until: dict[int, int] = {}
    rows: list[int] = []
    sides: list[int] = []
    order = np.lexsort((v.sym, v.ts))
    for i in order[candidates[order]]:
        s = int(v.sym[i])
        if v.ts[i] < busy_until.get(s, -1):
            continue
        busy_until[s] = int(v.label_end[i])
        rows.append(int(i))
        sides.append(int(side[i]))
    return np.asarray(rows, dtype=np.int64), np.asarray(sides, dtype=np.int64)


def _trade_stats(prefix: str, rows: np.ndarray, sides: np.ndarray, v: Split,
                 cost: float) -> dict[str, Any]:
    """Count, TP-hit rate and net returns of trades (side +1 long, -1 short)."""
    n = len(rows)
    out: dict[str, Any] = {f"{prefix}n_trades": n}
    if n == 0:
        out.update({f"{prefix}win_rate": None, f"{prefix}mean_net_return": None,
                    f"{prefix}total_net_return": 0.0})
        return out
    long = sides == 1
    gross = np.where(long, v.ret_long[rows], v.ret_short[rows])
    wins = np.where(long, v.y[rows] == LABEL_LONG, v.y[rows] == LABEL_SHORT)
    net = gross - cost
    out.update({
        f"{prefix}win_rate": float(wins.mean()),
        f"{prefix}mean_net_return": float(net.mean()),
        f"{prefix}total_net_return": float(net.sum()),
    })
    return out


def evaluate(proba: np.ndarray, valid: Split, cfg: Config,
             train_prior: np.ndarray | None = None) -> dict[str, Any]:
    """Flat JSON-able metrics of `proba` (n, 3) on the validation rows `valid`."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(valid), 3):
        raise ValueError(f"probabilities {proba.shape} do not match {len(valid)} rows x 3")
    y = valid.y
    s = cfg.sizing
    cm = CostModel.from_config(cfg.costs)
    tp, sl = s.take_profit_pct / 100.0, s.stop_loss_pct / 100.0
    cost = cm.round_trip()
    counts = np.bincount(y, minlength=3) / max(len(y), 1)
    out: dict[str, Any] = {
        "n_valid": len(y),
        "base_rate_none": float(counts[LABEL_NONE]),
        "base_rate_long": float(counts[LABEL_LONG]),
        "base_rate_short": float(counts[LABEL_SHORT]),
        "auc_long": _auc(y == LABEL_LONG, proba[:, LABEL_LONG]),
        "auc_short": _auc(y == LABEL_SHORT, proba[:, LABEL_SHORT]),
        "auc_direction": _direction_auc(y, proba),
        "log_loss": _log_loss(y, proba),
    }
    if train_prior is not None:  # the no-skill reference: training class frequencies
        prior = np.broadcast_to(np.asarray(train_prior, dtype=np.float64), proba.shape)
        out["log_loss_prior"] = _log_loss(y, prior)
    out.update({
        "min_confidence": s.min_confidence,
        "min_edge": s.min_edge_pct / 100.0,
        "round_trip_cost": cost,
        "breakeven_win_rate": cm.breakeven_win_rate(tp, sl),
    })
    side = entry_sides(proba, cfg)
    out["n_signals"] = int((side != 0).sum())
    rows, sides = _take_non_overlapping(side != 0, side, valid)
    out.update(_trade_stats("", rows, sides, valid, cost))
    out["n_long"] = int((sides == 1).sum())
    out["n_short"] = int((sides == -1).sum())
    always = np.ones(len(y), dtype=np.int64)
    rows_l, sides_l = _take_non_overlapping(np.ones(len(y), dtype=bool), always, valid)
    out.update(_trade_stats("always_long_", rows_l, sides_l, valid, cost))
    rng = np.random.default_rng(cfg.seed)
    k = min(len(rows), len(y))
    pick = np.sort(rng.choice(len(y), size=k, replace=False)) if k else np.zeros(0, np.int64)
    rand_side = (rng.choice([1, -1], size=k) if s.allow_short else np.ones(k, np.int64))
    out.update(_trade_stats("random_", pick, np.asarray(rand_side, np.int64), valid, cost))
    return {key: _clean(v) for key, v in out.items()}


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: report them as None rather than writing invalid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a proportion p over n trials (sound at small n)."""
    denom = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, mid - half), min(1.0, mid + half)


def headline(family: str, m: dict[str, Any]) -> str:
    """One readable log line, e.g. for the learner's progress output."""
    def f3(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %"

    def pct2(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:+.2f} %"

    n_trades = m["n_trades"]
    ci = "" if not n_trades or m["win_rate"] is None else " [95 % CI {}-{}]".format(
        *(pct(x) for x in wilson(m["win_rate"], n_trades)))
    return (f"{family} validation (n={m['n_valid']:,}): auc_long {f3(m['auc_long'])} auc_short "
            f"{f3(m['auc_short'])} auc_direction {f3(m['auc_direction'])}, "
            f"log loss {f3(m['log_loss'])}"
            + (f" (prior {f3(m['log_loss_prior'])})" if "log_loss_prior" in m else "")
            + f", {n_trades} trades, win rate {pct(m['win_rate'])}{ci} "
            f"(breakeven {pct(m['breakeven_win_rate'])}), mean net "
            f"{pct2(m['mean_net_return'])}/trade; always-long win rate "
            f"{pct(m['always_long_win_rate'])}, random win rate {pct(m['random_win_rate'])}")
