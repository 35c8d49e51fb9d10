"""Loading candle files (CSV, Binance public-data klines, .gz, .zip) into the `bars` table.

The store is what replays and training read, so a bad candle stored here poisons every
later run. Hence the rules: a row that is wrong in any way is rejected with its line number
and a reason, never repaired; missing candles stay missing (they are counted as gaps, not
filled); and whole-file mistakes (wrong interval, unknown layout) raise CandleImportError
before anything is written. Parsing uses the csv module only: the daemon process must stay
light, so no pandas here.

Files are streamed, never read or decompressed whole: a 1 MB gzip file can hold gigabytes
of text (a "gzip bomb"), and a CSV line can be any length. Memory is bounded by the good
candles kept (48 bytes each, in arrays) and one line of at most MAX_LINE_CHARS; a file past
MAX_LINES lines is refused as a whole.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import math
import re
import sqlite3
import zipfile
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

from qtraderd.core.clock import wall_iso
from qtraderd.core.config import INTERVAL_MS
from qtraderd.store.db import Transaction

Candle = tuple[int, float, float, float, float, float]  # open_time ms, o, h, l, c, v

# Binance public-data klines: open_time, o, h, l, c, v, close_time, quote_volume, count,
# taker_buy_volume, taker_buy_quote_volume, ignore -- no header row.
BINANCE_COLUMNS = 12
# Header names are compared after lower-casing and dropping spaces, "_" and "-", so
# "Open time", "open_time" and "OPEN-TIME" are one name. Earlier entries win.
TIME_NAMES = ("opentime", "timestamp", "datetime", "date", "time", "unixtimestamp", "unix")
VALUE_NAMES = ("open", "high", "low", "close", "volume")
# Anything outside this window is a unit mix-up or junk, not a crypto candle.
MIN_TIME_MS = 1_230_768_000_000  # 2009-01-01
MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01
# A line longer than this is not a candle (the longest real kline row is ~150 characters);
# reading stops there instead of buffering a runaway line. Above the csv module's own
# field limit (131,072), so one oversized field is still a rejected row, not a dead file.
MAX_LINE_CHARS = 1 << 20
# 38 years of 1m candles; a longer file is a mistake or a bomb: refused, split it.
MAX_LINES = 20_000_000
# How many rejected rows a whole-file refusal quotes.
QUOTED_REJECTS = 5

_NAME_RE = re.compile(
    r"^(?P<symbol>[A-Za-z0-9]+)-(?P<interval>\d+[smhdwM])(?:-\d{4}-\d{2}(?:-\d{2})?)?$"
)
_SYMBOL_RE = re.compile(r"^[A-Z0-9]+$")


class CandleImportError(ValueError):
    """The file as a whole cannot be imported; the message names the file and the problem."""


@dataclass
class ImportResult:
    """What one import did, for the CLI to print and for tests to check."""

    path: Path
    symbol: str
    interval: str
    rows_read: int
    rows_added: int
    rows_existing: int  # accepted rows the store already had (INSERT OR IGNORE kept the old)
    rejected: list[tuple[int, str]]  # (1-based line, reason), at most reject_limit of them
    first_ts: int | None
    last_ts: int | None
    gaps: int
    rejected_count: int  # all rejected rows, even those past reject_limit

    def summary(self) -> str:
        span = "no candles"
        if self.first_ts is not None and self.last_ts is not None:
            span = f"{_iso(self.first_ts, '%Y-%m-%d')} .. {_iso(self.last_ts, '%Y-%m-%d')}"
        return (
            f"{self.symbol} {self.interval}: {self.rows_read} read, {self.rows_added} added, "
            f"{self.rows_existing} already stored, {self.rejected_count} rejected, "
            f"{self.gaps} gaps ({span})"
        )


@dataclass
class _Parsed:
    # Good candles in file order, kept compact (8 + 40 bytes each): times strictly rising.
    times: array = field(default_factory=lambda: array("q"))
    values: array = field(default_factory=lambda: array("d"))  # o, h, l, c, v per candle
    rejected: list[tuple[int, str]] = field(default_factory=list)
    rejected_count: int = 0
    off_grid: int = 0
    rows_read: int = 0

    def candles(self) -> Iterator[Candle]:
        v = self.values
        for i, t in enumerate(self.times):
            j = 5 * i
            yield (t, v[j], v[j + 1], v[j + 2], v[j + 3], v[j + 4])


def infer_symbol_interval(path: str | Path) -> tuple[str | None, str | None]:
    """Read "ETHBTC-5m.csv", "ETHBTC-5m-2018-01.zip", "XRPUSDT-1h-2021-11-17.csv.gz" names.

    Returns (None, None) when the name does not follow that pattern: guessing a symbol
    from an arbitrary name ("data.csv" -> DATA) would file candles under a wrong market.
    The interval is returned as written ("1M" is Binance's month, not a minute); the
    caller checks that it is one we support.
    """
    name = Path(path).name
    for ext in (".zip", ".gz", ".csv"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    m = _NAME_RE.match(name)
    if not m:
        return None, None
    return m["symbol"].upper(), m["interval"]


def load_candles(path: str | Path, interval_ms: int | None = None
                 ) -> tuple[list[Candle], list[tuple[int, str]]]:
    """Parse a candle file without touching the store: (accepted rows, rejected rows).

    With interval_ms, rows whose open time is off that interval's grid are rejected too.
    """
    p = Path(path)
    with _open_lines(p) as lines:
        parsed = _parse(p, lines, interval_ms, reject_limit=None)
    return list(parsed.candles()), parsed.rejected


def import_file(conn: sqlite3.Connection, path: str | Path, symbol: str | None = None,
                interval: str | None = None, *, reject_limit: int = 1000) -> ImportResult:
    """Parse one file and INSERT OR IGNORE its good candles into `bars`, in one transaction.

    Explicit symbol/interval win over what the file name says. Existing bars are never
    overwritten, so re-importing a file is harmless and reports every row as existing.
    """
    path = Path(path)
    inferred_symbol, inferred_interval = infer_symbol_interval(path)
    symbol = (symbol or inferred_symbol or "").strip().upper()
    interval = (interval or inferred_interval or "").strip()
    for what, value in (("symbol", symbol), ("interval", interval)):
        if not value:
            raise CandleImportError(f"{path}: cannot tell the {what} from the file name "
                                    f"(expected a name like ETHBTC-5m.csv); pass --{what}")
    if not _SYMBOL_RE.match(symbol):
        raise CandleImportError(f"{path}: symbol {symbol!r} is not letters and digits")
    if interval not in INTERVAL_MS:
        raise CandleImportError(
            f"{path}: unknown interval {interval!r} (known: {', '.join(INTERVAL_MS)})"
        )
    step = INTERVAL_MS[interval]
    with _open_lines(path) as lines:
        parsed = _parse(path, lines, step, reject_limit=reject_limit)
    _check_interval_fits(path, parsed, interval, step)
    times = parsed.times
    if not times:
        # Nothing would be stored: an error, not a result the operator may overlook.
        quoted = "; ".join(f"line {line}: {why}"
                           for line, why in parsed.rejected[:QUOTED_REJECTS])
        raise CandleImportError(
            f"{path}: no candles imported: all {parsed.rejected_count} rows were rejected "
            f"(first: {quoted})")
    digest = _sha256(path)
    with Transaction(conn):
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO bars (symbol, interval, open_time, open, high, low, close, "
            "volume) VALUES (?,?,?,?,?,?,?,?)",
            ((symbol, interval, *r) for r in parsed.candles()),
        )
        added = conn.total_changes - before
        conn.execute(
            "INSERT INTO imports (at, path, sha256, symbol, interval, rows_read, rows_added, "
            "rows_rejected) VALUES (?,?,?,?,?,?,?,?)",
            (wall_iso(), str(path.resolve()), digest, symbol, interval, parsed.rows_read,
             added, parsed.rejected_count),
        )
    return ImportResult(
        path=path, symbol=symbol, interval=interval, rows_read=parsed.rows_read,
        rows_added=added, rows_existing=len(times) - added, rejected=parsed.rejected,
        first_ts=times[0], last_ts=times[-1],
        gaps=sum(1 for a, b in pairwise(times) if b - a > step),
        rejected_count=parsed.rejected_count,
    )


def _sha256(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise CandleImportError(f"{path}: cannot read: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _open_lines(path: Path) -> Iterator[Iterator[str]]:
    """The file's text lines, decompressed on the fly by content, not by extension
    (downloads get renamed): plain, gzip or a one-member zip."""
    with contextlib.ExitStack() as stack:
        try:
            raw = stack.enter_context(open(path, "rb"))
            magic = raw.read(4)
            raw.seek(0)
        except OSError as exc:
            raise CandleImportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        binary: io.BufferedIOBase | zipfile.ZipExtFile | gzip.GzipFile = raw
        kind = "plain"
        if magic[:2] == b"\x1f\x8b":
            binary, kind = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")), "gzip"
        elif magic == b"PK\x03\x04":
            binary, kind = _zip_member(path, raw, stack), "zip"
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")  # type: ignore[arg-type]
        yield _lines(path, text, kind)


def _zip_member(path: Path, raw: io.BufferedIOBase, stack: contextlib.ExitStack
                ) -> zipfile.ZipExtFile:
    """Binance's .zip holds exactly one CSV; anything else is ambiguous, so refuse it."""
    try:
        zf = stack.enter_context(zipfile.ZipFile(raw))
        members = [i for i in zf.infolist() if not i.is_dir()]
        if len(members) != 1:
            names = ", ".join(i.filename for i in members) or "nothing"
            raise CandleImportError(
                f"{path}: zip should hold exactly one CSV file, it holds {names}"
            )
        return stack.enter_context(zf.open(members[0]))
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise CandleImportError(f"{path}: corrupt zip file: {exc}") from exc


def _lines(path: Path, text: io.TextIOWrapper, kind: str) -> Iterator[str]:
    """Lines of at most MAX_LINE_CHARS, at most MAX_LINES of them; decoding and
    decompression errors become CandleImportError naming the file."""
    n = head = 0
    while True:
        try:
            line = text.readline(MAX_LINE_CHARS + 1)
        except UnicodeDecodeError as exc:
            raise CandleImportError(
                f"{path}: unknown format (not UTF-8 text: {exc})") from exc
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            raise CandleImportError(f"{path}: corrupt {kind} file: {exc}") from exc
        if not line:
            return
        n += 1
        if len(line) > MAX_LINE_CHARS:
            raise CandleImportError(
                f"{path}: line {n} is longer than {MAX_LINE_CHARS:,} characters: not a "
                f"candle file")
        if n > MAX_LINES:
            raise CandleImportError(
                f"{path}: more than {MAX_LINES:,} lines: too large to import in one go "
                f"(split it, e.g. one file per month)")
        if head < 4096:  # NULs near the start: a binary file, not text
            if "\x00" in line:
                raise CandleImportError(
                    f"{path}: unknown format (binary data, not a CSV file)")
            head += len(line)
        yield line


def _layout(path: Path, first: list[str]) -> tuple[bool, int, list[int]]:
    """(has_header, column count, [time, open, high, low, close, volume] indexes)."""
    if _looks_like_time(first[0]):
        if len(first) != BINANCE_COLUMNS:
            raise CandleImportError(
                f"{path}: unknown format: no header row and {len(first)} columns (a headerless "
                f"file must be a Binance kline CSV with {BINANCE_COLUMNS}); add a header "
                f"row like open_time,open,high,low,close,volume"
            )
        return False, BINANCE_COLUMNS, [0, 1, 2, 3, 4, 5]
    names = [re.sub(r"[\s_\-]+", "", c.lower()) for c in first]
    time_idx = next((names.index(n) for n in TIME_NAMES if n in names), None)
    if time_idx is None:
        raise CandleImportError(
            f"{path}: no time column in header {first!r} (expected one named "
            f"open_time, timestamp, date or time)"
        )
    missing = [n for n in VALUE_NAMES if n not in names]
    if missing:
        raise CandleImportError(f"{path}: header {first!r} has no {', '.join(missing)} column")
    return True, len(first), [time_idx, *(names.index(n) for n in VALUE_NAMES)]


def _parse_time(cell: str) -> int:
    """Epoch s/ms/µs/ns (told apart by magnitude, per value) or ISO-8601 -> epoch ms."""
    s = cell.strip()
    if s.isascii() and s.isdigit():  # the common case: a plain epoch integer
        ms = _scale_epoch(cell, int(s))
    else:
        try:
            x = float(s)
        except ValueError:
            ms = _parse_iso(cell, s)
        else:
            if not (math.isfinite(x) and x > 0):
                raise ValueError(f"unparseable time {cell!r}") from None
            if x.is_integer():  # "1515560100000.0", as some exporters write it
                ms = _scale_epoch(cell, int(x))
            elif x < 1e11 and abs(x * 1000 - round(x * 1000)) < 1e-3:
                ms = round(x * 1000)  # fractional seconds, e.g. "1515560100.5"
            else:
                raise ValueError(f"time {cell!r} is not a whole millisecond") from None
    if not MIN_TIME_MS <= ms < MAX_TIME_MS:
        raise ValueError(f"time {cell!r} is outside 2009..2100 (wrong unit?)")
    return ms


def _scale_epoch(cell: str, n: int) -> int:
    """Integer epoch in s (< 1e11), ms (< 1e14), µs (< 1e17) or ns -> ms, exactly."""
    if n <= 0:
        raise ValueError(f"time {cell!r} is not a positive epoch time")
    if n < 10**11:
        return n * 1000
    if n < 10**14:
        return n
    ms, rest = divmod(n, 1000 if n < 10**17 else 1_000_000)
    if rest:
        raise ValueError(f"time {cell!r} is not a whole millisecond")
    return ms


def _parse_iso(cell: str, s: str) -> int:
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"unparseable time {cell!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # naive times are UTC, as exchanges write them
    if dt.microsecond % 1000:
        raise ValueError(f"time {cell!r} is not a whole millisecond")
    return int(dt.timestamp()) * 1000 + dt.microsecond // 1000


def _looks_like_time(cell: str) -> bool:
    """Whether a first-row cell is data (a number or an ISO time) rather than a header."""
    for parse in (float, datetime.fromisoformat):
        try:
            parse(cell.strip())
            return True
        except ValueError:
            pass
    return False


def _bad_values(cells: list[str], o: float, h: float, low: float, c: float, v: float) -> str:
    """Why a candle that failed the happy-path check is impossible (first problem found)."""
    for name, x, raw in zip(VALUE_NAMES, (o, h, low, c, v), cells, strict=True):
        if not math.isfinite(x):
            return f"{name} is {raw.strip()!r}"
    for name, x, raw in zip(VALUE_NAMES[:4], (o, h, low, c), cells, strict=False):
        if x <= 0:
            return f"non-positive {name} {raw.strip()}"
    if h < low:
        return f"high {cells[1].strip()} < low {cells[2].strip()}"
    if not low <= o <= h:
        return f"open {cells[0].strip()} outside [low, high]"
    if not low <= c <= h:
        return f"close {cells[3].strip()} outside [low, high]"
    return f"negative volume {cells[4].strip()}"


def _parse(path: Path, lines: Iterator[str], interval_ms: int | None,
           reject_limit: int | None) -> _Parsed:
    """Check every row; keep the good ones in file order, which must be strictly rising."""
    first_line = next(lines, "")
    delimiter = next((d for d in ",;\t" if d in first_line[:4096]), ",")
    reader = csv.reader(_chain(first_line, lines), delimiter=delimiter)
    try:
        first = next(r for r in reader if any(c.strip() for c in r))
    except StopIteration:
        raise CandleImportError(f"{path}: file is empty") from None
    except csv.Error as exc:
        raise CandleImportError(f"{path}: unknown format: {exc}") from exc
    has_header, ncols, (ti, oi, hi, li, ci, vi) = _layout(path, first)
    out = _Parsed()
    times, values = out.times, out.values
    last_t, last_line = -1, 0

    def reject(line: int, reason: str) -> None:
        out.rejected_count += 1
        if reject_limit is None or len(out.rejected) < reject_limit:
            out.rejected.append((line, reason))

    def take(row: list[str], line: int, start: int) -> None:
        nonlocal last_t, last_line
        if not row or (len(row) == 1 and not row[0].strip()):
            return  # blank lines carry no candle; not counted as read
        out.rows_read += 1
        if line > start:  # a quoted field ran over line ends and swallowed those rows
            return reject(start, f"quoted field runs from line {start} to {line} "
                                 f"(unterminated quote?)")
        if len(row) != ncols:
            return reject(line, f"expected {ncols} columns, got {len(row)}")
        try:
            t = _parse_time(row[ti])
        except ValueError as exc:
            return reject(line, str(exc))
        cells = [row[oi], row[hi], row[li], row[ci], row[vi]]
        try:
            o, h, low, c, v = map(float, cells)
        except ValueError:
            return reject(line, _unparseable(cells))
        # NaN fails every comparison, so this one chain is the whole happy path.
        if not (0 < low <= o <= h and low <= c <= h and v >= 0
                and math.isfinite(h) and math.isfinite(v)):
            return reject(line, _bad_values(cells, o, h, low, c, v))
        if interval_ms is not None and t % interval_ms:
            out.off_grid += 1
            return reject(line, f"time {_iso(t)} is not on the {_fmt_ms(interval_ms)} grid")
        if t <= last_t:  # kept times rise strictly: a binary search finds an equal one
            i = bisect_left(times, t)
            if i < len(times) and times[i] == t:
                return reject(line, f"duplicate time {_iso(t)}")
            return reject(line, f"time {_iso(t)} goes backwards (line {last_line} was "
                                f"{_iso(last_t)})")
        last_t, last_line = t, line
        times.append(t)
        values.extend((o, h, low, c, v))

    if not has_header:
        take(first, reader.line_num, reader.line_num)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a runaway field; the reader resumes on the next line
            out.rows_read += 1
            reject(start, f"malformed CSV: {exc}")
            continue
        take(row, reader.line_num, start)
    if out.rows_read == 0:
        raise CandleImportError(f"{path}: file is empty (a header row but no candles)")
    return out


def _check_interval_fits(path: Path, parsed: _Parsed, interval: str, step: int) -> None:
    """Refuse files whose spacing contradicts the interval, before writing anything.

    A 1m file imported as 5m would otherwise store every fifth 1m candle as a 5m bar, and
    a 5m file imported as 1m would fill the 1m series with 5m candles that a later real
    1m import could never replace (INSERT OR IGNORE keeps the first).
    """
    if parsed.off_grid and parsed.off_grid >= len(parsed.times):
        raise CandleImportError(
            f"{path}: {parsed.off_grid} of {parsed.rows_read} candles are not on the "
            f"{interval} grid; is {interval} the right interval for this file?"
        )
    times = parsed.times
    if len(times) >= 3:
        spacing = min(b - a for a, b in pairwise(times))
        if spacing != step:
            raise CandleImportError(
                f"{path}: no two consecutive candles are {interval} apart (closest are "
                f"{_fmt_ms(spacing)}); is {interval} the right interval for this file?"
            )


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    if first:
        yield first
    yield from rest


def _unparseable(cells: list[str]) -> str:
    for name, raw in zip(VALUE_NAMES, cells, strict=True):
        try:
            float(raw)
        except ValueError:
            return f"unparseable {name} {raw!r}"
    raise AssertionError("called with parseable cells")


def _iso(ms: int, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime(fmt)


def _fmt_ms(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms / 1000:g}s"
