"""The walk-forward report's figures (matplotlib, Agg backend, files only).

Only `qtraderd walkforward` imports this module - after its daemon arms have finished - so
the daemon itself never loads matplotlib, and no display is ever needed (Agg renders to
PNG in memory; a headless server or CI has no X).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never a GUI backend

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np

DECISION_STYLE = {  # marker, colour per gate decision
    "deploy": ("^", "tab:green"), "canary": ("D", "tab:orange"), "keep": ("o", "tab:gray"),
    "reject": ("x", "tab:red"), "failed": ("X", "black"),
}


def _dt(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def date_axis(ax: Any, start_ms: int, end_ms: int, max_ticks: int = 10) -> None:
    """Date ticks that never repeat a label: whole days ("%m-%d") when the span is over
    two days, else every k hours or minutes labelled with the day as well. (matplotlib's
    automatic locator puts several ticks a day; formatted "%m-%d" they read 01-15 01-15
    01-15, which is what this replaces.)"""
    span_h = max((end_ms - start_ms) / 3_600_000, 1e-9)
    if span_h > 48:
        loc: Any = mdates.DayLocator(interval=max(1, math.ceil(span_h / 24 / max_ticks)))
        fmt = "%m-%d"
    elif span_h >= 2:
        step = next(h for h in (1, 2, 3, 4, 6, 12, 24) if span_h / h <= max_ticks)
        loc, fmt = mdates.HourLocator(byhour=range(0, 24, step)), "%m-%d %H:%M"
    else:
        step = next(m for m in (1, 2, 5, 10, 15, 30, 60) if span_h * 60 / m <= max_ticks)
        loc, fmt = mdates.MinuteLocator(byminute=range(0, 60, step)), "%m-%d %H:%M"
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt, tz=UTC))


def place_labels(fig: Any, labels: list[tuple[Any, float]],
                 offsets: tuple[float, ...] = (0.0, 0.22, -0.22)) -> None:
    """Stagger, then thin, text labels so that no two overlap.

    `labels`: (text artist, base y) pairs. Left to right, each label takes the first
    height base y + offset where its box clears every label placed so far; a label with
    no free height is hidden (the tables next to the figure list every version). Call it
    last, once the axes' limits are final: boxes are measured in pixels, so the labels
    are taken out of the layout and the layout is fixed first (a later tight_layout
    then leaves the axes where they are).
    """
    for text, _ in labels:
        text.set_in_layout(False)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    for text, base in sorted(labels, key=lambda lb: lb[0].get_window_extent(renderer).x0):
        for off in offsets:
            text.set_y(base + off)
            box = text.get_window_extent(renderer).expanded(1.04, 1.0)
            if not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
        else:
            text.set_visible(False)


def _finish(fig: Any, ax: Any, path: Path) -> None:
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def equity_png(path: Path, grid: np.ndarray, curves: dict[str, np.ndarray],
               deploys: list[int]) -> None:
    _finish(*equity_fig(grid, curves, deploys), path)


def equity_fig(grid: np.ndarray, curves: dict[str, np.ndarray], deploys: list[int]
               ) -> tuple[Any, Any]:
    """All arms' equity (return % since the test start) on one time axis.

    The first arm is drawn thick and the second dashed on top of it: when the learner
    deploys nothing the two daemon arms coincide, and both must stay visible.
    """
    fig, ax = plt.subplots(figsize=(10, 5))
    x = [_dt(t) for t in grid]
    styles = [("-", 2.6), ("--", 1.4)]
    for i, (name, values) in enumerate(curves.items()):
        ls, lw = styles[i] if i < len(styles) else ("-", 1.1)
        ax.plot(x, 100.0 * (np.asarray(values) - 1.0), ls, label=name, linewidth=lw)
    for i, t in enumerate(deploys):
        ax.axvline(_dt(t), color="tab:green", linestyle=":", linewidth=1,
                   label="deploy (continuous)" if i == 0 else None)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("return % (net of costs)")
    ax.set_title("Equity over the test period")
    ax.legend(loc="best", fontsize=8)
    if len(grid):
        date_axis(ax, int(grid[0]), int(grid[-1]))
    return fig, ax


def windows_png(path: Path, edges: np.ndarray, returns: dict[str, list[float]]) -> None:
    """Net return % per arm in each retrain window, side by side."""
    n = len(edges) - 1
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * n + 3), 4.5))
    width = 0.8 / max(1, len(returns))
    xs = np.arange(n)
    for i, (name, vals) in enumerate(returns.items()):
        ax.bar(xs + (i - (len(returns) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(xs, [_dt(e).strftime("%m-%d %H:%M") for e in edges[:-1]], rotation=30,
                  fontsize=8)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("return % in window")
    ax.set_title("Net return per window (window start shown)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions_png(path: Path, periods: list[dict[str, Any]], jobs: list[dict[str, Any]],
                 start: int, end: int) -> None:
    _finish(*versions_fig(periods, jobs, start, end), path)


def versions_fig(periods: list[dict[str, Any]], jobs: list[dict[str, Any]], start: int,
                 end: int) -> tuple[Any, Any]:
    """One lane per family: which version served when, and each retrain's gate decision
    (version labels staggered and thinned so that none overlaps another)."""
    fams = sorted({p["family"] for p in periods} | {j["family"] for j in jobs})
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.9 * max(1, len(fams))))
    colours = plt.get_cmap("tab20").colors
    labels: list[tuple[Any, float]] = []
    for lane, fam in enumerate(fams):
        mine = [p for p in periods if p["family"] == fam]
        for k, p in enumerate(mine):
            a, b = _dt(p["from"]), _dt(p["to"])
            ax.barh(lane, mdates.date2num(b) - mdates.date2num(a), left=mdates.date2num(a),
                    height=0.5, color=colours[k % len(colours)], alpha=0.7)
            labels.append((ax.text(a, lane + 0.3, "initial" if k == 0 else f"#{k + 1}",
                                   fontsize=7), lane + 0.3))
    seen: set[str] = set()
    for j in jobs:
        marker, colour = DECISION_STYLE.get(j["decision"], ("s", "tab:purple"))
        ax.scatter([_dt(j["ts"])], [fams.index(j["family"])], marker=marker, color=colour,
                   s=45, zorder=3, label=None if j["decision"] in seen else j["decision"])
        seen.add(j["decision"])
    ax.set_yticks(range(len(fams)), fams)
    ax.set_xlim(_dt(start), _dt(end))
    ax.set_ylim(-0.7, max(1, len(fams)) - 0.2)
    ax.set_title("Served versions (bars) and retrain decisions (markers), continuous arm")
    if seen:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    date_axis(ax, start, end)
    ax.grid(alpha=0.3)
    place_labels(fig, labels)
    return fig, ax
