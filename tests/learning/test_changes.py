"""Change detectors on synthetic Bernoulli hit streams: quiet when nothing changes, quick
when the hit rate drops, and the window's mean follows the new level."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qtraderd.learning.changes import ADWIN, PageHinkley


def _stream(seed: int, levels: list[tuple[float, int]]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([(rng.random(n) < p).astype(float) for p, n in levels])


def test_adwin_quiet_on_a_stationary_stream() -> None:
    detections = 0
    for seed in range(20):
        a = ADWIN()
        detections += sum(a.update(x) for x in _stream(seed, [(0.5, 2000)]))
        assert a.mean == pytest.approx(0.5, abs=0.06)
        assert a.width == 2000  # nothing dropped: the window is the whole (capped) stream
    assert detections <= 1  # over 40,000 values


def test_adwin_detects_a_drop_and_tracks_the_new_level() -> None:
    delays = []
    for seed in range(20):
        a = ADWIN()
        xs = _stream(100 + seed, [(0.6, 1000), (0.3, 1000)])
        first = None
        for i, x in enumerate(xs):
            if a.update(x) and first is None:
                first = i
        assert first is not None and first >= 1000, "a detection before the change"
        delays.append(first - 1000)
        assert a.mean == pytest.approx(0.3, abs=0.07)
        assert a.width - 1000 <= 60  # (nearly) none of the 0.6 part is left
        assert a.n_detections >= 1
    assert max(delays) < 250
    assert np.median(delays) < 120


def test_adwin_detects_a_rise_too_and_its_state() -> None:
    a = ADWIN(delta=0.002)
    hits = [a.update(x) for x in _stream(7, [(0.2, 600), (0.7, 400)])]
    assert any(hits[600:]) and not any(hits[:600])
    assert a.mean == pytest.approx(0.7, abs=0.08)
    st = a.state()
    assert st["width"] == a.width and st["detections"] == a.n_detections
    assert st["seen"] == 1000
    assert math.isnan(ADWIN().mean) and ADWIN().state()["mean"] is None


def test_adwin_window_cap_and_small_delta_sensitivity() -> None:
    a = ADWIN(max_window=100)
    for x in _stream(1, [(0.5, 1000)]):
        a.update(x)
    assert a.width <= 100
    np.testing.assert_array_equal(a.window(), _stream(1, [(0.5, 1000)])[-a.width:])
    # A looser delta detects sooner (and is allowed more false alarms).
    xs = _stream(2, [(0.6, 800), (0.4, 800)])

    def first(delta: float) -> int:
        ad = ADWIN(delta=delta)
        return next((i for i, x in enumerate(xs) if ad.update(x)), 10**9)

    assert first(0.2) <= first(0.002) < 10**9
    with pytest.raises(ValueError):
        ADWIN(delta=0.0)
    with pytest.raises(ValueError):
        ADWIN(max_window=4)


def test_adwin_mean_equals_window_mean_after_many_cuts() -> None:
    a = ADWIN(clock=1)
    xs = _stream(3, [(0.9, 300), (0.1, 300), (0.9, 300), (0.1, 300)])
    for x in xs:
        a.update(x)
    assert a.n_detections >= 3
    assert a.mean == pytest.approx(a.window().mean())
    np.testing.assert_array_equal(a.window(), xs[-a.width:])


def test_page_hinkley_quiet_then_detects_a_drop() -> None:
    false_alarms = 0
    delays = []
    for seed in range(20):
        ph = PageHinkley()
        false_alarms += sum(ph.update(x) for x in _stream(200 + seed, [(0.5, 2000)]))
        ph = PageHinkley()
        xs = _stream(300 + seed, [(0.6, 1000), (0.3, 1000)])
        alarms = [i for i, x in enumerate(xs) if ph.update(x)]
        late = [i for i in alarms if i >= 1000]
        assert late, "drop not detected"
        delays.append(late[0] - 1000)
    assert false_alarms <= 2
    assert np.median(delays) < 120 and max(delays) < 250


def test_page_hinkley_direction() -> None:
    rise = _stream(9, [(0.3, 500), (0.7, 500)])
    down = PageHinkley(direction="down")
    assert not any(down.update(x) for x in rise)  # a rise is not a drop
    up = PageHinkley(direction="up")
    flags = [up.update(x) for x in rise]
    assert any(flags[500:]) and up.n_detections >= 1
    assert PageHinkley().statistic == 0.0 and math.isnan(PageHinkley().mean)
    with pytest.raises(ValueError):
        PageHinkley(direction="sideways")


def test_adwin_mean_of_a_hit_stream_is_exactly_numpys_after_caps_and_cuts() -> None:
    """The mean of 0/1 streams comes from a count of ones: it must equal ndarray.mean to
    the bit (ensemble weights depend on it, and replays must be bit-identical)."""
    detections = 0
    for seed, (max_window, clock) in enumerate([(10, 1), (50, 4), (2000, 32)]):
        a = ADWIN(max_window=max_window, clock=clock)
        xs = _stream(40 + seed, [(0.9, 700), (0.2, 700), (0.6, 700)])
        for x in xs:
            a.update(x)
            assert a.mean == float(a.window().mean())
        detections += a.n_detections
    assert detections >= 1  # cuts happened, not only the cap
    b = ADWIN(clock=1)  # a value other than 0/1 switches to numpy for good
    for x in [1.0, 0.0, 0.25, 1.0, 0.0]:
        b.update(x)
    assert b.mean == float(b.window().mean())


def _reference_cut(a: ADWIN) -> int:
    """_find_cut as first written: every quantity computed in place from a cumsum."""
    w = a.window()
    n = len(w)
    lo, hi = a.min_sub, n - a.min_sub
    if hi < lo:
        return 0
    step = max(1, (hi - lo + 1) // a.max_checks)
    k = np.arange(lo, hi + 1, step)
    cs = np.cumsum(w)
    total = cs[-1]
    s0 = cs[k - 1]
    n0 = k.astype(np.float64)
    n1 = n - n0
    gap = np.abs(s0 / n0 - (total - s0) / n1)
    m = 1.0 / (1.0 / n0 + 1.0 / n1)
    eps = np.sqrt(math.log(4.0 * n / a.delta) / (2.0 * m))
    bad = np.flatnonzero(gap > eps)
    return int(k[bad[-1]]) if len(bad) else 0


def test_adwin_cut_with_cached_split_bounds_is_the_reference_cut() -> None:
    """Split bounds cached per width and the 0/1 stretch sums must cut exactly where
    the in-place formula does, on hit streams and on fractional ones."""
    rng = np.random.default_rng(17)
    cuts = 0
    for max_window, min_sub, max_checks in [(60, 1, 8), (400, 5, 256), (2000, 5, 256)]:
        for fractional in (False, True):
            # never checks by itself: the window keeps its changes for us to find
            a = ADWIN(max_window=max_window, min_sub=min_sub, max_checks=max_checks,
                      clock=10**9)
            p = 0.5
            for i in range(2500):
                if i % 400 == 0:
                    p = float(rng.uniform(0.1, 0.9))
                x = float(rng.uniform()) if fractional and i > 1200 else float(
                    rng.uniform() < p)
                want = _reference_cut(a)
                assert a._find_cut() == want
                cuts += want > 0
                a.update(x)
    assert cuts > 10


def test_a_restored_adwin_continues_exactly_and_pickles_only_its_window():
    """Checkpoints pickle one detector per model and regime on every live step: the
    window, not its 2 x max_window buffer, and a restore continues bit for bit."""
    import pickle

    rng = np.random.default_rng(3)
    stream = np.concatenate([rng.random(700) < 0.6, rng.random(900) < 0.3]).astype(float)
    a = ADWIN(max_window=1000)
    for x in stream[:800]:
        a.update(x)
    blob = pickle.dumps(a)
    b = pickle.loads(blob)
    assert len(blob) < 8 * a.width + 1000 < a._buf.nbytes  # the window, not the buffer
    for x in stream[800:]:
        assert a.update(x) == b.update(x)
        assert (a.width, a.mean, a.n_detections, a.n_seen) == \
            (b.width, b.mean, b.n_detections, b.n_seen)
    assert np.array_equal(a.window(), b.window())
