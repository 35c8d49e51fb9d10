"""The `[exchange]` section's hosts and its cross-key checks (kept apart from config.py,
which declares the section with the others)."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from qtraderd.core.config_values import ConfigError

# Binance USD-M hosts per `exchange.environment` (REST root, WebSocket root). Testnet is
# Binance's "demo trading" environment: its general-info page names demo-fapi / demo-fstream
# (the older testnet.binancefuture.com / fstream.binancefuture.com still answer, 2026).
EXCHANGE_URLS = {
    "production": ("https://fapi.binance.com", "wss://fstream.binance.com"),
    "testnet": ("https://demo-fapi.binance.com", "wss://demo-fstream.binance.com"),
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_exchange(cfg: Any) -> None:  # a core.config.Config (not imported: no circle)
    """[exchange]: production needs its explicit key; custom needs both URLs; the fixed
    environments take none; a real exchange's data runs at wall time (feed.speed = 1)."""
    ex = cfg.exchange
    if ex.environment == "production" and not ex.allow_production:
        raise ConfigError("config key 'exchange.environment': \"production\" trades and "
                          "reads the real exchange; set exchange.allow_production = true "
                          "to confirm it (or use \"testnet\" / \"custom\")")
    for key, scheme in (("base_url", ("http://", "https://")), ("ws_url", ("ws://", "wss://"))):
        value = getattr(ex, key)
        if ex.environment != "custom":
            if value:
                raise ConfigError(
                    f"config key 'exchange.{key}': set only with exchange.environment = "
                    f"\"custom\" ({ex.environment!r} uses "
                    f"{EXCHANGE_URLS[ex.environment][0 if key == 'base_url' else 1]}), "
                    f"got {value!r}")
            continue
        if not value.startswith(scheme) or not _url_host(value):
            raise ConfigError(f"config key 'exchange.{key}': expected a URL starting with "
                              f"{' or '.join(scheme)} (required with exchange.environment = "
                              f"\"custom\"), got {value!r}")
    if cfg.feed.source == "binance" and cfg.feed.speed != 1.0 \
            and _url_host(ex.rest_url) not in LOOPBACK_HOSTS:
        speed = "max" if math.isinf(cfg.feed.speed) else f"{cfg.feed.speed:g}"
        raise ConfigError(
            f"config key 'feed.speed': with feed.source = \"binance\" on {ex.rest_url} data "
            f"time is wall time; expected 1, got {speed} (only a loopback exchange, such as "
            "`qtraderd exchange-sim`, runs at another speed)")


def _url_host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""
