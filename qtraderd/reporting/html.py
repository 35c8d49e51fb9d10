"""`qtraderd report --out DIR`: one self-contained HTML file with the run's plots.

Why one file (DIR/report.html, PNGs embedded as base64 data URIs) rather than an index
plus image files: it can be mailed, attached to a ticket or copied off a headless server
as it is, and a browser refreshing it while a new one is written never sees a page whose
images belong to another version (the file is written to a temporary name and renamed).

What it shows, all read from SQLite through a read-only connection in one read
transaction (a consistent snapshot even while the daemon is writing):
- the text summary's sections (report.sections: the same rows, formatted by the same
  cell formatter, so every number equals the text report's), including the honest
  comparison rows: breakeven win rate of the barriers after costs, buy-and-hold per symbol;
- equity per quote account and its drawdown (report.equity_series / report.drawdown,
  the series the summary's max DD and Sharpe come from), with deploys and rollbacks;
- net PnL per symbol and realised PnL over time (the trades table: net of costs);
- model versions over time with their live metrics: predictions, outcomes and the hit
  rate on decisive outcomes (did the side the model favoured win? - what the learner's
  performance trigger counts), per version and per time bucket;
- the learning loop: trigger evaluations, every retrain job with its gate decision, and
  every registry event (deploy, canary, retire, reject, rollback) in the run's data span.

Configuration is shown only for an allow-list of trading sections and never for keys that
look like credentials, so secrets cannot leak into a report that gets passed around.
Nothing here imports torch, xgboost, lightgbm or onnxruntime.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
import os
import re
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from qtraderd.control.tables import _is_number, format_value
from qtraderd.core.clock import iso
from qtraderd.core.messages import LABEL_LONG, LABEL_SHORT
from qtraderd.reporting.report import (
    ReportError,
    Section,
    drawdown,
    equity_series,
    history_window,
    sections,
    summarize,
)

REPORT_NAME = "report.html"
HIT_BUCKETS = 40  # time buckets of the live hit-rate plot, over the predicted span
MAX_ROWS = 300  # per events table; the rest is counted, not listed
CONFIG_SECTIONS = ("feed", "account", "costs", "sizing", "labels", "monitor", "risk",
                   "portfolio", "learning", "rl")
# credential-like key names: a whole word of the key ("api_key", "webhook_token"), or a
# fragment no trading setting contains ("apisecret", "passphrase")
SECRET_WORDS = {"key", "keys", "secret", "token", "pass", "password", "passwd", "auth",
                "credential", "credentials", "signature", "cookie", "private", "dsn"}
SECRET_FRAGMENT = re.compile(r"secret|passw|passphrase|apikey|token", re.IGNORECASE)


# ------------------------------------------------------------------------------ collect


def collect(conn: sqlite3.Connection, run_id: int | None = None) -> dict[str, Any]:
    """Everything the page shows, read in one read transaction (one snapshot)."""
    conn.execute("BEGIN")
    try:
        return _collect(conn, run_id)
    finally:
        conn.execute("COMMIT")


def _collect(conn: sqlite3.Connection, run_id: int | None) -> dict[str, Any]:
    summary = summarize(conn, run_id)
    rid = summary["run"]["id"]
    first_ts, last_ts, config = conn.execute(
        "SELECT first_ts, last_ts, config FROM runs WHERE id=?", (rid,)).fetchone()
    cfg = json.loads(config)
    trade_from = conn.execute("SELECT min(ts) FROM predictions WHERE run_id=?",
                              (rid,)).fetchone()[0]
    window = history_window(first_ts, last_ts)
    events = registry_events(conn, window)
    versions, buckets = prediction_stats(conn, rid, trade_from, last_ts)
    return {
        "summary": summary, "config": cfg, "first_ts": first_ts, "last_ts": last_ts,
        "trade_from": trade_from, "curves": curves(conn, summary, cfg),
        "pnl": pnl_by_symbol(conn, summary), "versions": versions, "hit_buckets": buckets,
        "jobs": retrain_jobs(conn, rid), "triggers": trigger_counts(conn, rid),
        "events": events, "halts": [{"ts": ts, "kind": "risk halt"} for (ts,) in conn.execute(
            "SELECT ts FROM risk_events WHERE run_id=? AND state='HALTED' AND "
            "prev_state<>'HALTED' ORDER BY id LIMIT 100", (rid,))],
    }


def curves(conn: sqlite3.Connection, summary: dict[str, Any], cfg: dict[str, Any]
           ) -> dict[str, dict[str, Any]]:
    """Equity and drawdown per quote account: the accounts the summary lists (those that
    traded), or every recorded account when nothing traded yet."""
    rid = summary["run"]["id"]
    quotes = [a["quote"] for a in summary["accounts"]] or [q for (q,) in conn.execute(
        "SELECT DISTINCT quote FROM equity WHERE run_id=? ORDER BY quote", (rid,))]
    out = {}
    for q in quotes:
        ts, eq = equity_series(conn, rid, q)
        if not len(eq):
            continue
        start = (cfg.get("account") or {}).get("balances", {}).get(q) or float(eq[0])
        out[q] = {"ts": ts, "equity": eq, "drawdown": drawdown(eq), "start": float(start)}
    return out


def _quote(symbol: str) -> str:
    from qtraderd.core.instruments import InstrumentError, quote_asset

    try:
        return quote_asset(symbol)
    except InstrumentError:
        return "?"


def pnl_by_symbol(conn: sqlite3.Connection, summary: dict[str, Any]
                  ) -> dict[str, dict[str, Any]]:
    """Per quote: the summary's net PnL per symbol, and each symbol's cumulative realised
    net PnL at every exit (from the same trades rows)."""
    rid = summary["run"]["id"]
    out: dict[str, dict[str, Any]] = {}
    for r in summary["symbols"]:
        d = out.setdefault(_quote(r["symbol"]), {"net": {}, "cumulative": {}})
        d["net"][r["symbol"]] = float(r["net_pnl"])
    rows = conn.execute("SELECT symbol, quote, exit_ts, net_pnl FROM trades WHERE run_id=? "
                        "ORDER BY exit_ts, id", (rid,)).fetchall()
    series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for sym, quote, ts, pnl in rows:
        t, v = series.setdefault((quote, sym), ([], []))
        t.append(ts)
        v.append((v[-1] if v else 0.0) + pnl)
    for (quote, sym), (t, v) in sorted(series.items()):
        d = out.setdefault(quote, {"net": {}, "cumulative": {}})
        d["cumulative"][sym] = (np.array(t, dtype=np.int64), np.array(v))
    return out


_HIT_SQL = (
    "SELECT p.model, p.version, p.role, {bucket}, count(*), count(s.label), "
    "sum(s.label IN ({L}, {S})), "
    "sum(CASE WHEN s.label={L} THEN p.p_long >= p.p_short "
    "WHEN s.label={S} THEN p.p_long < p.p_short ELSE 0 END), min(p.ts), max(p.ts) "
    "FROM predictions p LEFT JOIN samples s ON s.run_id=p.run_id AND s.symbol=p.symbol "
    "AND s.ts=p.ts WHERE p.run_id=? GROUP BY 1, 2, 3, 4").format
# A hit: the outcome was decisive (an upper or lower barrier was hit first) and it was the
# side the prediction favoured (ties go long, as in the ensemble and the learner).


def prediction_stats(conn: sqlite3.Connection, run_id: int, from_ts: int | None,
                     last_ts: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Live metrics from one pass over the run's predictions joined with their outcomes
    (the expensive query of the report: a million rows on a 57k-bar, 10-pair replay):

    - per (model, version, role): predictions, outcomes so far, decisive outcomes, hit
      rate, served span, and the registry's status and validation metrics of the version;
    - per model and time bucket, serving role only, all versions of a family together
      (the family as it was served): hits and decisive outcomes, for the hit-rate plot.
    """
    lo = int(from_ts or 0)
    width = max(1, math.ceil(((last_ts or lo) - lo + 1) / HIT_BUCKETS))
    rows = conn.execute(_HIT_SQL(bucket=f"(p.ts - {lo}) / {width}", L=LABEL_LONG,
                                 S=LABEL_SHORT), (run_id,)).fetchall()
    per_version: dict[tuple[str, str, str], list[int]] = {}
    per_bucket: dict[str, dict[int, list[int]]] = {}
    for model, version, role, b, n, outcomes, decisive, hits, a, z in rows:
        acc = per_version.setdefault((model, version, role), [0, 0, 0, 0, a, z])
        acc[0] += n
        acc[1] += outcomes
        acc[2] += decisive or 0
        acc[3] += hits or 0
        acc[4], acc[5] = min(acc[4], a), max(acc[5], z)
        if role == "serving":
            cell = per_bucket.setdefault(model, {}).setdefault(int(b), [0, 0])
            cell[0] += hits or 0
            cell[1] += decisive or 0
    versions = []
    for (model, version, role), (n, outcomes, decisive, hits, a, z) in per_version.items():
        reg = conn.execute("SELECT status, metrics FROM models WHERE family=? AND version=?",
                           (model, version)).fetchone()
        metrics = json.loads(reg[1] or "{}") if reg else {}
        versions.append({
            "model": model, "version": version, "role": role, "from": a, "to": z,
            "predictions": n, "outcomes": outcomes, "decisive": decisive,
            "hit_rate_pct": 100.0 * hits / decisive if decisive else None,
            "status": reg[0] if reg else None, "gate": metrics.get("gate_decision"),
            "valid_auc_long": metrics.get("auc_long"),
        })
    versions.sort(key=lambda v: (v["model"] == "ensemble", v["model"], v["from"], v["role"]))
    buckets = {}
    for model in sorted(per_bucket, key=lambda m: (m == "ensemble", m)):
        bs = sorted(per_bucket[model])
        buckets[model] = (np.array([lo + (b + 0.5) * width for b in bs]),
                          np.array([per_bucket[model][b][0] for b in bs], dtype=float),
                          np.array([per_bucket[model][b][1] for b in bs], dtype=float))
    return versions, buckets


def retrain_jobs(conn: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    return [{"id": i, "ts": ts, "family": f, "reason": why, "attempt": att, "status": st,
             "version": v, "wall_s": w, "detail": d}
            for i, ts, f, why, att, st, v, w, d in conn.execute(
                "SELECT id, clock_ts, family, reason, attempt, status, version, wall_s, detail "
                "FROM retrain_jobs WHERE run_id=? ORDER BY id", (run_id,)).fetchall()]


def trigger_counts(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    """How many evaluations ran, and how often each trigger kind fired."""
    kinds: Counter[str] = Counter()
    n = 0
    for (triggers,) in conn.execute("SELECT triggers FROM learner_evaluations WHERE run_id=?",
                                    (run_id,)):
        n += 1
        try:
            fired = json.loads(triggers)
        except ValueError:
            continue
        for kind in {t.get("kind", "?") for t in fired if isinstance(t, dict)}:
            kinds[kind] += 1
    return {"evaluations": n, "kinds": dict(kinds.most_common())}


def classify(status: str, reason: str) -> str:
    """A registry row as an operator event: deploy, rollback, canary, retired, ..."""
    if status == "champion":
        return "rollback" if reason.startswith("rollback") else "deploy"
    if status == "retired" and reason.startswith("rolled back"):
        return "rolled back"
    return status


def registry_events(conn: sqlite3.Connection, window: tuple[int, int]
                    ) -> list[dict[str, Any]]:
    """Every status change in the run's data span except plain registrations (each retrain
    job's row already shows its new version)."""
    return [{"ts": ts, "family": f, "version": v, "status": st, "kind": classify(st, why),
             "reason": why}
            for ts, f, v, st, why in conn.execute(
                "SELECT clock_ts, family, version, status, reason FROM model_history WHERE "
                "status<>'candidate' AND clock_ts BETWEEN ? AND ? ORDER BY id",
                window).fetchall()]


def is_secret_key(name: str) -> bool:
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    return bool(words & SECRET_WORDS) or bool(SECRET_FRAGMENT.search(name))


def safe_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The allow-listed trading sections of the run's config, minus any credential-like
    key (an allow-list, so a section added later is hidden until someone decides)."""
    out = {}
    for section in CONFIG_SECTIONS:
        values = cfg.get(section)
        if isinstance(values, dict):
            out[section] = {k: v for k, v in values.items() if not is_secret_key(k)}
    return out


# ------------------------------------------------------------------------------- render


def render_html(data: dict[str, Any], state_dir: Path | str = "") -> str:
    """The page. Every piece of text from the store goes through html.escape."""
    from qtraderd.reporting import plots
    s = data["summary"]
    run = s["run"]
    events = [e for e in data["events"] if e["kind"] in ("deploy", "rollback")]
    start = data["first_ts"] or 0
    end = data["last_ts"] or start
    body: list[str] = []
    toc: list[tuple[str, str]] = []

    def h2(anchor: str, title: str) -> None:
        toc.append((anchor, title))
        body.append(f'<h2 id="{anchor}">{_e(title)}</h2>')

    h2("numbers", "Key numbers")
    body.extend(_section_html(sec) for sec in sections(s))

    h2("equity", "Equity and drawdown")
    if data["curves"]:
        body.append(_img(plots.equity_png(data["curves"], events + data["halts"],
                                          data["trade_from"]),
                         "equity per quote account"))
        body.append(_img(plots.drawdown_png(data["curves"]), "drawdown per quote account"))
    else:
        body.append("<p>No equity recorded for this run yet.</p>")

    h2("pnl", "PnL per symbol (net of fees and slippage)")
    if data["pnl"]:
        body.append(_img(plots.pnl_png(data["pnl"]), "net PnL per symbol"))
    else:
        body.append("<p>No symbols.</p>")

    h2("models", "Model versions and live metrics")
    versions = data["versions"]
    if versions:
        body.append(_img(plots.versions_png(versions, data["jobs"], events, start, end),
                         "model versions over time"))
        threshold = 100.0 * float((data["config"].get("learning") or {})
                                  .get("min_winrate", 0.5))
        if data["hit_buckets"]:
            body.append(_img(plots.hit_rate_png(data["hit_buckets"], threshold, events),
                             "live hit rate over time"))
        body.append(_table_html(Section("table", "Versions (live metrics of this run)", [
            {"model": v["model"], "version": v["version"], "role": v["role"],
             "first": iso(v["from"]), "last": iso(v["to"]), "predictions": v["predictions"],
             "with outcome": v["outcomes"], "decisive": v["decisive"],
             "hit rate %": _round(v["hit_rate_pct"], 1), "registry": v["status"],
             "gate": v["gate"], "valid AUC long": _round(v["valid_auc_long"], 3)}
            for v in versions])))
        body.append("<p class=note>Hit rate: share of decisive outcomes (the upper or lower "
                    "barrier was hit first) on the side the prediction favoured. Outcomes "
                    "settle a label horizon after the bar, so the last hours have none yet."
                    "</p>")
    else:
        body.append("<p>No predictions in this run (no model was out of sample).</p>")

    h2("learning", "Retraining, deploys and rollbacks")
    body.append(_learning_html(data))

    h2("config", "Configuration (trading sections)")
    body.append("<details><summary>show</summary>")
    for section, values in safe_config(data["config"]).items():
        body.append(_table_html(Section("kv", section, values)))
    body.append("</details>")

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"qtraderd run {run['id']} ({run['status']})"
    nav = " · ".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in toc)
    where = f" from {_e(str(Path(state_dir) / 'qtraderd.db'))}" if state_dir else ""
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class=note>Generated {_e(now)}{where}; data "
        f"{_e(run['data'])}. Everything is net of fees and slippage.</p><nav>{nav}</nav>"
        + "\n".join(body) + "</body></html>\n")


CSS = ("body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;"
       "padding:0 1em;color:#222}h2{border-bottom:1px solid #ccc;margin-top:2em}"
       "table{border-collapse:collapse;margin:0.8em 0;font-size:13px}"
       "caption{text-align:left;font-weight:600;padding:0.3em 0}"
       "th,td{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}"
       "td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}"
       "img{max-width:100%;display:block;margin:0.8em 0}.note{color:#666;font-size:12px}"
       "nav a{margin-right:0.3em}")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _section_html(sec: Section) -> str:
    if sec.kind == "text":
        return f"<p>{_e(sec.body)}</p>"
    return _table_html(sec)


def _table_html(sec: Section) -> str:
    """A summary section as an HTML table; cells are tables.format_value's text, so they
    match the terminal report character for character."""
    cap = f"<caption>{_e(sec.title)}</caption>" if sec.title else ""
    if sec.kind == "kv":
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(format_value(v))}</td></tr>"
                       for k, v in sec.body.items())
        return f"<table class=kv>{cap}{rows}</table>"
    rows_in: list[dict[str, Any]] = sec.body
    if not rows_in:
        return f"<table>{cap}<tr><td>(none)</td></tr></table>"
    cols = list(dict.fromkeys(k for r in rows_in for k in r))
    numeric = {c for c in cols if all(_is_number(r.get(c)) for r in rows_in
                                      if r.get(c) is not None)
               and any(r.get(c) is not None for r in rows_in)}
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(
            f"<td{' class=n' if c in numeric else ''}>"
            f"{_e(format_value(r.get(c)) if c in r else '')}</td>" for c in cols) + "</tr>"
        for r in rows_in)
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


def _learning_html(data: dict[str, Any]) -> str:
    trig, jobs, events = data["triggers"], data["jobs"], data["events"]
    if not trig["evaluations"] and not jobs and not events:
        return "<p>The learning loop recorded nothing in this run (learning disabled, or " \
               "no trigger evaluation yet).</p>"
    parts = [_table_html(Section("kv", "Trigger evaluations", {
        "evaluations": trig["evaluations"],
        **{f"fired: {k}": v for k, v in trig["kinds"].items()},
        "retrain jobs": len(jobs),
        **{f"jobs: {k}": v for k, v in Counter(j["status"] for j in jobs).most_common()},
    }))]
    parts.append(_capped(jobs, "Retrain jobs (gate decision per job)", lambda j: {
        "data time": iso(j["ts"]), "family": j["family"], "attempt": j["attempt"],
        "decision": j["status"], "version": j["version"], "job s": j["wall_s"],
        "trigger": (j["reason"] or "")[:80], "detail": (j["detail"] or "")[:120]}))
    parts.append(_capped(events, "Registry events (deploys, canaries, retirements, "
                                 "rollbacks) in the run's data span", lambda e: {
        "data time": iso(e["ts"]), "event": e["kind"], "model": e["family"],
        "version": e["version"], "why": (e["reason"] or "")[:140]}))
    return "\n".join(parts)


def _capped(items: list[dict[str, Any]], title: str, row: Any) -> str:
    shown = items[-MAX_ROWS:]
    extra = len(items) - len(shown)
    html_table = _table_html(Section("table", title, [row(i) for i in shown]))
    if extra:
        html_table += f"<p class=note>{extra} earlier rows not listed.</p>"
    return html_table


# -------------------------------------------------------------------------------- write


def prepare_out(out: Path) -> Path:
    """Create the output directory (or check it) before anything is rendered; the error
    names the path and the reason, for the operator."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create report directory {out}: "
                          f"{exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise ReportError(f"report directory {out} is not writable by this user")
    return out / REPORT_NAME


def write_report(out: Path, data: dict[str, Any], state_dir: Path | str = "") -> Path:
    """Render `collect`'s data and write OUT/report.html atomically; return its path."""
    path = prepare_out(Path(out))
    page = render_html(data, state_dir)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
