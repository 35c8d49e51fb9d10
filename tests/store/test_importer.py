"""Importer tests against real SQLite stores in tmp_path and the real shared candles.

Small fixtures are derived from the shared ETHBTC rows (written into tmp_path), so every
format variant is checked against the same known-good values.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path

import pytest

from qtraderd.store import db
from qtraderd.store.importer import (
    CandleImportError,
    import_file,
    infer_symbol_interval,
    load_candles,
)

HEADER = "open_time,open,high,low,close,volume"
STEP_5M = 300_000


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = db.connect(tmp_path / "state")
    yield c
    c.close()


@pytest.fixture(scope="module")
def eth_rows(ohlcv_dir: Path) -> list[list[str]]:
    """The first 50 real ETHBTC 5m rows, as strings: [open_time_ms, o, h, l, c, v]."""
    with open(ohlcv_dir / "ETHBTC-5m.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == HEADER.split(",")
    return rows[1:51]


def _expected(rows: list[list[str]]) -> list[tuple]:
    return [(int(r[0]), *map(float, r[1:6])) for r in rows]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _stored(conn: sqlite3.Connection, symbol: str, interval: str = "5m") -> list[tuple]:
    return conn.execute(
        "SELECT open_time, open, high, low, close, volume FROM bars "
        "WHERE symbol = ? AND interval = ? ORDER BY open_time", (symbol, interval)
    ).fetchall()


def _binance_lines(rows: list[list[str]], unit: int = 1) -> list[str]:
    """12-column headerless kline lines; unit=1000 writes open/close times in µs."""
    out = []
    for i, r in enumerate(rows):
        t = int(r[0])
        close_t = (t + STEP_5M) * unit - 1
        out.append(",".join([str(t * unit), *r[1:6], str(close_t), f"{i * 1.5:.4f}",
                             str(100 + i), "1.0", "0.1", "0"]))
    return out


# ----------------------------------------------------------------------------- real files


def test_every_shared_file_imports_completely(conn: sqlite3.Connection, ohlcv_dir: Path
                                              ) -> None:
    files = [*sorted(ohlcv_dir.glob("*-5m.csv")), ohlcv_dir / "XRPUSDT-1h.csv"]
    assert len(files) == 12
    for path in files:
        with open(path, newline="") as f:
            raw = list(csv.reader(f))[1:]
        n_lines = path.read_bytes().count(b"\n") - 1  # `wc -l` minus the header
        symbol, interval = path.stem.split("-")
        step = {"5m": STEP_5M, "1h": 3_600_000}[interval]
        times = [int(r[0]) for r in raw]
        want_gaps = sum(1 for a, b in pairwise(times) if b - a > step)

        res = import_file(conn, path)

        assert (res.symbol, res.interval) == (symbol, interval), path
        assert res.rows_read == res.rows_added == n_lines == len(raw), path
        assert res.rejected == [] and res.rejected_count == 0, path
        assert res.rows_existing == 0
        assert (res.first_ts, res.last_ts) == (times[0], times[-1]), path
        assert res.gaps == want_gaps, path
        assert _stored(conn, symbol, interval) == _expected(raw), path
    # ADABTC has real holes; the importer must count, not fill, them
    assert import_file(conn, ohlcv_dir / "ADABTC-5m.csv").gaps == 5


def test_unittest_1m_keeps_its_real_gaps(conn: sqlite3.Connection, ohlcv_dir: Path) -> None:
    path = ohlcv_dir / "UNITTESTBTC-1m.csv"
    with open(path, newline="") as f:
        raw = list(csv.reader(f))[1:]
    res = import_file(conn, path)
    assert res.gaps > 0
    assert res.gaps == 538
    stored = _stored(conn, "UNITTESTBTC", "1m")
    assert len(stored) == len(raw) == 13_681  # nothing invented, nothing dropped
    assert [s[0] for s in stored] == [int(r[0]) for r in raw]
    span_bars = (res.last_ts - res.first_ts) // 60_000 + 1
    assert span_bars > len(stored)


def test_reimport_adds_nothing(conn: sqlite3.Connection, ohlcv_dir: Path) -> None:
    path = ohlcv_dir / "ETHBTC-5m.csv"
    first = import_file(conn, path)
    again = import_file(conn, path)
    assert first.rows_added == 5760
    assert (again.rows_read, again.rows_added, again.rows_existing) == (5760, 0, 5760)
    assert conn.execute("SELECT count(*) FROM bars").fetchone()[0] == 5760
    assert again.summary() == (
        "ETHBTC 5m: 5760 read, 0 added, 5760 already stored, 0 rejected, 0 gaps "
        "(2018-01-10 .. 2018-01-30)"
    )
    added = [r[0] for r in conn.execute("SELECT rows_added FROM imports ORDER BY id")]
    assert added == [5760, 0]


def test_partial_overlap_counts_added_and_existing(conn: sqlite3.Connection, tmp_path: Path,
                                                   eth_rows: list[list[str]]) -> None:
    a = _write(tmp_path / "ETHBTC-5m.csv", [HEADER] + [",".join(r) for r in eth_rows[:30]])
    import_file(conn, a)
    b = _write(tmp_path / "overlap.csv", [HEADER] + [",".join(r) for r in eth_rows[20:]])
    res = import_file(conn, b, "ETHBTC", "5m")
    assert (res.rows_read, res.rows_added, res.rows_existing) == (30, 20, 10)
    assert _stored(conn, "ETHBTC") == _expected(eth_rows)


def test_imports_row_is_recorded(conn: sqlite3.Connection, ohlcv_dir: Path) -> None:
    path = ohlcv_dir / "XRPUSDT-1h.csv"
    before = datetime.now(UTC).replace(microsecond=0)
    import_file(conn, path)
    row = conn.execute(
        "SELECT at, path, sha256, symbol, interval, rows_read, rows_added, rows_rejected "
        "FROM imports"
    ).fetchall()
    assert len(row) == 1
    at, p, sha, symbol, interval, read, added, rejected = row[0]
    assert datetime.fromisoformat(at) >= before
    assert datetime.fromisoformat(at).utcoffset().total_seconds() == 0
    assert Path(p) == path.resolve()
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (symbol, interval, read, added, rejected) == ("XRPUSDT", "1h", 100, 100, 0)


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name, expected", [
    ("ETHBTC-5m.csv", ("ETHBTC", "5m")),
    ("ETHBTC-5m.csv.gz", ("ETHBTC", "5m")),
    ("ETHBTC-5m-2018-01.csv", ("ETHBTC", "5m")),
    ("ETHBTC-5m-2018-01.zip", ("ETHBTC", "5m")),
    ("XRPUSDT-1h-2021-11-17.csv", ("XRPUSDT", "1h")),
    ("/some/dir/ethbtc-15m.CSV", ("ETHBTC", "15m")),
    ("BTCUSDT-1M-2024-01.zip", ("BTCUSDT", "1M")),  # Binance's month, kept as written
    ("candles.csv", (None, None)),
    ("ETHBTC.csv", (None, None)),
    ("ETH-BTC-5m.csv", (None, None)),
])
def test_infer_symbol_interval(name: str, expected: tuple) -> None:
    assert infer_symbol_interval(Path(name)) == expected


def _time_variants(t_ms: int) -> dict[str, str]:
    iso = datetime.fromtimestamp(t_ms / 1000, UTC)
    return {
        "s": str(t_ms // 1000),
        "ms": str(t_ms),
        "ms_float": f"{t_ms}.0",
        "us": str(t_ms * 1000),
        "ns": str(t_ms * 1_000_000),
        "iso_z": iso.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "iso_naive": iso.strftime("%Y-%m-%d %H:%M:%S"),
        "iso_utc": iso.isoformat(),
        "iso_plus1": iso.astimezone(timezone(timedelta(hours=1))).isoformat(),
        "iso_ms": iso.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    }


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """Run in a local zone far from UTC, so a naive time read as local time would show."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.mark.usefixtures("far_from_utc")
@pytest.mark.parametrize("kind", ["s", "ms", "ms_float", "us", "ns", "iso_z", "iso_naive",
                                  "iso_utc", "iso_plus1", "iso_ms"])
def test_time_units_give_same_open_times(conn: sqlite3.Connection, tmp_path: Path,
                                         eth_rows: list[list[str]], kind: str) -> None:
    lines = ["timestamp,open,high,low,close,volume"]
    lines += [",".join([_time_variants(int(r[0]))[kind], *r[1:6]]) for r in eth_rows]
    path = _write(tmp_path / f"candles-{kind}.csv", lines)
    res = import_file(conn, path, "ethbtc", "5m")
    assert res.rejected == []
    assert res.symbol == "ETHBTC"
    assert _stored(conn, "ETHBTC") == _expected(eth_rows)
    assert res.first_ts == 1515560100000


@pytest.mark.parametrize("header", [
    "Timestamp,Open,High,Low,Close,Volume",
    "DATE,OPEN,HIGH,LOW,CLOSE,VOLUME",
    "time,open,high,low,close,volume",
    "Open time,Open,High,Low,Close,Volume",
    "open time,open,high,low,close,volume",
])
def test_header_name_variants(conn: sqlite3.Connection, tmp_path: Path,
                              eth_rows: list[list[str]], header: str) -> None:
    path = _write(tmp_path / "ETHBTC-5m.csv", [header] + [",".join(r) for r in eth_rows])
    res = import_file(conn, path)
    assert (res.rows_added, res.rejected_count) == (50, 0)
    assert _stored(conn, "ETHBTC") == _expected(eth_rows)


def test_columns_in_any_order_with_extras(conn: sqlite3.Connection, tmp_path: Path,
                                          eth_rows: list[list[str]]) -> None:
    lines = ["Volume,Close,symbol,Low,High,Open,Date,trades"]
    lines += [",".join([r[5], r[4], "ETHBTC", r[3], r[2], r[1], r[0], "7"]) for r in eth_rows]
    import_file(conn, _write(tmp_path / "ETHBTC-5m.csv", lines))
    assert _stored(conn, "ETHBTC") == _expected(eth_rows)


@pytest.mark.parametrize("unit", [1, 1000], ids=["ms", "us"])
def test_binance_headerless_klines(conn: sqlite3.Connection, tmp_path: Path,
                                   eth_rows: list[list[str]], unit: int) -> None:
    path = _write(tmp_path / "ETHBTC-5m-2018-01.csv", _binance_lines(eth_rows, unit))
    res = import_file(conn, path)
    assert (res.symbol, res.interval, res.rows_read, res.rows_added) == ("ETHBTC", "5m", 50, 50)
    assert res.rejected == []
    assert _stored(conn, "ETHBTC") == _expected(eth_rows)
    # the first line is data, not a header: it must be stored
    assert _stored(conn, "ETHBTC")[0][0] == int(eth_rows[0][0])


def test_binance_futures_file_with_header(conn: sqlite3.Connection, tmp_path: Path,
                                          eth_rows: list[list[str]]) -> None:
    header = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,"
              "taker_buy_volume,taker_buy_quote_volume,ignore")
    path = _write(tmp_path / "ETHBTC-5m-2018-01.csv", [header, *_binance_lines(eth_rows)])
    res = import_file(conn, path)
    assert res.rows_added == 50
    assert _stored(conn, "ETHBTC") == _expected(eth_rows)


def test_gzip_and_zip(conn: sqlite3.Connection, tmp_path: Path, ohlcv_dir: Path,
                      eth_rows: list[list[str]]) -> None:
    gz = tmp_path / "ETHBTC-5m.csv.gz"
    gz.write_bytes(gzip.compress((ohlcv_dir / "ETHBTC-5m.csv").read_bytes()))
    res = import_file(conn, gz)
    assert (res.symbol, res.rows_added, res.rejected_count) == ("ETHBTC", 5760, 0)

    zp = tmp_path / "LTCBTC-5m-2018-01.zip"
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("LTCBTC-5m-2018-01.csv", "\n".join(_binance_lines(eth_rows, 1000)) + "\n")
    res = import_file(conn, zp)
    assert (res.symbol, res.rows_added) == ("LTCBTC", 50)
    assert _stored(conn, "LTCBTC") == _expected(eth_rows)
    shas = [r[0] for r in conn.execute("SELECT sha256 FROM imports ORDER BY id")]
    assert shas == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (gz, zp)]


def test_bom_crlf_semicolon_and_tab(conn: sqlite3.Connection, tmp_path: Path,
                                    eth_rows: list[list[str]]) -> None:
    for sym, delim in (("AAA", ","), ("BBB", ";"), ("CCC", "\t")):
        lines = [HEADER.replace(",", delim)] + [delim.join(r) for r in eth_rows]
        path = tmp_path / f"{sym}-5m.csv"
        path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
        res = import_file(conn, path)
        assert (res.rows_read, res.rejected_count) == (50, 0), sym
        assert _stored(conn, sym) == _expected(eth_rows), sym


def test_load_candles_parses_without_a_store(ohlcv_dir: Path, eth_rows: list[list[str]]
                                             ) -> None:
    rows, rejected = load_candles(ohlcv_dir / "ETHBTC-5m.csv")
    assert rejected == []
    assert len(rows) == 5760
    assert rows[:50] == _expected(eth_rows)
    assert all(isinstance(r[0], int) for r in rows)


# ----------------------------------------------------------------------------- bad rows


def test_bad_rows_rejected_with_line_numbers(conn: sqlite3.Connection, tmp_path: Path,
                                             eth_rows: list[list[str]]) -> None:
    r0, r1, r2, r3 = eth_rows[0], eth_rows[1], eth_rows[2], eth_rows[3]
    t = [int(r[0]) for r in eth_rows]

    def row(ts: int | str, o: str, h: str, lo: str, c: str, v: str) -> str:
        return ",".join([str(ts), o, h, lo, c, v])

    lines = [
        HEADER,                                       # 1
        ",".join(r0),                                 # 2 good
        row("yesterday", *r1[1:6]),                   # 3 unparseable time
        ",".join(r1),                                 # 4 good
        row(t[2], r2[1], r2[2], r2[3], "nan", r2[5]),  # 5 NaN close
        row(t[2], r2[1], "0.09", "0.1", r2[4], r2[5]),  # 6 high < low
        row(t[2], *r2[1:5], "-1"),                    # 7 negative volume
        row(t[1], *r2[1:6]),                          # 8 duplicate time (line 4)
        row(t[0] - STEP_5M, *r2[1:6]),                # 9 backwards time
        ",".join(r2),                                 # 10 good
        ",".join(r3[:5]),                             # 11 wrong column count
        row(t[3], r3[1], "inf", *r3[3:6]),            # 12 inf high
        row(t[3], r3[1], r3[2], "0", r3[4], r3[5]),   # 13 zero low
        row(t[3], "0.5", *r3[2:6]),                   # 14 open above high
        row(t[3], r3[1], r3[2], r3[3], "0.01", r3[5]),  # 15 close below low
        row(t[3], r3[1], "abc", *r3[3:6]),            # 16 unparseable high
        row(t[3] + 1000, *r3[1:6]),                   # 17 off the 5m grid
        "   ",                                        # 18 blank: skipped, not counted
        ",".join(r3),                                 # 19 good
        "",                                           # 20 blank
    ]
    path = _write(tmp_path / "ETHBTC-5m.csv", lines)
    res = import_file(conn, path)

    expected = [
        (3, "unparseable time 'yesterday'"),
        (5, "close is 'nan'"),
        (6, "high 0.09 < low 0.1"),
        (7, "negative volume -1"),
        (8, "duplicate time 2018-01-10 05:00:00"),
        (9, "goes backwards (line 4 was 2018-01-10 05:00:00)"),
        (11, "expected 6 columns, got 5"),
        (12, "high is 'inf'"),
        (13, "non-positive low 0"),
        (14, "open 0.5 outside [low, high]"),
        (15, "close 0.01 outside [low, high]"),
        (16, "unparseable high 'abc'"),
        (17, "not on the 5m grid"),
    ]
    assert [line for line, _ in res.rejected] == [line for line, _ in expected]
    for (line, reason), (_, want) in zip(res.rejected, expected, strict=True):
        assert want in reason, (line, reason)
    assert res.rows_read == 17
    assert res.rejected_count == 13
    assert res.rows_added == 4
    assert _stored(conn, "ETHBTC") == _expected([r0, r1, r2, r3])
    assert conn.execute("SELECT rows_read, rows_added, rows_rejected FROM imports"
                        ).fetchone() == (17, 4, 13)
    assert "13 rejected" in res.summary()


def test_reject_limit_caps_details_but_counts_all(conn: sqlite3.Connection, tmp_path: Path,
                                                  eth_rows: list[list[str]]) -> None:
    lines = [HEADER] + [",".join([r[0], r[1], r[2], r[3], r[4], "-5"]) for r in eth_rows]
    lines.append(f"{int(eth_rows[-1][0]) + STEP_5M},1,1,1,1,0")
    res = import_file(conn, _write(tmp_path / "ETHBTC-5m.csv", lines), reject_limit=3)
    assert [line for line, _ in res.rejected] == [2, 3, 4]
    assert res.rejected_count == 50
    assert res.rows_read == 51 and res.rows_added == 1  # zero volume is a real candle


def test_all_rows_rejected_is_an_error_naming_the_reasons(conn: sqlite3.Connection,
                                                          tmp_path: Path,
                                                          eth_rows: list[list[str]]) -> None:
    lines = [HEADER] + [",".join([r[0], r[1], r[3], r[2], r[4], r[5]]) for r in eth_rows[:5]
                        if r[2] != r[3]]
    path = _write(tmp_path / "ETHBTC-5m.csv", lines)
    with pytest.raises(CandleImportError) as err:
        import_file(conn, path)
    msg = str(err.value)
    assert str(path) in msg and f"all {len(lines) - 1} rows were rejected" in msg
    assert "line 2: high" in msg and "< low" in msg
    assert _no_import_recorded(conn)


def test_sub_millisecond_and_out_of_range_times_rejected(tmp_path: Path,
                                                         eth_rows: list[list[str]]) -> None:
    r = eth_rows[0]
    lines = [HEADER, ",".join([str(int(r[0]) * 1000 + 1), *r[1:6]]),
             ",".join(["12345", *r[1:6]]), ",".join(["2018-01-10T05:00:00.000500Z", *r[1:6]])]
    rows, rejected = load_candles(_write(tmp_path / "x.csv", lines))
    assert rows == []
    assert [line for line, _ in rejected] == [2, 3, 4]
    assert "whole millisecond" in rejected[0][1]
    assert "2009..2100" in rejected[1][1]
    assert "whole millisecond" in rejected[2][1]


def test_unterminated_quote_is_reported_not_silent(tmp_path: Path,
                                                   eth_rows: list[list[str]]) -> None:
    lines = [HEADER, ",".join(eth_rows[0]), '"' + ",".join(eth_rows[1]),
             *(",".join(r) for r in eth_rows[2:5])]
    rows, rejected = load_candles(_write(tmp_path / "x.csv", lines))
    assert rows == _expected(eth_rows[:1])
    assert rejected == [(3, "quoted field runs from line 3 to 6 (unterminated quote?)")]


def test_oversized_field_rejects_one_row_and_reading_goes_on(tmp_path: Path,
                                                            eth_rows: list[list[str]]) -> None:
    lines = [HEADER, ",".join(eth_rows[0]), "x" * 200_000 + ",1,1,1,1,1",
             *(",".join(r) for r in eth_rows[1:5])]
    rows, rejected = load_candles(_write(tmp_path / "x.csv", lines))
    assert rows == _expected(eth_rows[:5])
    assert [(line, reason[:13]) for line, reason in rejected] == [(3, "malformed CSV")]


def test_gaps_are_counted_not_filled(conn: sqlite3.Connection, tmp_path: Path,
                                     eth_rows: list[list[str]]) -> None:
    kept = eth_rows[:10] + eth_rows[13:20] + eth_rows[21:]  # two holes
    res = import_file(conn, _write(tmp_path / "ETHBTC-5m.csv",
                                   [HEADER] + [",".join(r) for r in kept]))
    assert res.gaps == 2
    assert _stored(conn, "ETHBTC") == _expected(kept)


# ----------------------------------------------------------------------------- whole-file errors


def _no_import_recorded(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT count(*) FROM imports").fetchone()[0] == 0 and \
        conn.execute("SELECT count(*) FROM bars").fetchone()[0] == 0


@pytest.mark.parametrize("name, content, symbol, interval, problem", [
    ("ETHBTC-5m.csv", None, None, None, "cannot read"),
    ("ETHBTC-5m.csv", b"", None, None, "empty"),
    ("ETHBTC-5m.csv", b"\xef\xbb\xbf\n\n", None, None, "empty"),
    ("ETHBTC-5m.csv", HEADER.encode() + b"\n", None, None, "empty"),
    ("ETHBTC-5m.csv", b"when,open,high,low,close,volume\n1515560100000,1,1,1,1,1\n",
     None, None, "no time column"),
    ("ETHBTC-5m.csv", b"open_time,open,high,low,close\n1515560100000,1,1,1,1\n",
     None, None, "no volume column"),
    ("ETHBTC-5m.csv", b"1515560100000,1,1,1,1,1\n", None, None, "unknown format"),
    ("ETHBTC-5m.csv", b"\x00\x01\x02binary", None, None, "unknown format"),
    ("ETHBTC-5m.csv", b"\xff\xfeopen", None, None, "unknown format"),
    ("ETHBTC-5m.csv.gz", b"\x1f\x8bnot really gzip", None, None, "corrupt gzip"),
    ("ETHBTC-5m.zip", b"PK\x03\x04broken", None, None, "corrupt zip"),
    ("candles.csv", HEADER.encode() + b"\n1515560100000,1,1,1,1,1\n", None, "5m", "--symbol"),
    ("ETHBTC.csv", HEADER.encode() + b"\n1515560100000,1,1,1,1,1\n", "ETHBTC", None,
     "--interval"),
    ("ETHBTC-5m.csv", HEADER.encode() + b"\n1515560100000,1,1,1,1,1\n", None, "7m",
     "unknown interval '7m'"),
    ("BTCUSDT-1M-2024-01.csv", HEADER.encode() + b"\n1515560100000,1,1,1,1,1\n", None, None,
     "unknown interval '1M'"),
    ("ETHBTC-5m.csv", HEADER.encode() + b"\n1515560100000,1,1,1,1,1\n", "ETH/BTC", None,
     "not letters and digits"),
])
def test_whole_file_errors(conn: sqlite3.Connection, tmp_path: Path, name: str,
                           content: bytes | None, symbol: str | None, interval: str | None,
                           problem: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CandleImportError, match=re.escape(problem)) as err:
        import_file(conn, path, symbol, interval)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)
    assert _no_import_recorded(conn)


def test_zip_with_two_files_is_refused(conn: sqlite3.Connection, tmp_path: Path) -> None:
    zp = tmp_path / "ETHBTC-5m.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.writestr("a.csv", HEADER + "\n")
        zf.writestr("b.csv", HEADER + "\n")
    with pytest.raises(CandleImportError, match=r"exactly one CSV.*a\.csv, b\.csv"):
        import_file(conn, zp)


@pytest.mark.parametrize("name, interval, problem", [
    ("UNITTESTBTC-1m.csv", "5m", "not on the 5m grid"),
    ("XRPUSDT-1h.csv", "2h", "not on the 2h grid"),
    ("ETHBTC-5m.csv", "1m", "no two consecutive candles are 1m apart (closest are 5m)"),
])
def test_wrong_interval_is_refused(conn: sqlite3.Connection, ohlcv_dir: Path, name: str,
                                   interval: str, problem: str) -> None:
    with pytest.raises(CandleImportError, match=re.escape(problem)):
        import_file(conn, ohlcv_dir / name, "X", interval)
    assert _no_import_recorded(conn)


# ----------------------------------------------------------------------------- lightness


def test_importer_does_not_pull_heavy_libraries() -> None:
    code = ("import sys, qtraderd.store.importer; "
            "print(sorted(m for m in ('pandas', 'torch', 'xgboost', 'lightgbm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"

