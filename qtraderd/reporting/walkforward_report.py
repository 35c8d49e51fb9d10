"""What `qtraderd walkforward` measures and writes: five arms on one test period.

Why the numbers are computed here and not taken from the daemon's own end-of-run summary:
the arms must be compared on the same bars with the same definitions. So every arm
becomes an equity multiple on one time grid (the bar closes of the test period, 1.0 at
its start, marked to market), and return, drawdown and the one Sharpe per arm are
computed from that curve (walkforward_arms: how each arm is built and why it is fair).
The daemon summaries quoted at the end therefore leave their own Sharpe out: it covers
the whole replay, not the test period. Every per-window and per-job line carries its
sample size and a 95 % interval: Student-t on the mean net trade return, Wilson on hit
rates. Nothing is filtered for looking good: every retrain job appears, whatever its
decision.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from qtraderd.control.tables import format_kv, format_table
from qtraderd.core.clock import iso
from qtraderd.core.config import per_quote
from qtraderd.core.costs import CostModel
from qtraderd.core.instruments import quote_asset
from qtraderd.core.messages import LABEL_LONG, LABEL_SHORT
from qtraderd.reporting.report import sections, summarize
from qtraderd.reporting.walkforward_arms import (
    Arm,
    at_exposure,
    buy_hold_arm,
    daemon_arm,
    entry_fractions,
    load_bars,
    pct,
    period_grid,
    random_arm,
)
from qtraderd.reporting.walkforward_plan import ARMS, HIT_N, Plan
from qtraderd.reporting.walkforward_sim import t_interval, wilson
from qtraderd.store.db import connect


def window_returns(arms: dict[str, Arm], grid: np.ndarray, edges: np.ndarray
                   ) -> dict[str, list[float]]:
    """Net return % of each arm inside each window (value at its last bar vs the last)."""
    ends = np.searchsorted(grid, edges[1:], side="left") - 1
    out = {}
    for key, arm in arms.items():
        v = np.concatenate([[1.0], arm.values])[ends + 1]
        prev = np.concatenate([[1.0], v[:-1]])
        out[key] = list(100.0 * (v / prev - 1.0))
    return out


def learning_history(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    """Which version of each family served when (from the predictions it made), and every
    retrain job with its gate decision."""
    periods = [{"family": f, "version": v, "from": a, "to": b, "bars": n}
               for f, v, a, b, n in conn.execute(
                   "SELECT model, version, min(ts), max(ts), count(*) FROM predictions WHERE "
                   "run_id=? AND role='serving' AND model<>'ensemble' GROUP BY model, version "
                   "ORDER BY model, min(ts)", (run_id,)).fetchall()]
    jobs = [{"id": i, "ts": ts, "family": f, "decision": st, "version": v, "reason": why,
             "detail": d, "wall_s": w}
            for i, ts, f, st, v, why, d, w in conn.execute(
                "SELECT id, clock_ts, family, status, version, reason, detail, wall_s FROM "
                "retrain_jobs WHERE run_id=? ORDER BY id", (run_id,)).fetchall()]
    return {"periods": periods, "jobs": jobs}


def hit_rates(conn: sqlite3.Connection, run_id: int, jobs: list[dict[str, Any]],
              n: int = HIT_N) -> list[dict[str, Any]]:
    """Per retrain job: the family's directional hit rate on decisive outcomes (label long
    or short: did the side it favoured win? as the learner's performance trigger counts
    it) over the last n outcomes settled before the job and the first n bars after it,
    each with its sample size and Wilson 95 % interval."""
    sql = ("SELECT p.p_long >= p.p_short, s.label, p.version FROM predictions p JOIN samples s "
           "ON s.run_id=p.run_id AND s.symbol=p.symbol AND s.ts=p.ts WHERE p.run_id=? AND "
           "p.model=? AND p.role='serving' AND s.label IN (?, ?) AND ")
    out = []
    for j in jobs:
        args = (run_id, j["family"], LABEL_LONG, LABEL_SHORT, j["ts"])
        before = conn.execute(sql + "p.ts<? AND s.resolved_at<? ORDER BY p.ts DESC, p.symbol "
                              "LIMIT ?", (*args, j["ts"], n)).fetchall()
        after = conn.execute(sql + "p.ts>=? ORDER BY p.ts, p.symbol LIMIT ?",
                             (*args, n)).fetchall()
        row = {"job": j["id"], "ts": j["ts"], "family": j["family"],
               "decision": j["decision"], "challenger": j["version"]}
        for side, rows in (("before", before), ("after", after)):
            hits = [(lng == 1) == (lab == LABEL_LONG) for lng, lab, _ in rows]
            row[f"n_{side}"] = len(rows)
            row[f"hit_{side}_pct"] = 100.0 * sum(hits) / len(hits) if hits else None
            row[f"hit_{side}_ci95_pct"] = [None if x is None else 100.0 * x
                                           for x in wilson(sum(hits), len(hits))]
            row[f"served_{side}"] = "+".join(sorted({v for *_, v in rows})) or None
        out.append(row)
    return out


# ---------------------------------------------------------------------------- reporting


def _f(x: float | None, nd: int = 2, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _pnl(d: dict[str, float]) -> str:
    return ", ".join(f"{v:+.6g} {q}" for q, v in d.items())


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]).replace("|", "/") for h in head) + " |"
              for r in rows]
    return "\n".join(lines)


def hit_change_summary(hits: list[dict[str, Any]]) -> str:
    """Mean before->after change where the serving version changed vs where it did not.

    Why both: a performance-triggered retrain fires after a bad stretch, so hit rates tend
    to recover afterwards whether or not a new model serves (regression to the mean). The
    jobs that left the same model serving measure that drift; only the difference between
    the two numbers can be credited to retraining.
    """
    groups: dict[bool, list[float]] = {True: [], False: []}
    for h in hits:
        if h["hit_before_pct"] is None or h["hit_after_pct"] is None:
            continue
        changed = h["served_after"] != h["served_before"]
        groups[changed].append(h["hit_after_pct"] - h["hit_before_pct"])

    def mean(xs: list[float]) -> str:
        return f"{np.mean(xs):+.1f} pp over {len(xs)} jobs" if xs else "no jobs"

    return (f"Mean change where the serving version changed: {mean(groups[True])}; where "
            f"the same model served on both sides: {mean(groups[False])}. Retrains "
            "triggered by a low hit rate start after a bad stretch, so the second number "
            "is what the rates do by themselves; only the difference can be credited to "
            "retraining.")


def _beat(a: float, b: float) -> str:
    return "did" if a > b else "did not"


def headline(st: dict[str, dict[str, Any]], deploys: int, jobs: int) -> str:
    """The plain sentence at the top: what won, whatever it is."""
    r = {k: v["return_pct"] for k, v in st.items()}
    c = r["continuous"]
    same = " - identical results" if math.isclose(c, r["frozen"], abs_tol=1e-12) else ""
    text = (f"**Continuous learning {_beat(c, r['frozen'])} beat never retrained** "
            f"({c:+.3f} % vs {r['frozen']:+.3f} %{same}); it {_beat(c, r['buy_hold'])} beat "
            f"buy-and-hold ({r['buy_hold']:+.3f} %), {_beat(c, r['buy_hold_exposure'])} beat "
            f"buy-and-hold at its exposure ({r['buy_hold_exposure']:+.3f} %) and "
            f"{_beat(c, r['random'])} beat random entries ({r['random']:+.3f} %) - net of "
            "costs, same test period.")
    if jobs == 0:
        text += " The learner ran no retrain in the test period."
    elif deploys == 0:
        text += (f" None of its {jobs} retrains was deployed, so both daemon arms traded "
                 "the same models.")
    else:
        text += f" {deploys} of its {jobs} retrains were deployed."
    return text


def window_validation(arms: dict[str, Arm], grid: np.ndarray, edges: np.ndarray,
                      windows: dict[str, list[float]]) -> list[dict[str, Any]]:
    """One line per window and arm: bars, closed trades (by exit time), their mean net
    return on notional with its Student-t 95 % interval, and the window's return."""
    out = []
    for i in range(len(edges) - 1):
        lo, hi = int(edges[i]), int(edges[i + 1])
        bars = int(np.count_nonzero((grid >= lo) & (grid < hi)))
        for key, arm in arms.items():
            rets = [r for t, r in arm.trade_returns if lo <= t < hi]
            mean, a, b = t_interval(rets)
            out.append({"window": i, "from": lo, "arm": key, "bars": bars,
                        "trades": len(rets), "mean_trade_pct": pct(mean),
                        "ci95_pct": [pct(a), pct(b)], "return_pct": windows[key][i]})
    return out


def _ci(pair: list[float | None], nd: int = 3) -> str:
    lo, hi = pair
    return "-" if lo is None or hi is None else f"[{lo:+.{nd}f}, {hi:+.{nd}f}]"


def summary_text(conn: sqlite3.Connection, run_id: int) -> str:
    """The daemon's `qtraderd report` text without its Sharpe column: that one covers the
    whole replay; the walk-forward shows one Sharpe per arm, on the test period only."""
    parts = []
    for sec in sections(summarize(conn, run_id)):
        if sec.kind == "kv":
            parts.append(format_kv(sec.body, title=sec.title))
        elif sec.kind == "table":
            rows = [{k: v for k, v in r.items() if k != "Sharpe"} for r in sec.body]
            parts.append(format_table(rows, title=sec.title))
        else:
            parts.append(sec.body)
    return "\n\n".join(parts) + "\n"


def measure(plan: Plan, runs: dict[str, int]) -> dict[str, Any]:
    """All five arms and the learning history of arm 1, from the stores."""
    work = plan.work
    base = connect(work / "base" / "state", readonly=True)
    try:
        bars = load_bars(base, plan)
    finally:
        base.close()
    grid = period_grid(bars, plan)
    arms: dict[str, Arm] = {}
    out: dict[str, Any] = {}
    for key in ("continuous", "frozen"):
        conn = connect(work / key / "state", readonly=True)
        try:
            arms[key] = daemon_arm(conn, runs[key], plan, grid, key)
            out[f"summary_{key}"] = summary_text(conn, runs[key])
            if key == "continuous":
                out["history"] = learning_history(conn, runs[key])
                out["hits"] = hit_rates(conn, runs[key], out["history"]["jobs"])
                sizes = entry_fractions(conn, runs[key], plan)
        finally:
            conn.close()
    arms["buy_hold"] = buy_hold_arm(bars, plan, grid)
    arms["buy_hold_exposure"] = at_exposure(arms["buy_hold"], arms["continuous"].exposure,
                                            ARMS["continuous"])
    arms["random"], out["random_trades"] = random_arm(bars, plan, grid, sizes, plan.cfg.seed)
    windows = window_returns(arms, grid, plan.edges())
    out.update(grid=grid, arms=arms, edges=plan.edges(), windows=windows,
               validation=window_validation(arms, grid, plan.edges(), windows),
               stats={k: a.stats(plan.interval_ms) for k, a in arms.items()})
    return out


def write_report(plan: Plan, runs: dict[str, int], walls: dict[str, float],
                 initial: list[dict[str, Any]], tomls: dict[str, Path]) -> tuple[Path, str]:
    """<out>/walkforward.md, walkforward.json and the PNGs -> (markdown path, headline)."""
    from qtraderd.reporting import walkforward_plots as plots
    m = measure(plan, runs)
    st, hist, hits, edges = m["stats"], m["history"], m["hits"], m["edges"]
    out = plan.out
    deploy_ts = [j["ts"] for j in hist["jobs"] if j["decision"] == "deploy"]
    plots.equity_png(out / "equity.png", m["grid"], {ARMS[k]: a.values for k, a in
                                                     m["arms"].items()}, deploy_ts)
    plots.windows_png(out / "windows.png", edges, {ARMS[k]: v for k, v in
                                                   m["windows"].items()})
    plots.versions_png(out / "versions.png", hist["periods"], hist["jobs"],
                       plan.test_start, plan.test_end + plan.interval_ms)
    cfg, lc, s = plan.cfg, plan.cfg.learning, plan.cfg.sizing
    costs = CostModel.from_config(cfg.costs)
    breakeven = costs.breakeven_win_rate(s.take_profit_pct / 100, s.stop_loss_pct / 100)
    end = plan.test_end + plan.interval_ms
    deploys = sum(j["decision"] == "deploy" for j in hist["jobs"])
    q0 = quote_asset(plan.symbols[0])
    frac = per_quote(s.margin, q0) * s.leverage / per_quote(cfg.account.balances, q0)
    settings = {
        "symbols": f"{', '.join(plan.symbols)} ({cfg.feed.interval})",
        "replay (both daemon arms)": f"{iso(plan.hist_start)} .. {iso(plan.test_end)} UTC",
        "initial models trained on": f"{iso(plan.hist_start)} .. {iso(plan.test_start)} "
                                     f"(--train-days {plan.train_days:g} + eval window "
                                     f"{lc.eval_window_days:g} d; last "
                                     f"{100 * cfg.train.valid_fraction:g} % held out)",
        "test period (out of sample)": f"{iso(plan.test_start)} .. {iso(end)} UTC "
                                       f"({(end - plan.test_start) / 86_400_000:.2f} days)",
        "learner": f"retrain every {plan.retrain_hours:g} h (time trigger; the other "
                   f"triggers stay on), sliding window {lc.train_window_days:g} d + gate "
                   f"window {lc.eval_window_days:g} d, families {', '.join(lc.families)}, "
                   f"mode {lc.mode}",
        "seed": str(cfg.seed),
        "costs": f"taker {cfg.costs.taker_fee_pct:g} % + slippage {cfg.costs.slippage_bps:g}"
                 f" bps per side = {100 * costs.round_trip():.3f} % round trip",
        "barriers": f"TP {s.take_profit_pct:g} % / SL {s.stop_loss_pct:g} %, horizon "
                    f"{cfg.labels.horizon_bars} bars; breakeven win rate "
                    f"{100 * breakeven:.1f} %",
        "notional per trade": f"margin x {s.leverage:g} = {100 * frac:.2f} % of the "
                              f"{q0} account (the daemon's RL sizer scales it 0.5-1.5x)",
        "configs that ran": ", ".join(f"`{p}`" for p in tomls.values()),
        "wall time": ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()),
    }
    arm_rows = [{"arm": v["arm"], "entries": v["entries"], "closed trades": v["trades"],
                 "win rate %": _f(v["win_rate_pct"], 1), "net PnL (closed)": _pnl(v["net_pnl"]),
                 "return %": _f(v["return_pct"], 3, True),
                 "max DD %": _f(v["max_drawdown_pct"], 3), "Sharpe": _f(v["sharpe"], 2),
                 "exposure %": _f(v["exposure_pct"], 2),
                 "in market %": _f(v["time_in_market_pct"], 1),
                 "mean trade %": _f(v["mean_trade_pct"], 3, True),
                 "95 % CI (t)": _ci(v["mean_trade_ci95_pct"]),
                 "note": v["note"] or ""} for v in st.values()]
    val_rows = [{"window": f"{iso(v['from'])}", "arm": ARMS[v["arm"]], "bars": v["bars"],
                 "closed trades": v["trades"], "mean trade %": _f(v["mean_trade_pct"], 3, True),
                 "95 % CI (t)": _ci(v["ci95_pct"]), "return %": _f(v["return_pct"], 3, True)}
                for v in m["validation"] if v["arm"] != "buy_hold_exposure"]
    win_rows = []
    for i in range(len(edges) - 1):
        row = {"window": f"{iso(int(edges[i]))} .. {iso(int(min(edges[i + 1], end)))}"}
        row.update({ARMS[k] + " %": _f(v[i], 3, True) for k, v in m["windows"].items()})
        row["retrains (deployed)"] = "{} ({})".format(
            sum(edges[i] <= j["ts"] < edges[i + 1] for j in hist["jobs"]),
            sum(edges[i] <= t < edges[i + 1] for t in deploy_ts))
        win_rows.append(row)
    w = m["windows"]
    won = sum(a > b for a, b in zip(w["continuous"], w["frozen"], strict=True))
    lost = sum(a < b for a, b in zip(w["continuous"], w["frozen"], strict=True))
    tied = len(w["continuous"]) - won - lost
    period_rows = [{"family": p["family"], "version": p["version"],
                    "served from": iso(p["from"]), "to": iso(p["to"]),
                    "bars predicted": p["bars"]} for p in hist["periods"]]
    job_rows = [{"job": j["id"], "data time": iso(j["ts"]), "family": j["family"],
                 "trigger": (j["reason"] or "")[:60], "decision": j["decision"],
                 "challenger": j["version"] or "-", "gate": (j["detail"] or "")[:90],
                 "wall s": _f(j["wall_s"], 1)}
                for j in hist["jobs"]]
    hit_rows = [{"job": h["job"], "data time": iso(h["ts"]), "family": h["family"],
                 "decision": h["decision"], "served before": h["served_before"] or "-",
                 "n before": h["n_before"], "hit before %": _f(h["hit_before_pct"], 1),
                 "95 % CI before": _ci(h["hit_before_ci95_pct"], 1),
                 "served after": h["served_after"] or "-", "n after": h["n_after"],
                 "hit after %": _f(h["hit_after_pct"], 1),
                 "95 % CI after": _ci(h["hit_after_ci95_pct"], 1),
                 "change (pp)": _f(None if h["hit_before_pct"] is None or h["hit_after_pct"]
                                   is None else h["hit_after_pct"] - h["hit_before_pct"],
                                   1, True)} for h in hits]
    md = [
        "# Walk-forward: continuous learning vs never retrained",
        headline(st, deploys, len(hist["jobs"])),
        f"Buy-and-hold is fully invested in the symbols; the trading arms commit "
        f"{100 * frac:.2f} % of the account as notional per trade, so their returns are "
        "on a smaller scale. Buy-and-hold at exposure is the same purchase with only the "
        "continuous arm's average exposure invested (its open notional over its equity, "
        "averaged over the test period's bars; the rest held as cash), so its return is "
        "exactly that exposure times buy-and-hold's. Random entries take as many entries "
        "as continuous learning, at seeded random bars and sides, with its sizes (the "
        "k-th random entry commits the fraction of the account the k-th real one did) "
        "and the daemon's exits (TP/SL, trailing stop, time stop).",
        "## Settings", _table([{"setting": k, "value": v} for k, v in settings.items()]),
        "## Results per arm (net of fees and slippage, test period only)",
        _table(arm_rows),
        f"Return, max drawdown and Sharpe come from each arm's equity curve over the test "
        f"period, marked to market at every {cfg.feed.interval} bar close; Sharpe is the "
        f"same for every arm: mean / std of the per-bar returns x sqrt(bars per year), and "
        "it is the only Sharpe given per arm (the daemon summaries below leave theirs out: "
        "they span the whole replay). Exposure: open notional / equity, averaged over the "
        "bars; in market: share of bars with a position open. Win rate, net PnL and the "
        "mean trade (net return on the trade's notional, Student-t 95 % interval of the "
        "mean) from closed trades.",
        "![equity curves](equity.png)",
        f"## Per window ({plan.retrain_hours:g} h each)",
        _table(win_rows),
        f"Continuous learning beat never retrained in {won} of {len(win_rows)} windows and "
        f"lost in {lost} ({tied} tied).",
        "![per-window returns](windows.png)",
        "### Per window and arm: sample size and 95 % interval",
        "Closed trades are counted in the window their exit falls in; the interval is the "
        "Student-t 95 % interval of the mean net trade return (none below 2 trades). "
        "Buy-and-hold holds one position through the whole period, so it has no trades "
        "per window.",
        _table(val_rows),
        "## Model versions over time (continuous learning)",
        "What served when (from the predictions each version made):",
        _table(period_rows),
        "Every retrain job and the gate's decision:",
        _table(job_rows),
        "![model versions](versions.png)",
        f"## Hit rate before and after each retrain (N = {HIT_N})",
        "Directional hit rate of the family's serving model on decisive outcomes (the "
        "label was long or short: did the side the model favoured win?), over the last N "
        "outcomes settled before the retrain and the first N predictions from it on. "
        "Every job is listed, whatever the gate decided; after a keep or reject the same "
        "model serves on both sides, so its change shows how much these rates move "
        "without any retrain: N outcomes span only about N / symbols bars, and "
        "neighbouring outcomes overlap. Intervals: Wilson 95 % on the hit rate, from n.",
        _table(hit_rows),
        hit_change_summary(hits),
        "## Daemon run summaries (as `qtraderd report` prints them)",
        f"### {ARMS['continuous']}", "```\n" + m["summary_continuous"].rstrip() + "\n```",
        f"### {ARMS['frozen']}", "```\n" + m["summary_frozen"].rstrip() + "\n```",
    ]
    path = out / "walkforward.md"
    path.write_text("\n\n".join(md) + "\n")
    doc = {"settings": settings, "test_start": plan.test_start, "test_end": plan.test_end,
           "runs": runs, "arms": st, "windows": {"edges": [int(e) for e in edges],
                                                 "returns_pct": w},
           "validation": m["validation"],
           "versions": hist["periods"], "jobs": hist["jobs"], "hit_rates": hits,
           "initial_models": [{k: v for k, v in i.items() if k in ("family", "version")}
                              for i in initial],
           "random_trades": m["random_trades"], "wall_s": walls}
    (out / "walkforward.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return path, md[1]
