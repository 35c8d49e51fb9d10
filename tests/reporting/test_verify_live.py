"""`qtraderd verify` on a live feed: judged by how far the last bar lags the daemon's clock
(the exchange's time), with the stream's state in the line."""

from __future__ import annotations

from pathlib import Path

from qtraderd.reporting.verify import FAIL, PASS, RunInfo, Snapshot, Verifier

M5 = 300_000
T = 1_765_000_000_000 - 1_765_000_000_000 % M5


def judge(tmp_path: Path, last: int | None, now: int, **feed: object):
    v = Verifier(tmp_path, tmp_path / "s.sock", wait_s=0)
    v.run = RunInfo(1, "running", 10, T, last, M5, {})
    status = {"source": "binance", "bars": 10, "clock_ms": now,
              "feed": {"last_bar_ms": last, "connected": True, "reconnects": 2,
                       "last_frame_age_s": 0.4, "late_bars": 1, **feed}}
    v.check_feed(Snapshot(status, 10, 0), Snapshot(status, 10, 0))
    (check,) = v.checks
    return check


def test_a_current_bar_passes_even_without_a_new_bar_during_the_wait(tmp_path):
    check = judge(tmp_path, T, T + M5 + 30_000)  # closed 30 s ago
    assert check.result == PASS and "last bar is current" in check.detail


def test_a_lagging_feed_fails_with_the_lag_and_the_stream_state(tmp_path):
    check = judge(tmp_path, T, T + 3 * M5, connected=False)  # two bars behind
    assert check.result == FAIL
    assert "closed 600 s before the clock" in check.detail
    assert "lagging beyond 360 s" in check.detail and "stream NOT connected" in check.detail


def test_no_bar_yet_fails_naming_the_next_step(tmp_path):
    check = judge(tmp_path, None, T, next_step="2025-12-06 05:50")
    assert check.result == FAIL and "no bar yet (next step 2025-12-06 05:50)" in check.detail
