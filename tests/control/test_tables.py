"""Plain-text tables: alignment, number formatting, generic rendering of results."""

from __future__ import annotations

import pytest

from qtraderd.control.tables import format_kv, format_result, format_table, format_value


@pytest.mark.parametrize(("value", "text"), [
    (0.00012345, "0.00012345"),       # small crypto amounts keep their significant digits
    (0.000123456789, "0.000123457"),
    (-0.5, "-0.5"),
    (12.3456789, "12.3457"),
    (0.1 + 0.2, "0.3"),               # no float noise
    (65000.123, "65,000.12"),
    (999.9999999, "1,000.00"),        # rounding up across the 1000 boundary
    (1e-20, "1e-20"),
    (0.0, "0"),
    (float("nan"), "nan"),
    (1715000000000, "1715000000000"),  # ints (ids, epoch ms) never get separators
    (True, "true"),
    (None, "-"),
    ("12.5%", "12.5%"),               # percentages as given
    ("two\nlines", "two lines"),
    (["a", "b"], "a, b"),
    ({"k": 1}, '{"k":1}'),
])
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text


def test_table_alignment() -> None:
    rows = [{"symbol": "BTCUSDT", "qty": 0.00012345, "pnl": 1234.5, "n": 3},
            {"symbol": "ETHBTC", "qty": 1.5, "pnl": -2.25, "n": 12}]
    lines = format_table(rows, title="positions").splitlines()
    assert lines[0] == "== positions =="
    header, rule, *body = lines[1:]
    assert header.split() == ["symbol", "qty", "pnl", "n"]
    assert rule.split() == ["-" * 7, "-" * 10, "-" * 8, "--"]
    # Every line of the table has the same column boundaries.
    assert [len(r) for r in (header, rule)] == [len(rule)] * 2
    # Text left-aligned, numbers right-aligned (header too), decimal points lined up.
    assert body[0].startswith("BTCUSDT  ") and body[1].startswith("ETHBTC   ")
    assert header.endswith(" n") and body[0].endswith(" 3") and body[1].endswith("12")
    assert body[0].index(".") == body[1].index(".")  # qty column: 0.00012345 vs 1.5
    pnl_dots = [line.rindex(".") for line in body]
    assert pnl_dots[0] == pnl_dots[1]  # 1,234.50 vs -2.25


def test_columns_select_and_order_and_missing_cells_are_blank() -> None:
    rows = [{"a": 1, "b": "x", "c": 9}, {"a": 22}]
    lines = format_table(rows, columns=["b", "a"]).splitlines()
    assert lines[0].split() == ["b", "a"]
    assert lines[2].split() == ["x", "1"]
    assert lines[3].split() == ["22"] and lines[3].startswith(" ")
    assert "c" not in lines[0]


def test_empty_list_is_none() -> None:
    assert format_table([]) == "(none)"
    assert format_table([], title="trades") == "== trades ==\n(none)"
    assert format_result([]) == "(none)"
    assert format_result({"positions": []}) == "== positions ==\n(none)"


def test_kv() -> None:
    assert format_kv({"mode": "replay", "bars_processed": 10}).splitlines() == [
        "mode            replay", "bars_processed  10"]
    assert format_kv({"a": 1}, title="t") == "== t ==\na  1"


def test_result_nested_sections() -> None:
    result = {
        "mode": "paper", "equity": 10234.5678,
        "actors": [{"name": "feed", "restarts": 0}, {"name": "predictor", "restarts": 2}],
        "risk": {"state": "ACTIVE", "limits": {"daily_loss": 0.02}},
    }
    text = format_result(result)
    sections = text.split("\n\n")
    assert sections[0].splitlines() == ["mode    paper", "equity  10,234.57"]
    assert sections[1].splitlines()[0] == "== actors =="
    assert sections[1].splitlines()[4].split() == ["predictor", "2"]
    assert sections[2] == "== risk ==\nstate  ACTIVE"
    assert sections[3] == "== risk.limits ==\ndaily_loss  0.02"


def test_result_record_map_becomes_one_table() -> None:
    text = format_result({"BTCUSDT": {"pnl": 12.5, "trades": 3},
                          "ETHBTC": {"pnl": -0.00012345, "trades": 10}})
    lines = text.splitlines()
    assert lines[0].split() == ["name", "pnl", "trades"]
    assert lines[3].split() == ["ETHBTC", "-0.00012345", "10"]


def test_result_scalars_and_lists() -> None:
    assert format_result(None) == "ok"
    assert format_result("HALTED") == "HALTED"
    assert format_result(["a", 2]) == "a\n2"
    assert format_result({}) == "(none)"
