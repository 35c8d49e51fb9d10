"""The walk-forward report's figures (matplotlib, Agg backend, files only).

Only `qtraderd walkforward` imports this module - after its daemon arms have finished - so
the daemon itself never loads matplotlib, and no display is ever needed (Agg renders to
PNG in memory; a headless server or CI has no X).
"""

from __future__ import annotations

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


def _finish(fig: Any, ax: Any, path: Path) -> None:
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def equity_png(path: Path, grid: np.ndarray, curves: dict[str, np.ndarray],
               deploys: list[int]) -> None:
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
    _finish(fig, ax, path)


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
    """One lane per family: which version served when, and each retrain's gate decision."""
    fams = sorted({p["family"] for p in periods} | {j["family"] for j in jobs})
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.9 * max(1, len(fams))))
    colours = plt.get_cmap("tab20").colors
    for lane, fam in enumerate(fams):
        mine = [p for p in periods if p["family"] == fam]
        for k, p in enumerate(mine):
            a, b = _dt(p["from"]), _dt(p["to"])
            ax.barh(lane, mdates.date2num(b) - mdates.date2num(a), left=mdates.date2num(a),
                    height=0.5, color=colours[k % len(colours)], alpha=0.7)
            ax.text(a, lane + 0.3, "initial" if k == 0 else f"#{k + 1}", fontsize=7)
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
    _finish(fig, ax, path)
