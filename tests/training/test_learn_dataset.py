"""Dataset building: the time split, purge, nothing read after the span, lineage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qtraderd.core.config import load, with_changes
from qtraderd.features.labels import triple_barrier
from qtraderd.features.spec import N_FEATURES, WARMUP_BARS, compute
from qtraderd.store.db import connect
from qtraderd.training import dataset

Row = tuple[str, str, int, float, float, float, float, float]


def _build(state: Path, **kw: object) -> dataset.Dataset:
    conn = connect(state)
    try:
        return dataset.build(conn, load(None, env={}), **kw)  # type: ignore[arg-type]
    finally:
        conn.close()


def test_shapes_and_split_bounds(real_store: Path) -> None:
    ds = _build(real_store)
    cfg = load(None, env={})
    tr, va = ds.train, ds.valid
    assert ds.symbols == ("ETHBTC", "LTCBTC", "XMRBTC")
    assert tr.X.dtype == np.float32 and tr.X.shape == (ds.n_train, N_FEATURES)
    assert np.isfinite(tr.X).all() and np.isfinite(va.X).all()
    assert set(np.unique(tr.y)) <= {0, 1, 2} and len(va) == ds.n_valid > 0
    # The span is the first train_fraction of the stored range; validation its tail.
    first, last = ds.span_start, 1517287800000  # last bar of the shared 5m files
    assert ds.span_end == first + int((last - first) * cfg.train.train_fraction)
    assert ds.valid_cutoff == ds.span_end - int((ds.span_end - first) * cfg.train.valid_fraction)
    assert ds.train_end < ds.valid_cutoff <= ds.valid_start <= ds.valid_end <= ds.span_end
    # No sample is a warm-up row: the first one sits WARMUP_BARS-1 bars after the start.
    assert ds.train_start >= first + (WARMUP_BARS - 1) * 300_000


def test_purge_no_training_label_reaches_validation(real_store: Path) -> None:
    ds = _build(real_store)
    tr, va = ds.train, ds.valid
    # Purge: every training label ended before the validation window began.
    assert (tr.label_end < ds.valid_cutoff).all()
    assert (tr.ts < tr.label_end).all()  # a label reads bars strictly after its sample
    # Validation labels never read past the training span; neither does anything else.
    assert (va.ts >= ds.valid_cutoff).all()
    assert (va.label_end <= ds.span_end).all()
    assert ds.data_end == max(tr.label_end.max(), va.label_end.max()) <= ds.span_end
    # The purge is not vacuous: recompute one symbol's labels and find the samples that
    # straddle the cutoff; they exist, and none of them is in the training set.
    conn = connect(real_store)
    s = dataset.load_series(conn, ["ETHBTC"], "5m", until_ms=ds.span_end)["ETHBTC"]
    conn.close()
    lab, res, _, _ = triple_barrier(s.o, s.h, s.low, s.c, ds.barriers)
    ok = (lab >= 0) & np.isfinite(compute(s.open_time, s.o, s.h, s.low, s.c, s.v)).all(axis=1)
    straddle = ok & (s.open_time < ds.valid_cutoff)
    straddle &= s.open_time[np.maximum(res, 0)] >= ds.valid_cutoff
    assert straddle.sum() > 0
    eth = ds.symbols.index("ETHBTC")
    train_ts = set(tr.ts[tr.sym == eth].tolist())
    assert not train_ts & set(s.open_time[straddle].tolist())
    # ... and they and the last horizon before the cutoff are dropped (the gate's rule:
    # the last training sample plus one label horizon stays before the window); every
    # other labelled sample trains.
    test_start = int(np.searchsorted(s.open_time, ds.valid_cutoff))
    early = np.arange(len(s)) < test_start - ds.barriers.horizon
    assert train_ts == set(s.open_time[ok & early & ~straddle].tolist())
    assert ds.train_end + ds.barriers.horizon * 300_000 < ds.valid_cutoff


def test_a_job_at_now_reads_only_bars_closed_by_then(real_store: Path) -> None:
    """The bar opening at `now` is still forming: a job at `now` must not read it."""
    conn = connect(real_store)
    opens = [r[0] for r in conn.execute(
        "SELECT open_time FROM bars WHERE symbol='ETHBTC' ORDER BY open_time").fetchall()]
    conn.close()
    now = opens[4000]  # a bar's open time: that bar closes 5 minutes later
    ds = _build(real_store, train_until_ms=now, valid_from_ms=now - 86_400_000)
    assert max(int(s.open_time.max()) for s in ds.series.values()) == now - 300_000
    assert ds.span_end == now - 300_000 and ds.data_end <= now - 300_000
    # and the same job one second before the bar closes sees no more than that
    later = _build(real_store, train_until_ms=now + 299_999, valid_from_ms=now - 86_400_000)
    assert later.data_sha256 == ds.data_sha256


def test_no_lookahead_appending_bars_changes_nothing(
    make_store: Callable[..., Path], real_rows: dict[str, list[Row]]
) -> None:
    until = 1516400000000  # about 2018-01-19 22:13 UTC, mid-file
    early = {s: [r for r in rs if r[2] <= until] for s, rs in real_rows.items()}
    ds1 = _build(make_store(early, "early"), train_until_ms=until)
    ds2 = _build(make_store(real_rows, "full"), train_until_ms=until)
    assert len(real_rows["ETHBTC"]) > len(early["ETHBTC"]) + 1000  # really more data
    for a, b in ((ds1.train, ds2.train), (ds1.valid, ds2.valid)):
        for name in ("X", "y", "ts", "sym", "label_end", "ret_long", "ret_short"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert ds1.summary() == ds2.summary()  # windows, counts and the data hash
    assert ds2.data_end <= until


def test_data_hash_tracks_the_bars(
    make_store: Callable[..., Path], real_rows: dict[str, list[Row]]
) -> None:
    base = _build(make_store(real_rows, "a"))
    changed = dict(real_rows)
    r = changed["LTCBTC"][100]
    changed["LTCBTC"] = [*changed["LTCBTC"][:100], (*r[:6], r[6] * 1.0001, r[7]),
                         *changed["LTCBTC"][101:]]
    other = _build(make_store(changed, "b"))
    assert len(base.data_sha256) == 64
    assert other.data_sha256 != base.data_sha256
    assert _build(make_store(real_rows, "c")).data_sha256 == base.data_sha256


def test_symbols_and_errors(real_store: Path, tmp_path: Path) -> None:
    ds = _build(real_store, symbols=["LTCBTC"])
    assert ds.symbols == ("LTCBTC",) and (ds.train.sym == 0).all()
    with pytest.raises(dataset.DatasetError, match="NOPEBTC"):
        _build(real_store, symbols=["LTCBTC", "NOPEBTC"])
    with pytest.raises(dataset.DatasetError, match="no 5m bars"):
        _build(tmp_path / "empty")
    with pytest.raises(dataset.DatasetError, match="before the first stored bar"):
        _build(real_store, train_until_ms=1_000)
    with pytest.raises(dataset.DatasetError, match="too short"):
        _build(real_store, train_until_ms=1515560100000 + 60 * 300_000)


def test_config_drives_barriers_and_fractions(real_store: Path) -> None:
    cfg = with_changes(load(None, env={}), sizing={"take_profit_pct": 2.0,
                                                   "stop_loss_pct": 1.0},
                       labels={"horizon_bars": 24},
                       train={"train_fraction": 0.8, "valid_fraction": 0.25})
    conn = connect(real_store)
    ds = dataset.build(conn, cfg)
    conn.close()
    assert (ds.barriers.tp, ds.barriers.sl, ds.barriers.horizon) == (0.02, 0.01, 24)
    assert ds.valid_cutoff == ds.span_end - int((ds.span_end - ds.span_start) * 0.25)
    assert ((ds.valid.label_end - ds.valid.ts) <= 24 * 300_000).all()
