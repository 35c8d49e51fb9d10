"""The account checks and settings a live start makes before its first step.

Why: qtraderd's positions, stops and reconciliation assume one-way position mode (one net
position per symbol, `positionSide` BOTH); in hedge mode every order would need a
position side and a reduce-only stop could not be placed the same way, so a hedge-mode
account is refused with a message that says what to change (the daemon exits 2 with it).
Leverage and margin type are per symbol on Binance and survive restarts, but a human may
have changed them in the web UI: they are set at every start (an unchanged margin type
answers -4046 "No need to change margin type", which is success), then read back from
`positionRisk`, so what is logged and returned is what the exchange holds, not what was
asked. Multi-Assets mode is noted (it refuses ISOLATED margin, -4168: refused up front
with the config key to change).

One log line per fact, stable wording:
    account setup: position mode one-way, multi-assets off
    account setup: balances USDT 10000.00 (available 10000.00)
    account setup: BTCUSDT leverage 3x ISOLATED
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import msgspec

from qtraderd.venues.binance.rest import BinanceAPIError, RestClient
from qtraderd.venues.binance.trading import BalanceInfo, account_balances, position_risk

log = logging.getLogger("qtraderd.binance.account")

__all__ = ["AccountSetup", "AccountSetupError", "SymbolSetup", "exchange_leverage",
           "setup_account"]

POSITION_MODE = "/fapi/v1/positionSide/dual"
MULTI_ASSETS = "/fapi/v1/multiAssetsMargin"
MARGIN_TYPE = "/fapi/v1/marginType"
LEVERAGE = "/fapi/v1/leverage"
MARGIN_TYPES = ("ISOLATED", "CROSSED")
NO_NEED_TO_CHANGE_MARGIN_TYPE = -4046
# margin type kept because of open orders (-4047) or an open position (-4048)
MARGIN_TYPE_LOCKED = (-4047, -4048)


class AccountSetupError(Exception):
    """The account cannot be traded as configured; the message says what to change."""


class SymbolSetup(msgspec.Struct, frozen=True):
    symbol: str
    leverage: int
    margin_type: str  # "ISOLATED" or "CROSSED", as the exchange holds it
    max_notional: float  # the position cap at this leverage (0: not reported)


class AccountSetup(msgspec.Struct, frozen=True):
    """What the start found: position mode ("one-way"), Multi-Assets mode, the wallet's
    non-zero balances and each symbol's leverage and margin type."""

    position_mode: str
    multi_assets: bool
    balances: list[BalanceInfo]
    symbols: dict[str, SymbolSetup]


def exchange_leverage(leverage: float) -> int:
    """The integer leverage to set on the exchange for a configured (maybe fractional)
    `sizing.leverage`: rounded up, so sizing never asks for more than the margin allows."""
    if not (math.isfinite(leverage) and leverage > 0):
        raise ValueError(f"leverage must be a number > 0, got {leverage!r}")
    return max(1, math.ceil(leverage - 1e-9))


def _refused(step: str, exc: BinanceAPIError) -> AccountSetupError:
    return AccountSetupError(f"account setup: {step} refused by Binance (error {exc.code}: "
                             f"{exc.msg})")


async def _flag(rest: RestClient, path: str, key: str) -> bool:
    body = msgspec.json.decode(await rest.signed("GET", path, weight=30))
    if not isinstance(body, dict) or not isinstance(body.get(key), bool):
        raise AccountSetupError(f"account setup: GET {path}: expected {{{key!r}: true|false}}"
                                f", got {str(body)[:100]}")
    return body[key]


async def setup_account(rest: RestClient, symbols: Sequence[str], *, leverage: int,
                        margin_type: str) -> AccountSetup:
    """Check the position mode, note Multi-Assets mode, set `margin_type` ("ISOLATED" or
    "CROSSED") and `leverage` on every symbol, read balances and the settings back.
    Raises AccountSetupError (hedge mode, a refused setting, ISOLATED under Multi-Assets),
    ValueError for arguments that cannot be right, RestUnavailable."""
    margin_type = margin_type.upper()
    if margin_type not in MARGIN_TYPES:
        raise ValueError(f"margin_type must be one of {MARGIN_TYPES}, got {margin_type!r}")
    if not isinstance(leverage, int) or not 1 <= leverage <= 125:
        raise ValueError(f"leverage must be an integer 1..125, got {leverage!r}")
    try:
        hedge = await _flag(rest, POSITION_MODE, "dualSidePosition")
    except BinanceAPIError as exc:
        raise _refused("reading the position mode", exc) from None
    if hedge:
        raise AccountSetupError(
            "account setup: the account is in hedge position mode (dualSidePosition = "
            "true); qtraderd trades one-way mode only. Switch the USD-M futures account to "
            "one-way mode (web: Futures > Preferences > Position Mode > One-way; API: POST "
            "/fapi/v1/positionSide/dual dualSidePosition=false), which Binance allows only "
            "with no open positions or orders, then start again")
    try:
        multi = await _flag(rest, MULTI_ASSETS, "multiAssetsMargin")
    except BinanceAPIError as exc:
        raise _refused("reading the Multi-Assets mode", exc) from None
    key = rest.credentials.api_key[-4:] if rest.credentials is not None else "none"
    log.info("account setup: account of API key ...%s at %s", key, rest.base_url)
    log.info("account setup: position mode one-way, multi-assets %s", "on" if multi else "off")
    if multi and margin_type == "ISOLATED":
        raise AccountSetupError(
            "account setup: the account is in Multi-Assets mode, which allows CROSSED margin "
            "only; set exchange.margin_type = \"CROSSED\" or turn Multi-Assets mode off")
    for sym in symbols:
        try:
            await rest.signed("POST", MARGIN_TYPE, {"symbol": sym, "marginType": margin_type})
        except BinanceAPIError as exc:
            if exc.code in MARGIN_TYPE_LOCKED:
                log.warning("account setup: %s margin type not changed to %s: %s (%d)", sym,
                            margin_type, exc.msg, exc.code)
            elif exc.code != NO_NEED_TO_CHANGE_MARGIN_TYPE:
                raise _refused(f"setting {sym} margin type {margin_type}", exc) from None
        try:
            await rest.signed("POST", LEVERAGE, {"symbol": sym, "leverage": leverage})
        except BinanceAPIError as exc:
            raise _refused(f"setting {sym} leverage {leverage}x", exc) from None
    try:
        balances = [b for b in await account_balances(rest)
                    if b.wallet_balance or b.available_balance]
        risk = await position_risk(rest)
    except BinanceAPIError as exc:
        raise _refused("reading balances and positions", exc) from None
    log.info("account setup: balances %s", ", ".join(
        f"{b.asset} {b.wallet_balance:.2f} (available {b.available_balance:.2f})"
        for b in balances) or "none")
    found: dict[str, SymbolSetup] = {}
    for p in risk:
        if p.symbol in symbols and p.symbol not in found:
            found[p.symbol] = SymbolSetup(p.symbol, p.leverage, p.margin_type, p.max_notional)
    for sym in symbols:
        got = found.get(sym)
        if got is None:
            raise AccountSetupError(f"account setup: {sym} is missing from positionRisk; is "
                                    f"it a USD-M perpetual on this exchange?")
        log.info("account setup: %s leverage %dx %s", sym, got.leverage, got.margin_type)
    return AccountSetup(position_mode="one-way", multi_assets=multi, balances=balances,
                        symbols={s: found[s] for s in symbols})
