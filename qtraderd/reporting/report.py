"""The end-of-run summary, computed from SQLite alone (so it works for any past run).

Everything is net of fees and slippage, because the trades table is. Sharpe is the
annualised mean/std of per-bar equity returns of each quote account; max drawdown is the
worst peak-to-trough fall of that equity. The comparison rows are there so a flat or
losing result is read for what it is: the breakeven win rate of the configured barriers
after costs, each model's out-of-sample validation AUC from training, and buy-and-hold of
each symbol over the same trading window.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any, NamedTuple

import numpy as np

from qtraderd.control.tables import format_kv, format_table
from qtraderd.core.clock import iso
from qtraderd.core.config import INTERVAL_MS
from qtraderd.core.costs import CostModel

YEAR_MS = 365 * 86_400_000


class ReportError(ValueError):
    pass


def latest_run(conn: sqlite3.Connection) -> int:
    """The run a report means by default: the newest one that is running or recorded a
    step; a run that never got going (no bars, not running) must not hide the live one."""
    row = conn.execute("SELECT id FROM runs ORDER BY (bars > 0 OR status = 'running') DESC, "
                       "id DESC LIMIT 1").fetchone()
    if row is None or row[0] is None:
        raise ReportError("no runs recorded in this store yet (start one with `qtraderd run`)")
    return int(row[0])


def equity_series(conn: sqlite3.Connection, run_id: int, quote: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(ts, equity) of one quote account, every recorded step, in order.

    Shared by the summary's statistics and the HTML report's plots, so a curve and the
    numbers printed next to it can never come from different rows.
    """
    rows = conn.execute("SELECT ts, equity FROM equity WHERE run_id=? AND quote=? ORDER BY seq",
                        (run_id, quote)).fetchall()
    arr = np.array(rows, dtype=float).reshape(-1, 2)
    return arr[:, 0].astype(np.int64), arr[:, 1]


def drawdown(eq: np.ndarray) -> np.ndarray:
    """Fall from the running peak at every step, as a fraction (0 at a new high)."""
    if not len(eq):
        return np.zeros(0)
    peak = np.maximum.accumulate(eq)
    if not np.all(peak > 0):
        return np.zeros(len(eq))
    return 1.0 - eq / peak


def _equity_stats(conn: sqlite3.Connection, run_id: int, quote: str, interval_ms: int
                  ) -> dict[str, Any]:
    eq = equity_series(conn, run_id, quote)[1]
    if len(eq) < 2:
        return {"end_equity": float(eq[-1]) if len(eq) else None, "max_drawdown_pct": 0.0,
                "sharpe": None}
    dd = float(np.max(drawdown(eq)))
    rets = np.diff(eq) / eq[:-1]
    sd = float(np.std(rets))
    sharpe = None
    if sd > 0:
        sharpe = float(np.mean(rets) / sd * math.sqrt(YEAR_MS / interval_ms))
    return {"end_equity": float(eq[-1]), "max_drawdown_pct": 100.0 * dd, "sharpe": sharpe}


def history_window(first_ts: int | None, last_ts: int | None) -> tuple[int, int]:
    """The data-time span whose `model_history` rows belong to a run.

    `model_history` is not scoped to a run (the registry outlives runs), so a run's
    registry events are the ones stamped with a clock time inside its data span (plus a
    day: a job finishing after the last bar is still this run's).
    """
    return first_ts or 0, (last_ts or 0) + 86_400_000


def summarize(conn: sqlite3.Connection, run_id: int | None = None) -> dict[str, Any]:
    run_id = latest_run(conn) if run_id is None else run_id
    run = conn.execute(
        "SELECT id, started_at, ended_at, mode, source, config, symbols, interval, status, "
        "bars, first_ts, last_ts FROM runs WHERE id=?", (run_id,)).fetchone()
    if run is None:
        raise ReportError(f"no run {run_id} in this store")
    cfg = json.loads(run[5])
    symbols = json.loads(run[6])
    interval = run[7]
    interval_ms = INTERVAL_MS.get(interval, 300_000)
    costs = CostModel(cfg["costs"]["taker_fee_pct"] / 100, cfg["costs"]["maker_fee_pct"] / 100,
                      cfg["costs"]["slippage_bps"] / 10_000)
    tp, sl = cfg["sizing"]["take_profit_pct"] / 100, cfg["sizing"]["stop_loss_pct"] / 100
    trade_from = conn.execute(
        "SELECT min(ts) FROM predictions WHERE run_id=?", (run_id,)).fetchone()[0]

    accounts = []
    start_balances = cfg["account"]["balances"]
    for (quote,) in conn.execute("SELECT DISTINCT quote FROM equity WHERE run_id=? "
                                 "ORDER BY quote", (run_id,)).fetchall():
        st = _equity_stats(conn, run_id, quote, interval_ms)
        t = conn.execute(
            "SELECT count(*), sum(net_pnl > 0), sum(net_pnl), sum(fees), avg(return_pct), "
            "avg(CASE WHEN net_pnl > 0 THEN return_pct END), "
            "avg(CASE WHEN net_pnl <= 0 THEN return_pct END) "
            "FROM trades WHERE run_id=? AND quote=?", (run_id, quote)).fetchone()
        start = start_balances.get(quote)
        if not t[0] and st["end_equity"] == start:
            continue  # an account nothing traded in
        accounts.append({
            "quote": quote, "start": start, "end_equity": st["end_equity"],
            "net_pnl": t[2] or 0.0,
            "return_pct": (100.0 * (st["end_equity"] / start - 1.0)) if start else None,
            "trades": t[0], "win_rate_pct": (100.0 * t[1] / t[0]) if t[0] else None,
            "avg_trade_pct": t[4], "avg_win_pct": t[5], "avg_loss_pct": t[6],
            "fees": t[3] or 0.0,
            "max_drawdown_pct": st["max_drawdown_pct"], "sharpe": st["sharpe"],
        })

    per_symbol = []
    for sym in symbols:
        t = conn.execute(
            "SELECT count(*), sum(net_pnl > 0), sum(net_pnl), avg(return_pct), sum(side > 0), "
            "sum(side < 0) FROM trades WHERE run_id=? AND symbol=?", (run_id, sym)).fetchone()
        per_symbol.append({
            "symbol": sym, "trades": t[0],
            "win_rate_pct": (100.0 * t[1] / t[0]) if t[0] else None,
            "net_pnl": t[2] or 0.0, "avg_trade_pct": t[3], "long": t[4] or 0,
            "short": t[5] or 0,
            "buy_hold_pct": _buy_hold(conn, sym, interval, trade_from, run[11]),
        })

    exits = dict(conn.execute("SELECT exit_reason, count(*) FROM trades WHERE run_id=? "
                              "GROUP BY exit_reason ORDER BY 2 DESC", (run_id,)).fetchall())
    denied = dict(conn.execute(
        "SELECT risk_reason, count(*) FROM orders WHERE run_id=? AND risk_action='deny' "
        "GROUP BY risk_reason ORDER BY 2 DESC", (run_id,)).fetchall())
    halts = conn.execute("SELECT count(*) FROM risk_events WHERE run_id=? AND state='HALTED' "
                         "AND prev_state<>'HALTED'", (run_id,)).fetchone()[0]
    models = []
    for model, version in conn.execute(
            "SELECT DISTINCT model, version FROM predictions WHERE run_id=? AND model<>'ensemble'"
            " ORDER BY model, version", (run_id,)).fetchall():
        m = conn.execute("SELECT metrics FROM models WHERE family=? AND version=?",
                         (model, version)).fetchone()
        metrics = json.loads(m[0]) if m else {}
        models.append({"model": model, "version": version,
                       "valid_auc_long": metrics.get("auc_long"),
                       "valid_auc_short": metrics.get("auc_short")})
    restarts = conn.execute("SELECT count(*) FROM actor_events WHERE run_id=? AND "
                            "event='restarted'", (run_id,)).fetchone()[0]
    learning = [
        {"family": f, "jobs": n, "deploy": d or 0, "canary": c or 0, "keep": k or 0,
         "reject": r or 0, "failed": x or 0, "avg_job_s": w}
        for f, n, d, c, k, r, x, w in conn.execute(
            "SELECT family, count(*), sum(status='deploy'), sum(status='canary'), "
            "sum(status='keep'), sum(status='reject'), sum(status='failed'), "
            "round(avg(wall_s), 1) FROM retrain_jobs WHERE run_id=? GROUP BY family "
            "ORDER BY family", (run_id,)).fetchall()]
    evaluations = conn.execute("SELECT count(*) FROM learner_evaluations WHERE run_id=?",
                               (run_id,)).fetchone()[0]
    swaps = [{"at": iso(ts), "family": f, "version": v, "status": st, "reason": why}
             for ts, f, v, st, why in conn.execute(
                 "SELECT clock_ts, family, version, status, reason FROM model_history "
                 "WHERE status='champion' AND clock_ts BETWEEN ? AND ? ORDER BY id",
                 history_window(run[10], run[11])).fetchall()]
    refused = [{"at": iso(ts), "family": f, "version": v, "reason": why}
               for ts, f, v, why in conn.execute(
                   "SELECT clock_ts, family, version, reason FROM model_history WHERE "
                   "status='rejected' AND (reason LIKE 'refused:%' OR reason LIKE "
                   "'leakage alarm%') AND clock_ts BETWEEN ? AND ? ORDER BY id",
                   history_window(run[10], run[11])).fetchall()]
    return {
        "run": {"id": run[0], "status": run[8], "mode": run[3], "source": run[4],
                "symbols": len(symbols), "interval": interval, "bars": run[9],
                "data": f"{iso(run[10])} .. {iso(run[11])}",
                "trading_window": (f"{iso(trade_from)} .. {iso(run[11])}" if trade_from
                                   else "none (no out-of-sample predictions)"),
                "breakeven_win_rate_pct": 100.0 * costs.breakeven_win_rate(tp, sl),
                "barriers": f"{100 * tp:g} % / {100 * sl:g} %",
                "risk_halts": halts, "actor_restarts": restarts},
        "accounts": accounts,
        "symbols": per_symbol,
        "exit_reasons": exits,
        "denied_orders": denied,
        "filter_vetoes": filter_vetoes(conn, run_id),
        "models": models,
        "learning": {"evaluations": evaluations, "jobs": learning, "champion_changes": swaps,
                     "refused": refused},
    }


def _buy_hold(conn: sqlite3.Connection, symbol: str, interval: str, start: int | None,
              end: int | None) -> float | None:
    if start is None or end is None:
        return None
    first = conn.execute("SELECT open FROM bars WHERE symbol=? AND interval=? AND open_time>? "
                         "ORDER BY open_time LIMIT 1", (symbol, interval, start)).fetchone()
    last = conn.execute("SELECT close FROM bars WHERE symbol=? AND interval=? AND open_time<=? "
                        "ORDER BY open_time DESC LIMIT 1", (symbol, interval, end)).fetchone()
    if not first or not last or first[0] <= 0:
        return None
    return 100.0 * (last[0] / first[0] - 1.0)


def _r(x: Any, nd: int = 2) -> Any:
    return round(x, nd) if isinstance(x, float) else x


class Section(NamedTuple):
    """One block of the summary: `kind` is "kv" (body: dict), "table" (body: list of row
    dicts) or "text" (body: str). The text report and the HTML report render the same
    sections, so the numbers they show are the same by construction."""

    kind: str
    title: str | None
    body: Any


def sections(s: dict[str, Any]) -> list[Section]:
    run = s["run"]
    out = [Section("kv", "qtraderd run summary", {
        "run": f"{run['id']} ({run['status']}, {run['mode']} {run['source']})",
        "data": f"{run['data']}, {run['bars']:,} bars, {run['symbols']} symbols, "
                f"{run['interval']}",
        "trading window (out-of-sample)": run["trading_window"],
        f"breakeven win rate of TP/SL {run['barriers']} after costs":
            f"{run['breakeven_win_rate_pct']:.1f} %",
        "risk halts / actor restarts": f"{run['risk_halts']} / {run['actor_restarts']}",
    })]
    out.append(Section("text", None,
                       "Returns are per trade on the margin committed; a win is any trade "
                       "that made money after costs (trailing stops lock in wins smaller than "
                       "the take-profit, so the win rate alone does not show the edge)."))
    if s["accounts"]:
        out.append(Section("table", "Totals (net of fees and slippage)", [
            {"quote": a["quote"], "trades": a["trades"], "win rate %": _r(a["win_rate_pct"], 1),
             "net PnL": a["net_pnl"], "return %": _r(a["return_pct"], 3),
             "avg trade %": _r(a["avg_trade_pct"], 3), "avg win %": _r(a["avg_win_pct"], 2),
             "avg loss %": _r(a["avg_loss_pct"], 2), "fees": a["fees"],
             "max DD %": _r(a["max_drawdown_pct"], 3), "Sharpe": _r(a["sharpe"], 2)}
            for a in s["accounts"]]))
    else:
        out.append(Section("text", None, "Totals: no trades."))
    out.append(Section("table", "Per symbol", [
        {"symbol": r["symbol"], "trades": r["trades"], "long/short": f"{r['long']}/{r['short']}",
         "win rate %": _r(r["win_rate_pct"], 1), "net PnL": r["net_pnl"],
         "avg trade %": _r(r["avg_trade_pct"], 3), "buy&hold %": _r(r["buy_hold_pct"], 2)}
        for r in s["symbols"]]))
    if s["models"]:
        out.append(Section("table", "Models served", [
            {"model": m["model"], "version": m["version"],
             "valid AUC long": _r(m["valid_auc_long"], 3),
             "valid AUC short": _r(m["valid_auc_short"], 3)} for m in s["models"]]))
    lr = s.get("learning") or {}
    if lr.get("jobs"):
        out.append(Section(
            "table", f"Learning loop ({lr['evaluations']} trigger evaluations; gate decisions "
                     "per family)",
            [{"family": j["family"], "retrains": j["jobs"], "deployed": j["deploy"],
              "canary": j["canary"], "kept champion": j["keep"], "rejected": j["reject"],
              "failed": j["failed"], "avg job s": j["avg_job_s"]} for j in lr["jobs"]]))
        if lr["champion_changes"]:
            out.append(Section(
                "table", "Champion changes (hot swaps between two bars)",
                [{"data time": c["at"], "model": c["family"], "new champion": c["version"],
                  "why": c["reason"][:70]} for c in lr["champion_changes"]]))
    if lr.get("refused"):
        out.append(Section(
            "table", "Refused by the gate (never deployed: trained on the evaluation "
                     "window, no lineage in the store, or a leakage alarm)",
            [{"data time": r["at"], "model": r["family"], "version": r["version"],
              "why": r["reason"]} for r in lr["refused"]]))
    if s["exit_reasons"]:
        out.append(Section("text", None, "Exits: " + ", ".join(
            f"{k} {v}" for k, v in s["exit_reasons"].items())))
    if s["denied_orders"]:
        out.append(Section("text", None, "Denied by risk: " + ", ".join(
            f"{k} {v}" for k, v in s["denied_orders"].items())))
    out.extend(filter_sections(s))
    return out


def filter_vetoes(conn: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    """What the plugins' signal filters did to entries that passed the rule, per plugin
    and reason: `vetoed` (no order; the signal is stored with action "veto") and `scaled`
    (entered smaller; action "enter", the reason names the filter). Both reasons read
    "plugin:NAME:why" (plugins.host.filter_signal). Without this an operator sees fewer
    trades and no cause: vetoes never reach risk, so "Denied by risk" cannot show them."""
    out = []
    for reason, vetoed, scaled in conn.execute(
            "SELECT reason, sum(action='veto'), sum(action='enter') FROM signals WHERE "
            "run_id=? AND reason LIKE 'plugin:%' AND action IN ('veto', 'enter') GROUP BY "
            "reason ORDER BY 2 DESC, 3 DESC, 1", (run_id,)).fetchall():
        _, plugin, why = [*reason.split(":", 2), "", ""][:3]
        out.append({"plugin": plugin, "reason": why, "vetoed": vetoed, "scaled": scaled})
    return out


def filter_sections(s: dict[str, Any]) -> list[Section]:
    """The plugin filter table (none when no filter acted), for the text and HTML reports."""
    rows = s.get("filter_vetoes") or []
    if not rows:
        return []
    total = sum(r["vetoed"] for r in rows)
    return [Section("table", f"Plugin signal filters ({total} entries vetoed)", [
        {"plugin": r["plugin"], "reason": r["reason"], "vetoed": r["vetoed"],
         "scaled down": r["scaled"]} for r in rows])]


def render(s: dict[str, Any]) -> str:
    parts = []
    for sec in sections(s):
        if sec.kind == "kv":
            parts.append(format_kv(sec.body, title=sec.title))
        elif sec.kind == "table":
            parts.append(format_table(sec.body, title=sec.title))
        else:
            parts.append(sec.body)
    return "\n\n".join(parts) + "\n"
