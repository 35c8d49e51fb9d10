"""Risk rule: at most N entries per symbol per UTC day (and, optionally, in total).

Why: a model that keeps firing on the same pair all day is usually reacting to one
persistent condition, not to N independent opportunities; capping the entries bounds
the fees and the correlated losses of such a day. The count is of entries the risk actor
approved today (UTC day of the daemon's clock: data time in a replay), kept by the daemon
(AccountState.entries_today), so it survives this file being edited and reloaded.

Settings, all optional ([plugins.settings.max_trades_per_day] in the config):
  limit   = 6     entries per symbol per day (0: no per-symbol cap)
  total   = 0     entries per day across all symbols (0: no cap)
  symbols = {}    per-symbol limits overriding `limit`, e.g. {ETHBTC = 2}
Denials are recorded with the order as risk action "deny", reason
"plugin:max_trades_per_day:symbol_daily_limit" (or ":daily_limit" for the total).
"""

from __future__ import annotations

from typing import Any

from qtraderd.plugins.api import AccountState, OrderView, RiskVerdict, deny

PLUGIN_API = 1
NAME = "max_trades_per_day"
VERSION = "1.0"

_limit = 6
_total = 0
_symbols: dict[str, int] = {}


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
    return value


def setup(settings: dict[str, Any]) -> None:
    global _limit, _total, _symbols
    unknown = set(settings) - {"limit", "total", "symbols"}
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)} (known: limit, total, symbols)")
    symbols = settings.get("symbols", {})
    if not isinstance(symbols, dict):
        raise ValueError(f"symbols must be a table of SYMBOL = limit, got {symbols!r}")
    _symbols = {str(k).upper(): _count(f"symbols.{k}", v) for k, v in symbols.items()}
    _limit = _count("limit", settings.get("limit", 6))
    _total = _count("total", settings.get("total", 0))


def check_order(order: OrderView, account: AccountState) -> RiskVerdict | None:
    limit = _symbols.get(order.symbol, _limit)
    if limit and account.entries_today >= limit:
        return deny("symbol_daily_limit")
    if _total and account.entries_today_total >= _total:
        return deny("daily_limit")
    return None
