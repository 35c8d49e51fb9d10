"""Triple-barrier labels: incremental == vectorised, only future bars matter, purge/embargo."""

from __future__ import annotations

import numpy as np
import pytest

from qtraderd.core.messages import LABEL_LONG, LABEL_NONE, LABEL_SHORT
from qtraderd.features.labels import (
    Barriers,
    Labeler,
    label_window,
    purged_train_mask,
    triple_barrier,
)
from tests.helpers import read_ohlcv

B = Barriers(tp=0.016, sl=0.008, horizon=48)


def labels_of(a: np.ndarray, b: Barriers = B):
    return triple_barrier(a[:, 1], a[:, 2], a[:, 3], a[:, 4], b)


@pytest.mark.parametrize("name", ["ETHBTC-5m.csv", "XMRBTC-5m.csv", "UNITTESTBTC-1m.csv"])
def test_incremental_equals_vectorised(ohlcv_dir, name):
    a = read_ohlcv(ohlcv_dir / name)
    lab, res, rl, rs = labels_of(a)
    got = {}
    lb = Labeler(B)
    for r in a.tolist():
        for ts, label, resolved, ret_l, ret_s in lb.update(int(r[0]), r[1], r[2], r[3], r[4]):
            got[ts] = (label, resolved, ret_l, ret_s)
    ts = a[:, 0].astype(np.int64)
    assert len(got) == int((lab >= 0).sum()) > 1000
    for i in np.flatnonzero(lab >= 0):
        g = got[int(ts[i])]
        assert g[0] == lab[i]
        assert g[1] == ts[res[i]]
        assert g[2] == pytest.approx(rl[i]) and g[3] == pytest.approx(rs[i])
    # the tail whose horizon runs past the data stays unlabelled
    assert (lab[-B.horizon:] == -1).all()


def test_all_three_classes_occur_and_are_exclusive(ohlcv_dir):
    lab, _, rl, rs = labels_of(read_ohlcv(ohlcv_dir / "ETHBTC-5m.csv"))
    counts = np.bincount(lab[lab >= 0], minlength=3)
    assert (counts > 100).all()
    assert np.all(rl[lab == LABEL_LONG] == pytest.approx(B.tp))
    assert np.all(rs[lab == LABEL_SHORT] == pytest.approx(B.tp))


def test_label_reads_only_bars_after_t(ohlcv_dir):
    a = read_ohlcv(ohlcv_dir / "LTCBTC-5m.csv")[:600]
    t = 300
    base = labels_of(a)[0][t]
    past = a.copy()
    past[: t + 1, 1:5] *= 1.5  # bars up to and including t: no effect on label t
    assert labels_of(past)[0][t] == base
    beyond = a.copy()
    beyond[t + B.horizon + 1:, 1:5] *= 1.5  # bars past the horizon: no effect either
    assert labels_of(beyond)[0][t] == base


def test_entry_is_next_bar_open_and_stop_wins_a_tie():
    entry = 100.0
    # one bar that touches both long TP (101.6) and long SL (99.2): the stop is assumed first
    lab, off, rl, _ = label_window(entry, [102.0], [99.0], [100.0], 0, Barriers(0.016, 0.008, 1))
    assert lab == LABEL_NONE and rl == pytest.approx(-0.008)
    # a clean rally: long wins at the bar that crosses 101.6
    highs, lows, closes = [100.5, 101.0, 101.7], [99.9, 100.2, 100.9], [100.4, 100.9, 101.5]
    lab, off, rl, rs = label_window(entry, highs, lows, closes, 0, Barriers(0.016, 0.008, 3))
    assert lab == LABEL_LONG and rl == pytest.approx(0.016)
    assert rs == pytest.approx(-0.008)  # the short's stop (100.8) was touched first
    assert off == 2  # settled once both sides were decided (the long take-profit, bar 2)


def test_time_barrier_returns_last_close():
    lab, off, rl, rs = label_window(100.0, [100.5] * 4, [99.5] * 4, [100, 100, 100, 100.3], 0,
                                    Barriers(0.016, 0.008, 4))
    assert lab == LABEL_NONE and off == 3
    assert rl == pytest.approx(0.003) and rs == pytest.approx(-0.003)


def test_barriers_validate():
    with pytest.raises(ValueError, match="tp > sl"):
        Barriers(0.008, 0.016, 10)
    with pytest.raises(ValueError, match="horizon"):
        Barriers(0.02, 0.01, 0)


def test_purge_and_embargo():
    idx = np.arange(100)
    end = idx + 5
    end[-5:] = -1  # unlabelled tail
    mask = purged_train_mask(idx, end, test_start=40, test_end=59, embargo=10)
    # purge: samples whose label window reaches into [40, 59]
    assert mask[34] and not mask[35] and not mask[39]
    # the test window itself
    assert not mask[40:60].any()
    # embargo: 10 bars after the window
    assert not mask[60:70].any() and mask[70]
    # unlabelled
    assert not mask[95:].any()
