"""The deploy gate's statistics: is a challenger worth more than the champion, net of costs?

Pure numpy (imported by the daemon process: no scipy, sklearn or pandas).

Primary metric — trading value net of costs
-------------------------------------------
Both models are scored on the same held-out evaluation window (samples in time order,
every sample labelled). `trade_returns` replays the production entry rule
(`actors/sizer.py`) on a model's probabilities:

* pick the likelier side: long, or short when `sizing.allow_short` and p_short > p_long;
* trade iff p_side >= `sizing.min_confidence` and
  `CostModel.expected_edge(p_side, tp, sl)` > `sizing.min_edge_pct` (as the sizer does);
* one open position per symbol: a trade at sample i blocks its symbol until its
  `label_end` time (a sample at exactly label_end may trade again; it fills at the next
  open, after the first trade has exited) — as `learn/metrics.py` does;
* a trade's net return is `ret_side - CostModel.round_trip()`; 0 where no trade.

`equity_value(r, w)` is the equity multiple prod(1 + w*r) when each trade commits the
notional fraction w (= margin * leverage / quote balance; the caller passes it). The gate
compares V_challenger / V_champion: `improvement_pct = 100 * (V_c / V_ch - 1)`.

Why a multiple and not accuracy: a model can gain AUC by predicting volatility and still
lose money after fees; and compounding per trade penalises variance the way an account
does.

Significance
------------
Per sample, d_i = log(1 + w r_c,i) - log(1 + w r_ch,i); sum(d) = log(V_c / V_ch).
Labels overlap (a 48-bar horizon) and returns cluster, so samples are not independent:
`paired_block_bootstrap` resamples circular blocks of d (centred on 0, i.e. under the
null) and reports the one-sided p-value that sum(d) <= 0. `diebold_mariano` is a second
opinion with a Newey-West (HAC) variance.

Skill — the veto
----------------
A model that trades less than a losing champion "improves" on it while knowing nothing
(doing nothing beats losing). So a challenger must first beat the no-skill forecast: the
class prior of its training window, on multi-class log-loss.
skill = 1 - LL_model / LL_prior, with a block-bootstrap p-value that skill <= 0. No skill
(skill <= 0 or p >= significance) means "reject", whatever the comparison says.
`skill_lo`/`skill_hi` are a 95 % percentile interval from the same (uncentred) block
bootstrap, the denominator held fixed; `n` is the number of evaluation samples.

What the gate never scores, and what it never deploys
-----------------------------------------------------
* `window_conflict`: a challenger whose training samples plus one label horizon reach
  into the evaluation window has seen it; it is refused before any scoring. (The job's
  own challenger is purged a full horizon before the window by `training.dataset`.)
* `leakage`: on these 5-minute pairs honest models score an evaluation AUC of about
  0.50-0.60 and a log-loss skill of a few hundredths (README, "What the gate refuses");
  an AUC above `learning.leakage_auc` or a skill above `learning.leakage_skill` is a
  leakage alarm, never a deploy or a canary. The AUC is the mean of the two one-vs-rest
  AUCs (p_long for "long won" against every other outcome, p_short for "short won"): a
  leak lifts both far above 0.65 (a model trained on the window scores about 0.9), while
  one side alone of an honest model can pass 0.65 on a short trending window (0.69 was
  seen on three pairs over two days, with negative skill) and would raise false alarms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qtraderd.core.clock import iso
from qtraderd.core.config import Config, LearningConfig
from qtraderd.core.costs import CostModel
from qtraderd.core.messages import LABEL_LONG, LABEL_SHORT

_EPS = 1e-15
_RUIN = 1e-12  # floor of 1 + w*r: a trade cannot lose more than the account


def entry_sides(proba: np.ndarray, cfg: Config) -> np.ndarray:
    """The sizer's entry rule per row: +1 long, -1 short, 0 no trade."""
    s = cfg.sizing
    cm = CostModel.from_config(cfg.costs)
    tp, sl = s.take_profit_pct / 100.0, s.stop_loss_pct / 100.0
    min_edge = s.min_edge_pct / 100.0
    p_long, p_short = proba[:, LABEL_LONG], proba[:, LABEL_SHORT]
    # expected_edge is plain arithmetic, so it takes whole columns at once.
    edge_long = cm.expected_edge(p_long, tp, sl)  # type: ignore[arg-type]
    edge_short = cm.expected_edge(p_short, tp, sl)  # type: ignore[arg-type]
    ok_long = (p_long >= s.min_confidence) & (edge_long > min_edge)
    ok_short = (p_short >= s.min_confidence) & (edge_short > min_edge) & s.allow_short
    side = np.zeros(len(proba), dtype=np.int64)
    side[ok_long] = 1
    side[ok_short & (~ok_long | (edge_short > edge_long))] = -1
    return side


def trade_sides(probs: np.ndarray, ret_long: np.ndarray, ret_short: np.ndarray,
                sym: np.ndarray, ts: np.ndarray, label_end: np.ndarray,
                cfg: Config) -> np.ndarray:
    """Side the production rule takes per sample: +1 long, -1 short, 0 no trade.

    Rows without an outcome (NaN return or label_end < 0) are never traded: the gate only
    scores what it can settle.
    """
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    if probs.shape != (n, 3):
        raise ValueError(f"probs must be (n, 3), got {probs.shape}")
    arrays = [np.asarray(a) for a in (ret_long, ret_short, sym, ts, label_end)]
    if any(len(a) != n for a in arrays):
        raise ValueError("probs, returns, sym, ts and label_end must have the same length")
    rl, rs, sym_a, ts_a, end_a = arrays
    side = entry_sides(probs, cfg)
    settled = np.isfinite(np.where(side == -1, rs, rl)) & (end_a >= 0)
    want = (side != 0) & settled
    out = np.zeros(n, dtype=np.int64)
    busy_until: dict[Any, int] = {}
    for i in np.flatnonzero(want)[np.argsort(ts_a[want], kind="stable")]:
        key = sym_a[i].item()
        if ts_a[i] < busy_until.get(key, ts_a[i]):
            continue
        busy_until[key] = int(end_a[i])
        out[i] = side[i]
    return out


def trade_returns(probs: np.ndarray, ret_long: np.ndarray, ret_short: np.ndarray,
                  sym: np.ndarray, ts: np.ndarray, label_end: np.ndarray,
                  cfg: Config) -> np.ndarray:
    """Net return per sample of the production entry rule (0 where it does not trade)."""
    side = trade_sides(probs, ret_long, ret_short, sym, ts, label_end, cfg)
    return _net_returns(side, ret_long, ret_short, cfg)


def _net_returns(side: np.ndarray, ret_long: np.ndarray, ret_short: np.ndarray,
                 cfg: Config) -> np.ndarray:
    """Each traded row's return to its barrier after the round trip's costs; 0 elsewhere."""
    cost = CostModel.from_config(cfg.costs).round_trip()
    gross = np.where(side == 1, np.asarray(ret_long, np.float64),
                     np.asarray(ret_short, np.float64))
    return np.where(side != 0, gross - cost, 0.0)


def scored_returns(rows: Sequence[Any], cfg: Config) -> np.ndarray:
    """`trade_returns` over live outcomes: `messages.Scored` rows of one model, any order.

    Used to compare two models on the same settled bars (canary, rollback guard). A row
    without `resolved_at` (<= 0) cannot say when its trade would have ended, so it is
    treated as unsettled and never traded.
    """
    if not rows:
        return np.zeros(0)
    probs = np.array([(1.0 - r.p_long - r.p_short, r.p_long, r.p_short) for r in rows],
                     dtype=np.float64)
    end = np.array([r.resolved_at if r.resolved_at > 0 else -1 for r in rows], np.int64)
    return trade_returns(probs, np.array([r.ret_long for r in rows], np.float64),
                         np.array([r.ret_short for r in rows], np.float64),
                         np.array([r.symbol for r in rows]),
                         np.array([r.ts for r in rows], np.int64), end, cfg)


def log_growth(r: np.ndarray, w: float) -> np.ndarray:
    """log(1 + w*r) per sample, floored so a ruinous trade stays finite."""
    return np.log(np.maximum(1.0 + w * np.asarray(r, dtype=np.float64), _RUIN))


def equity_value(r: np.ndarray, w: float) -> float:
    """Equity multiple prod(1 + w*r): what 1 unit of quote becomes over the window."""
    return float(math.exp(float(log_growth(r, w).sum())))


def _block_sums(x: np.ndarray, length: int) -> np.ndarray:
    """Sum of every circular block x[s : s+length] (wrapping), for each start s."""
    n = len(x)
    ext = np.concatenate([[0.0], np.cumsum(np.concatenate([x, x[: max(length - 1, 0)]]))])
    return ext[np.arange(n) + length] - ext[np.arange(n)]


def paired_block_bootstrap(d: np.ndarray, n_boot: int = 2000, block: int = 48,
                           seed: int = 0) -> float:
    """One-sided p-value that sum(d) <= 0 (circular block bootstrap, centred on 0).

    Each resample glues ceil(n/block) circular blocks of the centred differences (the last
    one cut to length), so serial dependence inside a block survives. `block` counts
    samples: about horizon_bars x symbols per bar covers one label's overlap. p uses the
    +1 correction, so it is never 0.
    """
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    observed = float(d.sum())
    if n < 2:
        return 0.5 if n == 1 and observed > 0 else 1.0
    centred = d - d.mean()
    b = int(min(max(block, 1), n))
    k_full, last = divmod(n, b)
    rng = np.random.default_rng(seed)
    full = _block_sums(centred, b)
    sums = full[rng.integers(0, n, size=(n_boot, k_full))].sum(axis=1)
    if last:
        sums += _block_sums(centred, last)[rng.integers(0, n, size=n_boot)]
    # Tolerance: when d is constant the centred sums are 0 up to rounding.
    tol = 1e-12 * (np.abs(d).sum() + 1e-300)
    return float((1 + np.count_nonzero(sums >= observed - tol)) / (n_boot + 1))


def diebold_mariano(d: np.ndarray, lag: int = 48) -> tuple[float, float]:
    """Diebold-Mariano statistic of mean(d) > 0 and its one-sided normal p-value.

    Newey-West (Bartlett) long-run variance over `lag` autocovariances; a second opinion
    next to the bootstrap, cheap and easy to log.
    """
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    if n < 2:
        return 0.0, 1.0
    e = d - d.mean()
    var = float(e @ e) / n
    for k in range(1, min(lag, n - 1) + 1):
        var += 2.0 * (1.0 - k / (lag + 1)) * float(e[k:] @ e[:-k]) / n
    if not var > 1e-300:
        mean = float(d.mean())
        return (math.inf, 0.0) if mean > 0 else (0.0, 1.0)
    stat = float(d.mean()) / math.sqrt(var / n)
    return stat, 0.5 * math.erfc(stat / math.sqrt(2.0))


def _sample_log_loss(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(len(y)), y])


def skill(probs: np.ndarray, y: np.ndarray, prior: np.ndarray, *, n_boot: int = 2000,
          block: int = 48, seed: int = 0) -> tuple[float, float]:
    """(skill, p): 1 - LL_model/LL_prior and the block-bootstrap p-value that skill <= 0.

    `prior` is the class frequencies of the *training* window: the forecast anyone could
    make without features. skill > 0 iff the summed per-sample log-loss gain is > 0, so
    the same bootstrap tests it.
    """
    value, p, _, _ = skill_interval(probs, y, prior, n_boot=n_boot, block=block, seed=seed)
    return value, p


def skill_interval(probs: np.ndarray, y: np.ndarray, prior: np.ndarray, *,
                   n_boot: int = 2000, block: int = 48, seed: int = 0
                   ) -> tuple[float, float, float, float]:
    """(skill, p, lo, hi): `skill` plus its 95 % block-bootstrap percentile interval."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        return 0.0, 1.0, math.nan, math.nan
    ll_model = _sample_log_loss(probs, y)
    prior_rows = np.broadcast_to(np.asarray(prior, dtype=np.float64), probs.shape)
    ll_prior = _sample_log_loss(prior_rows, y)
    denom = max(float(ll_prior.sum()), _EPS)
    value = 1.0 - float(ll_model.mean()) / max(float(ll_prior.mean()), _EPS)
    gain = ll_prior - ll_model
    p = paired_block_bootstrap(gain, n_boot=n_boot, block=block, seed=seed)
    sums = block_bootstrap_sums(gain, n_boot=n_boot, block=block, seed=seed + 1)
    lo, hi = np.percentile(sums / denom, [2.5, 97.5]) if len(sums) else (math.nan, math.nan)
    return value, p, float(lo), float(hi)


def block_bootstrap_sums(x: np.ndarray, n_boot: int = 2000, block: int = 48,
                         seed: int = 0) -> np.ndarray:
    """Sums of `n_boot` circular-block resamples of x (not centred: for intervals)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0)
    b = int(min(max(block, 1), n))
    k_full, last = divmod(n, b)
    rng = np.random.default_rng(seed)
    sums = _block_sums(x, b)[rng.integers(0, n, size=(n_boot, k_full))].sum(axis=1)
    if last:
        sums += _block_sums(x, last)[rng.integers(0, n, size=n_boot)]
    return sums


def auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC by ranks (Mann-Whitney U, ties averaged); None without both classes.

    numpy only: the daemon imports this module, and sklearn is a training dependency.
    """
    pos = np.asarray(positive, dtype=bool)
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average rank of each run of ties (1-based)
    starts = np.flatnonzero(np.concatenate([[True], sorted_s[1:] != sorted_s[:-1]]))
    ends = np.concatenate([starts[1:], [len(s)]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def side_aucs(probs: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """One-vs-rest AUC of p_long for "long won" and of p_short for "short won"."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return None, None
    return (auc(y == LABEL_LONG, probs[:, LABEL_LONG]),
            auc(y == LABEL_SHORT, probs[:, LABEL_SHORT]))


def eval_start(cfg: LearningConfig, now: int) -> int:
    """First bar of the evaluation window of a job at clock time `now`."""
    return now - int(cfg.eval_window_days * 86_400_000)


def window_conflict(train_end: int | None, data_end: int | None, horizon_ms: int,
                    eval_start: int, *, own: bool) -> str | None:
    """Why a challenger has seen the evaluation window starting at `eval_start`, or None.

    Its training reaches `train_end` (the last training sample) plus one label horizon:
    that label read bars up to there. A model this job did not train also claims its own
    validation window up to `data_end` (it may have been chosen on it); the job's own
    challenger is validated on exactly the gate's window, purged from its training, so
    for it (`own`) only the training part counts. Missing fields count as "seen it all".
    """
    if train_end is None and data_end is None:
        return "its metadata gives no training window (train_end, data_end)"
    last = train_end if train_end is not None else data_end
    assert last is not None
    reach = last + horizon_ms
    what = (f"training samples up to {iso(last)} plus the {horizon_ms // 60_000}-minute "
            "label horizon")
    if not own and data_end is not None and data_end > reach:
        reach, what = data_end, f"its training and validation data up to {iso(data_end)}"
    if reach >= eval_start:
        return (f"trained on the evaluation window: {what} reach into the window that "
                f"starts at {iso(eval_start)}")
    return None


def leakage(challenger: GateScores, cfg: LearningConfig) -> str | None:
    """The leakage alarm's reason (stable wording, starts "leakage alarm"), or None."""
    top = challenger.auc
    too_high = top is not None and top > cfg.leakage_auc
    if not too_high and not challenger.skill > cfg.leakage_skill:
        return None
    auc_txt = "n/a" if top is None else f"{top:.3f}"
    return (f"leakage alarm: auc={auc_txt} skill={challenger.skill:+.3f} over "
            f"{challenger.n:,} evaluation samples (honest models stay below auc "
            f"{cfg.leakage_auc:g} and skill {cfg.leakage_skill:g}): never deployed")


@dataclass(frozen=True)
class GateScores:
    """One model on the evaluation window. `returns` is kept for `compare`, not reported."""

    value: float  # equity multiple prod(1 + w r)
    n_trades: int
    win_rate: float | None  # take-profit hits / trades (as learn/metrics.py)
    mean_net_return: float | None
    log_loss: float
    prior_log_loss: float
    skill: float
    skill_p: float
    n: int = 0  # evaluation samples
    skill_lo: float | None = None  # 95 % block-bootstrap interval of the skill
    skill_hi: float | None = None
    auc_long: float | None = None  # one-vs-rest AUC of each side (`side_aucs`)
    auc_short: float | None = None
    returns: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False,
                                compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("returns")
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in out.items()}

    def line(self) -> str:
        """The validation figures with their sample size and interval (log lines, rows)."""
        ci = ("n/a" if self.skill_lo is None or self.skill_hi is None else
              f"[{self.skill_lo:+.4f}, {self.skill_hi:+.4f}]")
        return (f"n={self.n:,}, skill {self.skill:+.4f} (95 % CI {ci}, p={self.skill_p:.3f})"
                + (f", auc {self.auc:.3f}" if self.auc is not None else "")
                + f", {self.n_trades} trades")

    @property
    def auc(self) -> float | None:
        """The leakage alarm's AUC: the mean of the sides' one-vs-rest AUCs."""
        aucs = [a for a in (self.auc_long, self.auc_short) if a is not None]
        return sum(aucs) / len(aucs) if aucs else None


def score(probs: np.ndarray, y: np.ndarray, ret_long: np.ndarray, ret_short: np.ndarray,
          sym: np.ndarray, ts: np.ndarray, label_end: np.ndarray, prior: np.ndarray,
          cfg: Config, w: float, *, n_boot: int = 2000, block: int = 48,
          seed: int = 0) -> GateScores:
    """Everything the gate needs about one model on the evaluation window."""
    y = np.asarray(y, dtype=np.int64)
    side = trade_sides(probs, ret_long, ret_short, sym, ts, label_end, cfg)
    r = _net_returns(side, ret_long, ret_short, cfg)
    traded = side != 0
    n_trades = int(traded.sum())
    wins = np.where(side == 1, y == LABEL_LONG, y == LABEL_SHORT)[traded]
    sk, sk_p, lo, hi = skill_interval(probs, y, prior, n_boot=n_boot, block=block, seed=seed)
    a_long, a_short = side_aucs(probs, y)
    prior_rows = np.broadcast_to(np.asarray(prior, np.float64), np.shape(probs))
    return GateScores(
        value=equity_value(r, w), n_trades=n_trades,
        win_rate=float(wins.mean()) if n_trades else None,
        mean_net_return=float(r[traded].mean()) if n_trades else None,
        log_loss=float(_sample_log_loss(probs, y).mean()) if len(y) else math.nan,
        prior_log_loss=float(_sample_log_loss(prior_rows, y).mean()) if len(y) else math.nan,
        skill=sk, skill_p=sk_p, n=len(y), skill_lo=lo, skill_hi=hi, auc_long=a_long,
        auc_short=a_short, returns=r)


@dataclass(frozen=True)
class Comparison:
    """Challenger vs champion on the same samples."""

    improvement_pct: float  # 100 * (V_challenger / V_champion - 1)
    p_value: float  # block bootstrap, one-sided: challenger not better
    dm_stat: float
    dm_p: float = 1.0
    value_champion: float = 1.0
    value_challenger: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def compare(champion_r: np.ndarray, challenger_r: np.ndarray, w: float, seed: int = 0, *,
            n_boot: int = 2000, block: int = 48) -> Comparison:
    """Improvement of the challenger's equity multiple and its significance."""
    champion_r = np.asarray(champion_r, dtype=np.float64)
    challenger_r = np.asarray(challenger_r, dtype=np.float64)
    if champion_r.shape != challenger_r.shape:
        raise ValueError(f"returns differ in shape: {champion_r.shape} vs "
                         f"{challenger_r.shape}; score both models on the same samples")
    g_ch, g_c = log_growth(champion_r, w), log_growth(challenger_r, w)
    d = g_c - g_ch
    dm, dm_p = diebold_mariano(d, lag=block)
    return Comparison(
        improvement_pct=100.0 * math.expm1(float(d.sum())),
        p_value=paired_block_bootstrap(d, n_boot=n_boot, block=block, seed=seed),
        dm_stat=dm, dm_p=dm_p,
        value_champion=float(math.exp(g_ch.sum())), value_challenger=float(math.exp(g_c.sum())))


@dataclass(frozen=True)
class Decision:
    action: str  # "alarm" | "reject" | "deploy" | "canary" | "keep" ("refuse": learner)
    reason: str


def decide(cmp: Comparison | None, challenger: GateScores, cfg: LearningConfig) -> Decision:
    """The gate's verdict. ADVISORY mode / auto_deploy are the caller's business.

    Order matters: the leakage alarm comes first (a leak also looks like skill and like
    an improvement), then the skill veto, so a know-nothing model that merely trades less
    than a losing champion is never deployed.
    """
    alarm = leakage(challenger, cfg)
    if alarm is not None:
        return Decision("alarm", alarm)
    alpha = cfg.significance
    if not (challenger.skill > 0.0 and challenger.skill_p < alpha):
        return Decision("reject", f"no skill over the class prior (skill "
                                  f"{challenger.skill:+.4f}, p={challenger.skill_p:.3f}; "
                                  f"{challenger.line()})")
    if cmp is None:
        return Decision("deploy", f"no champion yet; skill {challenger.skill:+.4f} "
                                  f"(p={challenger.skill_p:.3f}), value "
                                  f"{challenger.value:.4f}; {challenger.line()}")
    imp, p = cmp.improvement_pct, cmp.p_value
    head = f"{imp:+.1f} % (p={p:.3f}) over champion ({challenger.line()})"
    if imp > cfg.min_improvement_pct:
        if p < alpha:
            return Decision("deploy", head)
        return Decision("canary", f"{head}, not significant at {alpha:g}")
    if imp >= cfg.canary_threshold_pct:
        return Decision("canary", f"{head}, below the {cfg.min_improvement_pct:g} % deploy "
                                  f"bar")
    return Decision("keep", f"{head}, below the {cfg.canary_threshold_pct:g} % canary bar")
