"""What `qtraderd walkforward` measures and writes: four arms on one test period.

Why the numbers are computed here and not taken from the daemon's own end-of-run summary:
the four arms must be compared on the same bars with the same definitions. So every arm
becomes an equity multiple on one time grid (the bar closes of the test period, 1.0 at
its start), and return, drawdown and Sharpe are computed from that curve the way
report.py computes them from the equity table (annualised per-bar Sharpe, worst
peak-to-trough). The daemon arms' curves come from their `equity` tables (marked to
market each bar), trades and entries from `trades` / `fills`; buy-and-hold and random
entries are computed from the bars with the same cost model. Nothing is filtered for
looking good: every retrain job appears, whatever its decision.
"""

from __future__ import annotations

import json
import math
import sqlite3
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qtraderd.core.clock import iso
from qtraderd.core.config import per_quote
from qtraderd.core.costs import CostModel
from qtraderd.core.instruments import quote_asset
from qtraderd.core.messages import LABEL_LONG, LABEL_SHORT
from qtraderd.features.labels import Barriers, triple_barrier
from qtraderd.reporting.report import YEAR_MS, render, summarize
from qtraderd.reporting.walkforward_plan import ARMS, HIT_N, Plan
from qtraderd.store.db import connect


@dataclass
class Arm:
    """One arm on the common time grid of the test period (value 1.0 = its start)."""

    key: str
    values: np.ndarray  # equity multiple at the close of every grid bar
    entries: int
    trades: int  # closed
    wins: int
    net_pnl: dict[str, float]  # per quote currency, realised
    note: str = ""

    def stats(self, interval_ms: int) -> dict[str, Any]:
        """Return, drawdown and Sharpe as report.py computes them, on the test period."""
        v = np.concatenate([[1.0], self.values])
        peak = np.maximum.accumulate(v)
        rets = np.diff(v) / v[:-1]
        sd = float(np.std(rets))
        return {"arm": ARMS[self.key], "entries": self.entries, "trades": self.trades,
                "win_rate_pct": 100.0 * self.wins / self.trades if self.trades else None,
                "net_pnl": self.net_pnl, "return_pct": 100.0 * (v[-1] - 1.0),
                "max_drawdown_pct": 100.0 * float(np.max(1.0 - v / peak)),
                "sharpe": (float(np.mean(rets)) / sd * math.sqrt(YEAR_MS / interval_ms)
                           if sd > 0 else None), "note": self.note}


def load_bars(conn: sqlite3.Connection, plan: Plan) -> dict[str, np.ndarray]:
    """(n, 5) arrays of open_time, open, high, low, close per symbol, up to the test end."""
    out = {}
    for sym in plan.symbols:
        rows = conn.execute("SELECT open_time, open, high, low, close FROM bars WHERE "
                            "symbol=? AND interval=? AND open_time<=? ORDER BY open_time",
                            (sym, plan.cfg.feed.interval, plan.test_end)).fetchall()
        out[sym] = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return out


def period_grid(bars: dict[str, np.ndarray], plan: Plan) -> np.ndarray:
    ts = np.concatenate([a[:, 0] for a in bars.values()]).astype(np.int64)
    return np.unique(ts[(ts >= plan.test_start) & (ts <= plan.test_end)])


def ffill(grid: np.ndarray, ts: np.ndarray, values: np.ndarray, before: float) -> np.ndarray:
    """values at the last ts <= each grid time (`before` where there is none yet)."""
    idx = np.searchsorted(ts, grid, side="right") - 1
    return np.where(idx >= 0, values[np.maximum(idx, 0)], before)


def daemon_arm(conn: sqlite3.Connection, run_id: int, plan: Plan, grid: np.ndarray,
               key: str) -> Arm:
    """A daemon arm from its store: equity (marked to market) and trades in the test period.

    With several quote currencies the multiple is the mean of each account's multiple.
    """
    curves, pnl = [], {}
    for q in sorted({quote_asset(s) for s in plan.symbols}):
        rows = np.array(conn.execute("SELECT ts, equity FROM equity WHERE run_id=? AND "
                                     "quote=? ORDER BY seq", (run_id, q)).fetchall(),
                        dtype=np.float64).reshape(-1, 2)
        pre = rows[rows[:, 0] < plan.test_start]
        base = float(pre[-1, 1]) if len(pre) else per_quote(plan.cfg.account.balances, q)
        curves.append(ffill(grid, rows[:, 0], rows[:, 1], base) / base)
        pnl[q] = float(conn.execute(
            "SELECT coalesce(sum(net_pnl), 0) FROM trades WHERE run_id=? AND quote=? AND "
            "entry_ts>=?", (run_id, q, plan.test_start)).fetchone()[0])
    n, wins = conn.execute("SELECT count(*), coalesce(sum(net_pnl > 0), 0) FROM trades WHERE "
                           "run_id=? AND entry_ts>=?", (run_id, plan.test_start)).fetchone()
    entries, early = conn.execute(
        "SELECT coalesce(sum(ts>=?), 0), coalesce(sum(ts<?), 0) FROM fills WHERE run_id=? "
        "AND reason='entry'", (plan.test_start, plan.test_start, run_id)).fetchone()
    open_now = conn.execute("SELECT count(*) FROM positions WHERE run_id=? AND qty>0",
                            (run_id,)).fetchone()[0]
    note = f"{open_now} position(s) still open at the end, marked to market" if open_now \
        else ""
    if early:
        note += f"; {early} entries before the test period left out"
    return Arm(key, np.mean(curves, axis=0), int(entries), int(n), int(wins), pnl, note)


def buy_hold_arm(bars: dict[str, np.ndarray], plan: Plan, grid: np.ndarray) -> Arm:
    """Equal weight per symbol: buy at the first test bar's open, mark at each close,
    one cost-model round trip (fees + slippage) taken off."""
    rt = CostModel.from_config(plan.cfg.costs).round_trip()
    rel, nets, pnl = [], {}, {}
    for sym, a in bars.items():
        a = a[a[:, 0] >= plan.test_start]
        if not len(a):
            continue  # no bar in the test period: nothing to buy
        rel.append(ffill(grid, a[:, 0], a[:, 4] / a[0, 1], 1.0))
        nets[sym] = float(a[-1, 4] / a[0, 1] - 1.0 - rt)
    for q in sorted({quote_asset(s) for s in nets}):
        mine = [r for s, r in nets.items() if quote_asset(s) == q]
        pnl[q] = per_quote(plan.cfg.account.balances, q) * float(np.mean(mine))
    wins = sum(r > 0 for r in nets.values())
    return Arm("buy_hold", np.mean(rel, axis=0) - rt, len(nets), len(nets), wins, pnl,
               "fully invested (the trading arms commit a fraction per trade)")


def random_arm(bars: dict[str, np.ndarray], plan: Plan, grid: np.ndarray, n_entries: int,
               seed: int) -> tuple[Arm, list[tuple[str, int, int, int, float]]]:
    """`n_entries` seeded random entries at out-of-sample bars with random sides.

    Each trade is the triple-barrier outcome (entry at the next open, the configured TP/SL
    and horizon) minus one cost-model round trip, at the configured notional (margin x
    leverage, no RL multiplier). A symbol holds one position at a time: sample t occupies
    [t, settled bar), so a sample at a previous trade's settled bar may trade, as in
    gate.trade_sides. Candidates are visited in a seeded random order until n_entries fit.
    """
    s = plan.cfg.sizing
    b = Barriers(s.take_profit_pct / 100, s.stop_loss_pct / 100, plan.cfg.labels.horizon_bars)
    rt = CostModel.from_config(plan.cfg.costs).round_trip()
    cands, info = [], {}
    for sym, a in bars.items():
        label, settled, rl, rs = triple_barrier(a[:, 1], a[:, 2], a[:, 3], a[:, 4], b)
        info[sym] = (a[:, 0].astype(np.int64), settled, rl, rs)
        cands += [(sym, int(t)) for t in np.flatnonzero((a[:, 0] >= plan.test_start)
                                                        & (label >= 0))]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cands))
    sides = np.where(rng.random(len(cands)) < 0.5, 1, -1) if s.allow_short else \
        np.ones(len(cands), dtype=np.int64)
    busy: dict[str, list[tuple[int, int]]] = {sym: [] for sym in bars}
    taken: list[tuple[str, int, int, int, float]] = []  # symbol, sample ts, exit ts, side,
    # net return
    exits: list[tuple[int, str, float]] = []
    for i in order:
        if len(taken) >= n_entries:
            break
        sym, t = cands[i]
        ts, settled, rl, rs = info[sym]
        r = int(settled[t])
        occ = busy[sym]
        j = bisect_left(occ, (t, r))
        if (j > 0 and occ[j - 1][1] > t) or (j < len(occ) and occ[j][0] < r):
            continue
        occ.insert(j, (t, r))
        net = float((rl[t] if sides[i] > 0 else rs[t]) - rt)
        taken.append((sym, int(ts[t]), int(ts[r]), int(sides[i]), net))
        exits.append((int(ts[r]), sym, net))
    exits.sort()
    curves, pnl = [], {}
    for q in sorted({quote_asset(sym) for sym in plan.symbols}):
        notional = per_quote(s.margin, q) * s.leverage
        bal = per_quote(plan.cfg.account.balances, q)
        mine = [(t, notional * net) for t, sym, net in exits if quote_asset(sym) == q]
        ts_q = np.array([t for t, _ in mine], dtype=np.int64)
        cum = np.cumsum([p for _, p in mine]) if mine else np.zeros(0)
        curves.append(1.0 + ffill(grid, ts_q, cum, 0.0) / bal)
        pnl[q] = float(cum[-1]) if mine else 0.0
    note = "" if len(taken) == n_entries else \
        f"only {len(taken)} of {n_entries} entries fit (one position per symbol)"
    wins = sum(net > 0 for *_, net in taken)
    return Arm("random", np.mean(curves, axis=0), len(taken), len(taken), wins, pnl,
               note), taken


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
    it) over the last n outcomes settled before the job and the first n bars after it."""
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
            f"buy-and-hold ({r['buy_hold']:+.3f} %) and {_beat(c, r['random'])} beat random "
            f"entries ({r['random']:+.3f} %) - net of costs, same test period.")
    if jobs == 0:
        text += " The learner ran no retrain in the test period."
    elif deploys == 0:
        text += (f" None of its {jobs} retrains was deployed, so both daemon arms traded "
                 "the same models.")
    else:
        text += f" {deploys} of its {jobs} retrains were deployed."
    return text


def measure(plan: Plan, runs: dict[str, int]) -> dict[str, Any]:
    """All four arms and the learning history of arm 1, from the stores."""
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
            out[f"summary_{key}"] = render(summarize(conn, runs[key]))
            if key == "continuous":
                out["history"] = learning_history(conn, runs[key])
                out["hits"] = hit_rates(conn, runs[key], out["history"]["jobs"])
        finally:
            conn.close()
    arms["buy_hold"] = buy_hold_arm(bars, plan, grid)
    arms["random"], out["random_trades"] = random_arm(bars, plan, grid,
                                                      arms["continuous"].entries,
                                                      plan.cfg.seed)
    out.update(grid=grid, arms=arms, edges=plan.edges(),
               windows=window_returns(arms, grid, plan.edges()),
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
                 "note": v["note"] or ""} for v in st.values()]
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
                 "served after": h["served_after"] or "-", "n after": h["n_after"],
                 "hit after %": _f(h["hit_after_pct"], 1),
                 "change (pp)": _f(None if h["hit_before_pct"] is None or h["hit_after_pct"]
                                   is None else h["hit_after_pct"] - h["hit_before_pct"],
                                   1, True)} for h in hits]
    md = [
        "# Walk-forward: continuous learning vs never retrained",
        headline(st, deploys, len(hist["jobs"])),
        f"Buy-and-hold is fully invested in the symbols; the trading arms commit "
        f"{100 * frac:.2f} % of the account as notional per trade, so their returns are "
        "on a smaller scale. Random entries take the same number of entries as continuous "
        "learning, with seeded random sides and bars.",
        "## Settings", _table([{"setting": k, "value": v} for k, v in settings.items()]),
        "## Results per arm (net of fees and slippage, test period only)",
        _table(arm_rows),
        "Return, max drawdown and Sharpe (annualised, per bar) come from each arm's equity "
        "curve over the test period, marked to market every bar; win rate and net PnL from "
        "closed trades.",
        "![equity curves](equity.png)",
        f"## Per window ({plan.retrain_hours:g} h each)",
        _table(win_rows),
        f"Continuous learning beat never retrained in {won} of {len(win_rows)} windows and "
        f"lost in {lost} ({tied} tied).",
        "![per-window returns](windows.png)",
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
        "neighbouring outcomes overlap.",
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
           "versions": hist["periods"], "jobs": hist["jobs"], "hit_rates": hits,
           "initial_models": [{k: v for k, v in i.items() if k in ("family", "version")}
                              for i in initial],
           "random_trades": m["random_trades"], "wall_s": walls}
    (out / "walkforward.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return path, md[1]
