"""Figure legibility: version labels in the model timelines never overlap, and the
walk-forward's date ticks never repeat a label. Checked on the rendered artists (pixel
boxes, tick texts), not on the PNG bytes."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pytest

from qtraderd.reporting import plots, walkforward_plots

H = 3_600_000
T0 = 1_516_000_000_000 - 1_516_000_000_000 % H


def visible_label_boxes(fig, ax) -> list:
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    return [t.get_window_extent(r) for t in ax.texts if t.get_visible()]


def assert_no_overlap(boxes: list) -> None:
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)


def report_versions(n: int, hours: float) -> list[dict]:
    """n serving versions per family, each `hours` long, back to back (a busy learner)."""
    out = []
    for fam in ("lightgbm", "xgboost"):
        for k in range(n):
            a = T0 + int(k * hours * H)
            out.append({"model": fam, "version": f"{fam}-2018011{k % 10}T0000-r{k}",
                        "role": "serving", "from": a, "to": a + int(hours * H),
                        "hit_rate_pct": 51.0, "decisive": 120})
    return out


@pytest.mark.parametrize("n, hours", [(12, 2.0), (40, 1.0), (3, 48.0)])
def test_report_timeline_labels_never_overlap(n: int, hours: float) -> None:
    versions = report_versions(n, hours)
    end = T0 + int(n * hours * H)
    fig, ax = plots.versions_fig(versions, [], [], T0, end)
    boxes = visible_label_boxes(fig, ax)
    plt.close(fig)
    assert boxes  # the first label of each lane always has room
    assert_no_overlap(boxes)
    if n == 3:  # room for every label: none is dropped
        assert len(boxes) == len(versions)


def test_report_timeline_staggers_before_it_thins() -> None:
    versions = report_versions(12, 0.5)  # labels wider than their bars
    fig, ax = plots.versions_fig(versions, [], [], T0, T0 + 6 * H)
    fig.canvas.draw()
    shown = [t for t in ax.texts if t.get_visible()]
    heights = {round(t.get_position()[1] % 1, 2) for t in shown}
    plt.close(fig)
    assert len(heights) > 1  # some labels moved to another height instead of vanishing


def test_walkforward_timeline_labels_never_overlap() -> None:
    periods = [{"family": f, "version": f"v{k}", "from": T0 + k * 2 * H,
                "to": T0 + (k + 1) * 2 * H, "bars": 24}
               for f in ("lightgbm", "xgboost") for k in range(36)]
    jobs = [{"ts": T0 + k * 2 * H, "family": "xgboost", "decision": "deploy"}
            for k in range(1, 36)]
    fig, ax = walkforward_plots.versions_fig(periods, jobs, T0, T0 + 72 * H)
    boxes = visible_label_boxes(fig, ax)
    plt.close(fig)
    assert boxes
    assert_no_overlap(boxes)


def tick_labels(fig, ax) -> list[str]:
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    return [t.get_text() for t, x in zip(ax.get_xticklabels(), ax.get_xticks(), strict=True)
            if lo <= x <= hi and t.get_text()]


@pytest.mark.parametrize("days", [0.05, 0.5, 1.0, 3.0, 8.0, 40.0])
def test_walkforward_date_ticks_are_unique(days: float) -> None:
    grid = T0 + 300_000 * np.arange(int(days * 288))
    curves = {"continuous learning": np.linspace(1, 1.01, len(grid)),
              "buy-and-hold": np.linspace(1, 0.99, len(grid))}
    fig, ax = walkforward_plots.equity_fig(grid, curves, [int(grid[len(grid) // 2])])
    labels = tick_labels(fig, ax)
    plt.close(fig)
    assert len(labels) >= 2, labels
    assert len(set(labels)) == len(labels), labels


def test_walkforward_versions_date_ticks_are_unique() -> None:
    periods = [{"family": "xgboost", "version": "v1", "from": T0, "to": T0 + 72 * H,
                "bars": 864}]
    fig, ax = walkforward_plots.versions_fig(periods, [], T0, T0 + 72 * H)
    labels = tick_labels(fig, ax)
    plt.close(fig)
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
