"""Candle windows: serving == training on real data, and no lookahead."""

from __future__ import annotations

import numpy as np
import pytest

from qtraderd.features.windows import CHANNELS, WINDOW, WindowState, make_windows
from tests.helpers import read_ohlcv


def cols(a):
    return a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5]


@pytest.mark.parametrize("name", ["ETHBTC-5m.csv", "UNITTESTBTC-1m.csv"])
def test_incremental_equals_vectorised(ohlcv_dir, name):
    a = read_ohlcv(ohlcv_dir / name)[:3000]
    st = WindowState()
    inc = []
    for r in a.tolist():
        st.update(r[1], r[2], r[3], r[4], r[5])
        inc.append(st.window())
    assert all(w is None for w in inc[: WINDOW - 1])
    at = np.arange(WINDOW - 1, len(a))
    vec = make_windows(*cols(a), at)
    assert vec.shape == (len(at), WINDOW, CHANNELS) and vec.dtype == np.float32
    np.testing.assert_allclose(np.stack(inc[WINDOW - 1:]), vec, rtol=1e-6, atol=1e-7)


def test_windows_do_not_look_ahead(ohlcv_dir):
    a = read_ohlcv(ohlcv_dir / "LTCBTC-5m.csv")[:800]
    t = 500
    base = make_windows(*cols(a), np.array([t]))
    b = a.copy()
    b[t + 1:, 1:6] *= 2.0
    np.testing.assert_array_equal(make_windows(*cols(b), np.array([t])), base)
    assert base[0, -1, 0] == 0.0  # relative to the last close


def test_too_early_index_is_refused(ohlcv_dir):
    a = read_ohlcv(ohlcv_dir / "LTCBTC-5m.csv")[:100]
    with pytest.raises(ValueError, match="needs 64 bars"):
        make_windows(*cols(a), np.array([10]))


def test_normalize_matches_the_ndarray_mean_definition_to_the_bit() -> None:
    """normalize skips ndarray.mean's wrapper; the networks' inputs must not move a bit."""
    from qtraderd.features.windows import normalize

    def reference(raw: np.ndarray) -> np.ndarray:
        w = np.array(raw, dtype=np.float64)
        w[:, :, 0] -= w[:, -1:, 0]
        w[:, :, 4] -= w[:, :, 4].mean(axis=1, keepdims=True)
        return w.astype(np.float32)

    rng = np.random.default_rng(7)
    for n in (1, 3, 10, 257):
        raw = rng.normal(size=(n, WINDOW, CHANNELS)) * rng.uniform(0.01, 100)
        raw[:, :, 4] = np.log1p(rng.exponential(1e4, size=(n, WINDOW)))
        want = reference(raw)
        assert normalize(raw).tobytes() == want.tobytes()
        assert normalize(raw.copy(), copy=False).tobytes() == want.tobytes()


def test_one_window_path_gives_the_batch_input_to_the_bit() -> None:
    """normalize_windows takes a shorter path for one window (live, one symbol); the
    network must see exactly what the batch path (and training's make_windows) gives,
    also for views into a WindowState buffer, which it must leave untouched."""
    from qtraderd.features.windows import WindowState, normalize, normalize_windows

    rng = np.random.default_rng(11)
    for k in range(300):
        ws = WindowState()
        for _ in range(WINDOW + k % 40):
            c = float(rng.uniform(1e-6, 3.0))
            ws.update(c * rng.uniform(0.98, 1.02), c * 1.02, c * 0.97, c,
                      float(rng.exponential(1e5)) * (k % 3))
        raw = ws.raw()
        before = raw.copy()
        got = normalize_windows([raw])
        assert got.dtype == np.float32 and got.shape == (1, WINDOW, CHANNELS)
        assert got.tobytes() == normalize(raw[None]).tobytes()
        assert raw.tobytes() == before.tobytes()
    raws = [rng.normal(size=(WINDOW, CHANNELS)) for _ in range(3)]
    assert normalize_windows(raws).tobytes() == normalize(np.stack(raws)).tobytes()


def test_rows_written_late_give_the_buffer_written_at_once() -> None:
    """Rows wait until a window is read; the buffer (and every window) must be exactly
    what writing each row at once gives, whenever reads and checkpoints fall, and a
    checkpoint of the old layout (no waiting rows) must still restore."""
    import math
    import pickle

    rng = np.random.default_rng(4)
    for size in (3, 8, WINDOW):
        st = WindowState(size)
        ref_buf, ref_i, ref_n = np.zeros((2 * size, CHANNELS)), size - 1, 0
        for t in range(2000):
            o, h, low, c, v = (float(x) for x in (1 + rng.uniform(size=5)))
            st.update(o, h, low, c, v)
            lc = math.log(c)  # WindowState.update as written before rows could wait
            row = (lc, math.log(h) - lc, math.log(low) - lc, math.log(o) - lc, math.log1p(v))
            ref_i = (ref_i + 1) % size
            ref_buf[ref_i] = row
            ref_buf[ref_i + size] = row
            ref_n += 1
            if rng.uniform() < (0.5 if t > 1500 else 0.02):
                raw = st.raw()
                assert (raw is None) == (ref_n < size)
                assert st._buf.tobytes() == ref_buf.tobytes() and (st._i, st._n) == (ref_i,
                                                                                      ref_n)
            if rng.uniform() < 0.01:
                st = pickle.loads(pickle.dumps(st))
                assert st._buf.tobytes() == ref_buf.tobytes()
        old = WindowState.__new__(WindowState)  # a state pickled before `_rows` existed
        old.__setstate__((None, {"_buf": ref_buf.copy(), "_i": ref_i, "_n": ref_n,
                                 "_size": size}))
        assert old.raw().tobytes() == st.raw().tobytes()
