"""Fuzzing candle import (issue 11, B14): generated CSV rows into a real SQLite store.

The promise of `qtraderd import`: a bad row is rejected with its line number and a
reason, a good row is stored exactly as written, a file that cannot be imported at all
raises CandleImportError naming it — and nothing else ever escapes (no traceback). Each
case imports one generated file (under a fresh symbol) into one store per test, and the
store must then hold exactly the good rows.
"""

from __future__ import annotations

import gzip
import io
import itertools
import math
import sqlite3
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtraderd.store.db import connect
from qtraderd.store.importer import CandleImportError, import_file
from tests.fuzz.fuzz_count import tally

pytestmark = pytest.mark.fuzz

STEP = 300_000  # 5m
T0 = 1_600_000_200_000 - 1_600_000_200_000 % STEP
HEADER = "open_time,open,high,low,close,volume"
_symbols = itertools.count()


def fresh_symbol() -> str:
    return f"FZ{next(_symbols)}USDT"


@pytest.fixture
def store(tmp_path: Path):
    conn = connect(tmp_path / "state")
    yield conn
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def stored(conn: sqlite3.Connection, symbol: str) -> list[tuple]:
    return conn.execute("SELECT open_time, open, high, low, close, volume FROM bars "
                        "WHERE symbol=? AND interval='5m' ORDER BY open_time",
                        (symbol,)).fetchall()


# ------------------------------------------------------------------ rows
prices = st.floats(1e-8, 1e8, allow_nan=False, allow_infinity=False)


@st.composite
def good_candle(draw: st.DrawFn) -> tuple[float, float, float, float, float]:
    low = draw(prices)
    high = low * draw(st.floats(1.0, 2.0))
    o = draw(st.floats(low, high)) if high > low else low
    c = draw(st.floats(low, high)) if high > low else low
    return o, high, low, c, draw(st.floats(0, 1e9))


def fmt(x: float) -> str:
    return repr(x)


BAD_KINDS = ("columns", "text", "nan", "inf", "zero", "negative", "high_low", "open_out",
             "neg_volume", "time_text", "time_range", "off_grid", "duplicate", "backwards")


@st.composite
def bad_row(draw: st.DrawFn, t: int, prev: int | None) -> tuple[str, str]:
    """(row text, kind): a row that is wrong whatever surrounds it."""
    kind = draw(st.sampled_from(BAD_KINDS))
    o, h, low, c, v = draw(good_candle())
    cells = [str(t), fmt(o), fmt(h), fmt(low), fmt(c), fmt(v)]
    junk = draw(st.text(st.characters(blacklist_characters=',;\t"\r\n\x00',
                                      blacklist_categories=("Cs",)), min_size=1, max_size=8))
    col = draw(st.integers(1, 5))
    if kind == "columns":
        cells = [*cells, junk] if draw(st.booleans()) else cells[:draw(st.integers(1, 5))]
    elif kind == "text":
        try:
            float(junk)
            cells[col] = "x" + junk
        except ValueError:
            cells[col] = junk
    elif kind in ("nan", "inf"):
        cells[col] = draw(st.sampled_from(["nan", "NaN"] if kind == "nan" else
                                          ["inf", "-inf", "Infinity", "1e999"]))
    elif kind == "zero":
        cells[draw(st.integers(1, 4))] = "0"
    elif kind == "negative":
        cells[draw(st.integers(1, 4))] = fmt(-draw(prices))
    elif kind == "high_low":
        cells[2], cells[3] = fmt(low * 0.5), fmt(h * 2 + 1)
    elif kind == "open_out":
        cells[1] = fmt(h * 2 + 1)
    elif kind == "neg_volume":
        cells[5] = fmt(-draw(st.floats(1e-6, 1e9)))
    elif kind == "time_text":
        cells[0] = draw(st.sampled_from(["", "yesterday", "2021-13-01", "--", "1e", "0x10"]))
    elif kind == "time_range":
        cells[0] = draw(st.sampled_from(["1", "-5", str(10**20), "1900-01-01",
                                         "2200-01-01T00:00:00"]))
    elif kind == "off_grid":
        cells[0] = str(t + draw(st.integers(1, STEP // 1000 - 1)) * 1000)
    elif kind == "duplicate" and prev is not None:
        cells[0] = str(prev)
    else:  # backwards (or a duplicate with nothing before it): far before every good row
        kind = "backwards" if prev is not None else "time_range"
        cells[0] = str(T0 - STEP * 1000) if prev is not None else "1"
    return ",".join(cells), kind


@st.composite
def candle_file(draw: st.DrawFn) -> tuple[list[str], list[tuple], int]:
    """(lines, good rows as stored, bad row count). Good rows are one step apart (gaps
    allowed after the first pair) and rising; bad rows are interleaved anywhere."""
    n_good = draw(st.integers(0, 12))
    n_bad = draw(st.integers(0 if n_good else 1, 8))
    order = draw(st.permutations(["g"] * n_good + ["b"] * n_bad))
    lines: list[str] = []
    good: list[tuple] = []
    t = T0
    prev: int | None = None
    for i, slot in enumerate(order):
        if slot == "g":
            if good:
                t += STEP * (1 if len(good) == 1 else draw(st.sampled_from([1, 1, 2, 5])))
            o, h, low, c, v = draw(good_candle())
            lines.append(",".join([str(t), fmt(o), fmt(h), fmt(low), fmt(c), fmt(v)]))
            good.append((t, o, h, low, c, v))
            prev = t
        else:
            text, kind = draw(bad_row(t + STEP * (i + 50), prev))
            if kind == "off_grid" and n_good == 0:
                text = "x" + text  # a file of only off-grid rows is a wrong-interval file
            lines.append(text)
    return lines, good, n_bad


def test_generated_rows(tmp_path: Path, store: sqlite3.Connection) -> None:
    @given(candle_file(), st.sampled_from(["\n", "\r\n"]), st.sampled_from(["csv", "gz", "zip"]))
    def case(spec: tuple[list[str], list[tuple], int], eol: str, ext: str) -> None:
        tally()
        lines, good, n_bad = spec
        symbol = fresh_symbol()
        text = eol.join([HEADER, *lines]) + eol
        path = write(tmp_path, f"{symbol}-5m", ext, text.encode())
        try:
            res = import_file(store, path)
        except CandleImportError as exc:
            # only a whole-file verdict: off-grid rows outnumbering the good ones, or (B6)
            # every row rejected — refused, not a result the operator may overlook
            assert str(path) in str(exc), exc
            assert "grid" in str(exc) or (
                not good and f"all {n_bad} rows were rejected" in str(exc)), exc
            assert stored(store, symbol) == []
            return
        assert good, "every row was rejected, yet the import succeeded"
        assert res.rows_read == len(good) + n_bad
        assert res.rejected_count == n_bad, res.rejected
        assert all(isinstance(r, str) and r for _, r in res.rejected)
        assert {line for line, _ in res.rejected} <= set(range(2, len(lines) + 2))
        assert stored(store, symbol) == good

    case()


def write(tmp_path: Path, stem: str, ext: str, data: bytes) -> Path:
    if ext == "gz":
        data = gzip.compress(data)
    elif ext == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(f"{stem}.csv", data)
        data = buf.getvalue()
    path = tmp_path / f"{stem}.{'csv.gz' if ext == 'gz' else ext}"
    path.write_bytes(data)
    return path


def test_arbitrary_content(tmp_path: Path, store: sqlite3.Connection) -> None:
    """Any text or bytes, plain or (corrupt) compressed: a CandleImportError naming the
    file or a result in which every row read is accounted for and every stored candle is
    a real candle."""
    cell = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
    rows = st.lists(st.lists(cell, min_size=1, max_size=7).map(",".join), max_size=10)
    content = (rows.map(lambda r: "\n".join([HEADER, *r]).encode())
               | st.text(max_size=300).map(str.encode) | st.binary(max_size=300))

    @given(content, st.sampled_from(["csv", "gz", "zip", "raw.gz", "raw.zip"]))
    def case(data: bytes, ext: str) -> None:
        tally()
        symbol = fresh_symbol()
        if ext.startswith("raw."):  # not really compressed
            path = tmp_path / f"{symbol}-5m.{'csv.gz' if ext == 'raw.gz' else 'zip'}"
            path.write_bytes(data)
        else:
            path = write(tmp_path, f"{symbol}-5m", ext, data)
        try:
            res = import_file(store, path)
        except CandleImportError as exc:
            assert str(path) in str(exc), exc
            assert stored(store, symbol) == []
            return
        bars = stored(store, symbol)
        assert len(bars) + res.rejected_count == res.rows_read
        assert all(isinstance(r, str) and r for _, r in res.rejected)
        for _t, o, h, low, c, v in bars:
            assert 0 < low <= min(o, c) <= max(o, c) <= h and v >= 0
            assert all(math.isfinite(x) for x in (o, h, low, c, v))

    case()


def test_cli_import_exit_code_when_every_row_is_rejected(tmp_path: Path) -> None:
    from qtraderd.cli import main

    @given(st.lists(bad_row(T0, None).map(lambda r: r[0]), min_size=1, max_size=5))
    def case(lines: list[str]) -> None:
        tally()
        path = tmp_path / f"{fresh_symbol()}-5m.csv"
        path.write_text("\n".join([HEADER, *lines]) + "\n")
        assert main(["import", str(path), "--state-dir", str(tmp_path / "cli")]) != 0

    case()
