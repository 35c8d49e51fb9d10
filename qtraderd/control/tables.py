"""Plain-text tables for terminals and journald.

Used by `qtraderd ctl` to show control replies and by the end-of-run summary report, so it
is deliberately generic (any JSON-like value), dependency-free and linear in the number of
cells. Nothing here knows about trading; column meaning is left to the caller.

Number formatting is chosen for money and crypto quantities:
- ints are printed as-is (ids and epoch-ms timestamps must not grow thousands separators);
- floats >= 1000 get thousands separators and 2 decimals (equity, prices);
- smaller floats keep 6 significant digits, so 0.00012345 BTC stays 0.00012345
  rather than collapsing to 0.00;
- strings (e.g. a preformatted "12.5%") are shown exactly as given.
Within a numeric column the decimal points are lined up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

NONE_TEXT = "(none)"
_GAP = "  "
_SIG_DIGITS = 6
_MAX_DECIMALS = 12


def format_value(value: Any) -> str:
    """One cell as text. Never raises: unknown objects fall back to `str()`."""
    if value is None:
        return "-"
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _format_float(value)
    if isinstance(value, str):
        # A stray newline would break the table's row structure.
        return value.replace("\r", " ").replace("\n", " ")
    if isinstance(value, (list, tuple, set, frozenset)) and all(_is_scalar(v) for v in value):
        return ", ".join(format_value(v) for v in value)
    try:
        return json.dumps(value, separators=(",", ":"), default=str, sort_keys=False)
    except (TypeError, ValueError):
        return str(value)


def _format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    mag = abs(x)
    if mag >= 1e15:
        return f"{x:.6g}"
    decimals = _SIG_DIGITS - 1 - math.floor(math.log10(mag))
    if mag >= 1000 or abs(round(x, max(decimals, 0))) >= 1000:  # 999.9999999 rounds up
        return f"{x:,.2f}"
    if decimals > _MAX_DECIMALS:
        return f"{x:.{_SIG_DIGITS}g}"
    text = f"{x:.{max(decimals, 0)}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _columns_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Union of keys in order of first appearance (dicts preserve insertion order)."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _align_decimals(cells: list[str]) -> list[str]:
    """Pad numeric cells on the right so their decimal points share a column."""
    fracs = [len(c) - c.index(".") if "." in c and "e" not in c else 0 for c in cells]
    widest = max(fracs, default=0)
    if widest == 0:
        return cells
    return [c + " " * (widest - f) for c, f in zip(cells, fracs, strict=True)]


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None, *,
                 title: str | None = None) -> str:
    """Aligned table of `rows`; `columns` picks and orders them (default: every key seen).

    A column whose non-empty cells are all numbers is right-aligned (header included),
    everything else is left-aligned. Missing keys show as blank cells. An empty `rows`
    renders as "(none)" under the title.
    """
    head = [_title_line(title)] if title else []
    if not rows:
        return "\n".join([*head, NONE_TEXT])
    cols = list(columns) if columns is not None else _columns_of(rows)
    text_cols: list[list[str]] = []
    numeric: list[bool] = []
    for col in cols:
        values = [row.get(col) for row in rows]
        present = [v for v in values if v is not None]
        is_num = bool(present) and all(_is_number(v) for v in present)
        cells = ["" if v is None and col not in row else format_value(v)
                 for v, row in zip(values, rows, strict=True)]
        if is_num:
            cells = _align_decimals(cells)
        text_cols.append(cells)
        numeric.append(is_num)
    widths = [max(len(str(col)), *(len(c) for c in cells))
              for col, cells in zip(cols, text_cols, strict=True)]

    def line(cells: Iterable[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w)
                 for c, w, num in zip(cells, widths, numeric, strict=True)]
        return _GAP.join(parts).rstrip()

    out = [*head, line(str(c) for c in cols), _GAP.join("-" * w for w in widths)]
    out.extend(line(row_cells) for row_cells in zip(*text_cols, strict=True))
    return "\n".join(out)


def format_kv(d: Mapping[str, Any], title: str | None = None) -> str:
    """Two-column key/value listing (keys left, values left) — status-style output."""
    head = [_title_line(title)] if title else []
    if not d:
        return "\n".join([*head, NONE_TEXT])
    width = max(len(str(k)) for k in d)
    body = [f"{str(k).ljust(width)}{_GAP}{format_value(v)}".rstrip() for k, v in d.items()]
    return "\n".join([*head, *body])


def _title_line(title: str) -> str:
    return f"== {title} =="


def _is_flat_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        _is_scalar(v) or _is_scalar_list(v) for v in value.values())


def _is_scalar_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(_is_scalar(v) for v in value)


def _is_record_map(value: Mapping[str, Any]) -> bool:
    """{name: {same keys...}, ...}: e.g. PnL per symbol — reads best as one table."""
    if len(value) < 2 or not all(_is_flat_dict(v) and v for v in value.values()):
        return False
    keysets = {tuple(v) for v in value.values()}
    return len(keysets) == 1


def format_result(result: Any) -> str:
    """Render any JSON-like control result for a human.

    - dict of scalars -> key/value table;
    - list of dicts -> table; empty list -> "(none)"; list of scalars -> one per line;
    - dict with nested lists/dicts -> its scalars first, then one titled section per nested
      value (recursively; nested titles are dotted paths such as "risk.limits");
    - {name: {same keys}} with two or more entries -> one table with a leading "name" column.
    """
    return "\n".join(_render(result, None))


def _render(value: Any, title: str | None) -> list[str]:
    if value is None:
        return [_title_line(title), "ok"] if title else ["ok"]
    if _is_scalar(value):
        text = format_value(value)
        return [_title_line(title), text] if title else [text]
    if isinstance(value, Mapping):
        return _render_mapping(value, title)
    if isinstance(value, (list, tuple)):
        return _render_list(value, title)
    return _render(format_value(value), title)


def _render_list(items: list[Any] | tuple[Any, ...], title: str | None) -> list[str]:
    head = [_title_line(title)] if title else []
    if not items:
        return [*head, NONE_TEXT]
    if all(isinstance(v, Mapping) for v in items):
        return format_table(list(items), title=title).split("\n")
    if all(_is_scalar(v) for v in items):
        return [*head, *(format_value(v) for v in items)]
    # Mixed content: render each element as its own numbered section.
    out: list[str] = head[:]
    for i, item in enumerate(items):
        if out:
            out.append("")
        out.extend(_render(item, f"{title}[{i}]" if title else f"[{i}]"))
    return out


def _render_mapping(d: Mapping[str, Any], title: str | None) -> list[str]:
    if not d:
        return [_title_line(title), NONE_TEXT] if title else [NONE_TEXT]
    if _is_record_map(d):
        rows = [{"name": k, **v} for k, v in d.items()]
        return format_table(rows, title=title).split("\n")
    scalars = {k: v for k, v in d.items() if _is_scalar(v) or _is_scalar_list(v)}
    nested = {k: v for k, v in d.items() if k not in scalars}
    out: list[str] = []
    if scalars:
        out.extend(format_kv(scalars, title).split("\n"))
    for key, value in nested.items():
        if out:
            out.append("")
        out.extend(_render(value, f"{title}.{key}" if title else str(key)))
    return out
