"""The figures of `qtraderd report --out`: PNG bytes rendered with matplotlib's Agg backend.

Only the HTML report imports this module, so `qtraderd report` without `--out` (and the
daemon) never load matplotlib. The style - figure widths, dpi, grid, gate-decision markers,
UTC datetimes - is the walk-forward report's (qtraderd.reporting.walkforward_plots), so the two
reports read alike.

Every series is decimated before plotting (`decimate`): a 57k-bar replay has 57k equity
points per account, far more than a 1100-pixel-wide figure can show, and drawing them
all costs seconds. Each bucket keeps its minimum and maximum, so peaks and the worst
drawdown stay on the curve.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never a GUI backend (headless servers, CI)

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from qtraderd.reporting.walkforward_plots import DECISION_STYLE, place_labels

MAX_POINTS = 2000  # per plotted series, after decimation
DPI = 110
EVENT_STYLE = {"deploy": ("tab:green", ":"), "rollback": ("tab:red", "--"),
               "risk halt": ("black", "-.")}


def decimate(ts: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS
             ) -> tuple[np.ndarray, np.ndarray]:
    """At most ~max_points points of (ts, values): the min and max of each bucket, in time
    order, plus the first and last point. Short series are returned unchanged."""
    n = len(values)
    if n <= max_points:
        return ts, values
    buckets = max(1, max_points // 2)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    starts = edges[:-1]
    lo = np.minimum.reduceat(values, starts)
    hi = np.maximum.reduceat(values, starts)
    keep = [0, n - 1]
    for k in range(buckets):  # argmin/argmax per bucket: a few thousand slices, cheap
        seg = values[edges[k]:edges[k + 1]]
        keep.append(int(edges[k] + np.flatnonzero(seg == lo[k])[0]))
        keep.append(int(edges[k] + np.flatnonzero(seg == hi[k])[0]))
    idx = np.unique(np.array(keep, dtype=np.int64))
    return ts[idx], values[idx]


def _dates(ts: np.ndarray) -> np.ndarray:
    """Epoch-ms timestamps as matplotlib date numbers (vectorised; days since 1970)."""
    return np.asarray(ts, dtype=float) / 86_400_000.0


def _date_ticks(ax: Any) -> None:
    loc = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))


def _png(fig: Any, *axes: Any) -> bytes:
    """The figure as PNG bytes, the time axes of `axes` dated and gridded."""
    for ax in axes:
        _date_ticks(ax)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _events(ax: Any, events: list[dict[str, Any]]) -> None:
    """Vertical lines at deploys, rollbacks and risk halts (one legend entry per kind)."""
    seen: set[str] = set()
    for e in events:
        style = EVENT_STYLE.get(e["kind"])
        if style is None:
            continue
        ax.axvline(_dates(np.array([e["ts"]]))[0], color=style[0], linestyle=style[1],
                   linewidth=1, label=None if e["kind"] in seen else e["kind"])
        seen.add(e["kind"])


def equity_png(curves: dict[str, dict[str, Any]], events: list[dict[str, Any]],
               trade_from: int | None) -> bytes:
    """Equity of each quote account as return % of its starting balance (accounts in
    different currencies share one axis that way), with deploys, rollbacks and risk
    halts marked (a halted account's flat line is the risk limit, not a quiet market)."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for quote, c in curves.items():
        ts, eq = decimate(c["ts"], c["equity"])
        ax.plot(_dates(ts), 100.0 * (eq / c["start"] - 1.0), linewidth=1.4,
                label=f"{quote} (start {c['start']:g})")
    if trade_from:
        ax.axvline(_dates(np.array([trade_from]))[0], color="tab:gray", linewidth=1,
                   label="first out-of-sample prediction")
    _events(ax, events)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("return % (net of costs, marked to market)")
    ax.set_title("Equity per quote account")
    ax.legend(loc="best", fontsize=8)
    return _png(fig, ax)


def drawdown_png(curves: dict[str, dict[str, Any]]) -> bytes:
    """Fall from the running peak of each account's equity, in % (the max is the table's
    max DD %)."""
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for quote, c in curves.items():
        ts, dd = decimate(c["ts"], -100.0 * c["drawdown"])
        line = ax.plot(_dates(ts), dd, linewidth=1.0, label=quote)[0]
        ax.fill_between(_dates(ts), dd, 0.0, color=line.get_color(), alpha=0.25)
    ax.set_ylabel("drawdown %")
    ax.set_title("Drawdown from the running peak")
    ax.legend(loc="lower left", fontsize=8)
    return _png(fig, ax)


def pnl_png(per_quote: dict[str, dict[str, Any]]) -> bytes:
    """Per quote currency: net PnL per symbol (bars) and cumulative realised net PnL per
    symbol over time (steps at each trade's exit). Units are the quote currency's, so
    each currency gets its own row."""
    rows = max(1, len(per_quote))
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.6 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2]})
    for (quote, d), (bar_ax, line_ax) in zip(per_quote.items(), axes, strict=False):
        names = list(d["net"])
        vals = [d["net"][n] for n in names]
        colours = ["tab:green" if v > 0 else "tab:red" for v in vals]
        bar_ax.barh(names, vals, color=colours)
        bar_ax.axvline(0.0, color="black", linewidth=0.6)
        bar_ax.xaxis.set_major_locator(MaxNLocator(4))
        bar_ax.tick_params(axis="x", labelsize=8)
        bar_ax.set_xlabel(f"net PnL ({quote})")
        bar_ax.set_title(f"Net PnL per symbol, {quote} pairs", fontsize=10)
        bar_ax.tick_params(axis="y", labelsize=8)
        bar_ax.grid(alpha=0.3, axis="x")
        for sym, (ts, cum) in d["cumulative"].items():
            if len(ts):
                t, v = decimate(np.asarray(ts), np.asarray(cum))
                line_ax.step(_dates(t), v, where="post", linewidth=1.1, label=sym)
        line_ax.axhline(0.0, color="black", linewidth=0.6)
        line_ax.set_ylabel(f"cumulative net PnL ({quote})")
        line_ax.set_title("Realised net PnL over time (at each exit)", fontsize=10)
        if d["cumulative"]:
            line_ax.legend(fontsize=7, ncol=2, loc="best")
    return _png(fig, *axes[:len(per_quote), 1])


def versions_png(versions: list[dict[str, Any]], jobs: list[dict[str, Any]],
                 events: list[dict[str, Any]], start: int, end: int) -> bytes:
    return _png(*versions_fig(versions, jobs, events, start, end))


def versions_fig(versions: list[dict[str, Any]], jobs: list[dict[str, Any]],
                 events: list[dict[str, Any]], start: int, end: int) -> tuple[Any, Any]:
    """One lane per model family: which version served when (bars labelled with its live
    hit rate), shadow/canary versions as thin hatched bars, every retrain job's gate
    decision (markers) and every deploy / rollback (lines). Version labels are staggered
    and thinned (walkforward_plots.place_labels): short-lived versions sit close
    together, and their labels used to print on top of each other."""
    fams = sorted({v["model"] for v in versions if v["model"] != "ensemble"}
                  | {j["family"] for j in jobs})
    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.9 * max(1, len(fams))))
    colours = plt.get_cmap("tab20").colors
    labels: list[tuple[Any, float]] = []
    for lane, fam in enumerate(fams):
        mine = [v for v in versions if v["model"] == fam]
        for k, v in enumerate(mine):
            a, b = _dates(np.array([v["from"], v["to"]]))
            serving = v["role"] == "serving"
            ax.barh(lane - (0 if serving else 0.32), max(b - a, 1e-3), left=a,
                    height=0.45 if serving else 0.14, color=colours[k % len(colours)],
                    alpha=0.75 if serving else 0.5, hatch=None if serving else "//")
            if serving:
                hit = "-" if v["hit_rate_pct"] is None else f"{v['hit_rate_pct']:.0f}%"
                labels.append((ax.text(a, lane + 0.27, f"{v['version'][-12:]} hit {hit} "
                                       f"n={v['decisive']}", fontsize=6.5), lane + 0.27))
    seen: set[str] = set()
    for j in jobs:
        if j["family"] not in fams:
            continue
        marker, colour = DECISION_STYLE.get(j["status"], ("s", "tab:purple"))
        ax.scatter(_dates(np.array([j["ts"]])), [fams.index(j["family"])], marker=marker,
                   color=colour, s=40, zorder=3, label=None if j["status"] in seen
                   else f"retrain: {j['status']}")
        seen.add(j["status"])
    _events(ax, events)
    ax.set_yticks(range(len(fams)), fams)
    ax.set_xlim(*_dates(np.array([start, max(end, start + 1)])))
    ax.set_ylim(-0.7, max(1, len(fams)) - 0.2)
    ax.set_title("Model versions over time (serving: bars; shadow/canary: hatched) and "
                 "retrain decisions", fontsize=10)
    if seen or events:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _date_ticks(ax)
    ax.grid(alpha=0.3)
    place_labels(fig, labels, (0.0, 0.2, -0.2))
    return fig, ax


def hit_rate_png(buckets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 threshold_pct: float, events: list[dict[str, Any]]) -> bytes:
    """Live hit rate (decisive outcomes, the side each model favoured) per time bucket,
    per family and for the ensemble, against the learner's performance threshold."""
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for name, (ts, hits, n) in buckets.items():
        ok = n > 0
        if ok.any():
            ax.plot(_dates(ts[ok]), 100.0 * hits[ok] / n[ok], marker=".", markersize=3,
                    linewidth=1.6 if name == "ensemble" else 1.0, label=name,
                    color="black" if name == "ensemble" else None)
    ax.axhline(threshold_pct, color="tab:red", linewidth=0.8, linestyle="--",
               label=f"performance trigger ({threshold_pct:g} %)")
    _events(ax, events)
    ax.set_ylabel("hit rate % (decisive outcomes)")
    ax.set_title("Live hit rate per time bucket (by prediction time)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig, ax)
