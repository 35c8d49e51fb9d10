"""The simulator's signed account side: API-key and HMAC signature checks, the account's
in-memory state (balances, position mode, per-symbol leverage and margin type, positions)
and the account endpoints in Binance USD-M's shapes (http/account_info_v2.json,
balance.json, position_risk.json, open_algo_orders.json).

Why a separate module: order matching (later work) changes the same `Account` (positions,
balances, the order book `/sim/state` shows) and must not grow `rest.py` past reading.

Signed requests are checked like Binance's: `X-MBX-APIKEY` (-2014 missing, -2015 wrong,
HTTP 401), `signature` = hex HMAC-SHA256(secret, query string + body without the
`signature` parameter) (-1022), `timestamp` inside `recvWindow` (-1021). Timestamps are
sim time (what `/fapi/v1/time` answers); the window is `recvWindow` ms of *wall* time,
i.e. `recvWindow * speed` sim ms, so a client stamping with the synced sim clock has the
same latency budget at any --speed as it has on Binance (at speed 1 it is exactly
Binance's rule).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from qtraderd.venues.sim.candles import Candle, Market, Series, SimClock, SimInputError, partial
from qtraderd.venues.sim.rest import ApiError, Rest
from qtraderd.venues.sim.transport import Request, Response

DEFAULT_BALANCES = {"USDT": 10_000.0}
DEFAULT_LEVERAGE = 20
MAX_LEVERAGE = 125
DEFAULT_RECV_WINDOW = 5000
MAX_RECV_WINDOW = 60_000
AHEAD_TOLERANCE_MS = 1000  # Binance accepts timestamps up to 1 s ahead of its clock
MAINT_MARGIN_RATE = 0.004
ACCOUNT_ALIAS = "SimA"
# (max leverage, notional cap) brackets, like Binance's BTCUSDT tiers (simplified)
BRACKETS = ((125, 50_000), (100, 250_000), (50, 3_000_000), (20, 15_000_000),
            (10, 20_000_000), (5, 50_000_000), (4, 80_000_000), (3, 150_000_000),
            (2, 300_000_000), (1, 500_000_000))
OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED")

Params = dict[str, str]
SignedHandler = Callable[[Request, Params], Awaitable[Response]]


def new_key_pair() -> tuple[str, str]:
    """A random API key and secret (64 alphanumerics each, like Binance's)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return ("".join(secrets.choice(alphabet) for _ in range(64)),
            "".join(secrets.choice(alphabet) for _ in range(64)))


def parse_balances(text: str) -> dict[str, float]:
    """`USDT=10000,BNB=1` -> {"USDT": 10000.0, "BNB": 1.0}; SimInputError names the bad
    part."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        asset, sep, amount = part.partition("=")
        asset = asset.strip().upper()
        try:
            value = float(amount)
        except ValueError:
            value = float("nan")
        if not sep or not asset.isalnum() or not 0 <= value < float("inf"):
            raise SimInputError(f"--balance: expected ASSET=AMOUNT (amount >= 0), got "
                                f"{part!r}")
        out[asset] = value
    if not out:
        raise SimInputError(f"--balance: expected ASSET=AMOUNT, got {text!r}")
    return out


def max_notional(leverage: int) -> int:
    """The notional cap at this leverage: the widest bracket that still allows it."""
    return max(cap for lev, cap in BRACKETS if lev >= leverage)


def sign(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def _without_signature(raw: str) -> tuple[str, str | None]:
    """The raw parameter string minus its `signature=...` part, and that signature."""
    kept, sig = [], None
    for part in raw.split("&") if raw else []:
        if part.startswith("signature="):
            sig = part[len("signature="):]
        else:
            kept.append(part)
    return "&".join(kept), sig


@dataclass
class Auth:
    """The key pair signed requests must carry, checked against the sim clock."""

    api_key: str
    api_secret: str
    clock: SimClock
    speed: float = 1.0

    def verify(self, req: Request) -> Params:
        """The request's parameters (query, then form body) if it is signed right;
        ApiError otherwise."""
        key = req.headers.get("x-mbx-apikey", "")
        if not key:
            raise ApiError(401, -2014, "API-key format invalid.")
        if not hmac.compare_digest(key, self.api_key):
            raise ApiError(401, -2015, f"Invalid API-key, IP, or permissions for action, "
                                       f"request ip: {req.client}")
        body = req.body.decode("latin-1") if req.body else ""
        query, sig_q = _without_signature(req.raw_query)
        form, sig_b = _without_signature(body)
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(form, keep_blank_values=True))
        signature = sig_q or sig_b
        if not signature:
            raise _missing("signature")
        if not hmac.compare_digest(signature.lower(), sign(self.api_secret, query + form)):
            raise ApiError(400, -1022, "Signature for this request is not valid.")
        stamp = _int(params, "timestamp", None)
        if stamp is None:
            raise _missing("timestamp")
        window = _int(params, "recvWindow", DEFAULT_RECV_WINDOW)
        if window > MAX_RECV_WINDOW:
            raise ApiError(400, -1131, "recvWindow must be less than 60000")
        now = self.clock.now_ms()
        if stamp - now > AHEAD_TOLERANCE_MS * self.speed:
            raise ApiError(400, -1021, "Timestamp for this request was 1000ms ahead of the "
                                       "server's time.")
        if now - stamp > window * self.speed:
            raise ApiError(400, -1021, "Timestamp for this request is outside of the "
                                       "recvWindow.")
        return params


def _missing(name: str) -> ApiError:
    return ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                                f"or malformed.")


def _int(params: Params, name: str, default: int | None) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; legal "
                                   f"range is '^[0-9]{{1,20}}$'.")
    return int(text)


@dataclass
class SymbolSettings:
    leverage: int = DEFAULT_LEVERAGE
    margin_type: str = "CROSSED"  # or ISOLATED


@dataclass
class Position:
    """One position (positionSide BOTH in one-way mode). amount < 0 is short."""

    symbol: str
    side: str = "BOTH"
    amount: float = 0.0
    entry_price: float = 0.0
    update_time: int = 0


@dataclass
class Account:
    """One simulated account, in memory. Order matching (later) appends to `orders` /
    `algo_orders` (records as `/sim/state` shows them; open ones carry the
    `order_response.json` / `open_algo_orders.json` payload under "payload") and moves
    `positions` and `balances`."""

    market: Market
    clock: SimClock
    balances: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BALANCES))
    dual_side: bool = False
    multi_assets: bool = False  # Multi-Assets mode (GET /fapi/v1/multiAssetsMargin)
    settings: dict[str, SymbolSettings] = field(default_factory=dict)
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)
    orders: list[dict[str, object]] = field(default_factory=list)
    algo_orders: list[dict[str, object]] = field(default_factory=list)
    balance_time: int = 0
    # more parts of `/sim/state` by name (the server adds "faults" and "funding")
    extra_state: dict[str, Callable[[], object]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for sym in self.market.series:
            self.settings.setdefault(sym, SymbolSettings())
        self.balance_time = self.balance_time or self.market.start_ms

    # ------------------------------------------------------------------- lookups

    def series(self, symbol: str) -> Series:
        s = self.market.series.get(symbol)
        if s is None:
            raise ApiError(400, -1121, "Invalid symbol.")
        return s

    def current_candle(self, symbol: str, now_ms: int) -> Candle | None:
        """The candle open at `now_ms` (None before the data)."""
        s = self.market.series[symbol]
        j = s.between(-(2**62), now_ms)[1]
        return s.candles[j - 1] if j else None

    def mark_price(self, symbol: str) -> float:
        """Last price at sim time (mark = last close: the simulator has no mark series)."""
        s = self.market.series[symbol]
        now = self.clock.now_ms()
        j = s.between(-(2**62), now)[1]
        if j == 0:
            return s.candles[0][1]
        c = s.candles[j - 1]
        return partial(c, (now - c[0]) / self.market.interval_ms)[4]

    def open_positions(self) -> list[Position]:
        return [p for p in self.positions.values() if p.amount != 0]

    def position(self, symbol: str, side: str) -> Position:
        return self.positions.get((symbol, side)) or Position(symbol, side)

    def sides(self) -> tuple[str, ...]:
        return ("LONG", "SHORT") if self.dual_side else ("BOTH",)

    def open_orders(self, symbol: str | None = None) -> list[dict[str, object]]:
        return [o["payload"] for o in self.orders  # type: ignore[misc]
                if o.get("status") in OPEN_STATUSES and "payload" in o
                and (symbol is None or o.get("symbol") == symbol)]

    def open_algo_orders(self, symbol: str | None = None) -> list[dict[str, object]]:
        return [o["payload"] for o in self.algo_orders  # type: ignore[misc]
                if o.get("status") == "NEW" and "payload" in o
                and (symbol is None or o.get("symbol") == symbol)]

    # ------------------------------------------------------------------- figures

    def _figures(self, p: Position) -> dict[str, float]:
        mark = self.mark_price(p.symbol)
        lev = self.settings[p.symbol].leverage
        notional = p.amount * mark
        return {"mark": mark, "notional": notional,
                "unrealized": p.amount * (mark - p.entry_price) if p.amount else 0.0,
                "initial": abs(notional) / lev, "maint": abs(notional) * MAINT_MARGIN_RATE}

    def available(self, asset: str) -> float:
        """Balance free for new margin in `asset` (wallet + unrealised - margin held)."""
        return self._asset_totals(asset)["available"]

    def _asset_totals(self, asset: str) -> dict[str, float]:
        wallet = self.balances.get(asset, 0.0)
        un = initial = maint = 0.0
        for p in self.open_positions():
            if self.market.series[p.symbol].quote == asset:
                f = self._figures(p)
                un, initial, maint = un + f["unrealized"], initial + f["initial"], \
                    maint + f["maint"]
        available = max(0.0, wallet + un - initial)
        return {"wallet": wallet, "unrealized": un, "margin": wallet + un, "initial": initial,
                "maint": maint, "available": available,
                "withdraw": max(0.0, min(wallet, available))}

    # ------------------------------------------------------------------- payloads

    def position_risk(self, symbol: str | None = None) -> list[dict[str, object]]:
        """`GET /fapi/v2/positionRisk`: every served symbol (or one), one entry per
        position side, zero positions included (as Binance's v2 answers)."""
        out = []
        for sym in [symbol] if symbol else list(self.market.series):
            s = self.market.series[sym]
            st = self.settings[sym]
            for side in self.sides():
                p = self.position(sym, side)
                f = self._figures(p)
                out.append({
                    "symbol": sym, "positionAmt": s.qty(p.amount),
                    "entryPrice": s.price(p.entry_price), "markPrice": s.price(f["mark"]),
                    "unRealizedProfit": f"{f['unrealized']:.8f}", "liquidationPrice": "0",
                    "leverage": str(st.leverage),
                    "maxNotionalValue": str(max_notional(st.leverage)),
                    "marginType": "cross" if st.margin_type == "CROSSED" else "isolated",
                    "isolatedMargin": "0.00000000", "isAutoAddMargin": "false",
                    "positionSide": side, "notional": s.price(f["notional"]),
                    "isolatedWallet": "0", "updateTime": p.update_time,
                    "breakEvenPrice": s.price(p.entry_price)})
        return out

    def balance(self) -> list[dict[str, object]]:
        """`GET /fapi/v2/balance`."""
        out = []
        for asset in self.balances:
            t = self._asset_totals(asset)
            out.append({
                "accountAlias": ACCOUNT_ALIAS, "asset": asset,
                "balance": f"{t['wallet']:.8f}", "crossWalletBalance": f"{t['wallet']:.8f}",
                "crossUnPnl": f"{t['unrealized']:.8f}",
                "availableBalance": f"{t['available']:.8f}",
                "maxWithdrawAmount": f"{t['withdraw']:.8f}", "marginAvailable": True,
                "updateTime": self.balance_time})
        return out

    def account(self) -> dict[str, object]:
        """`GET /fapi/v2/account`; totals are in the first served quote asset."""
        quote = next(iter(self.market.series.values())).quote
        t = self._asset_totals(quote)
        assets = []
        for asset in self.balances:
            a = self._asset_totals(asset)
            assets.append({
                "asset": asset, "walletBalance": f"{a['wallet']:.8f}",
                "unrealizedProfit": f"{a['unrealized']:.8f}",
                "marginBalance": f"{a['margin']:.8f}", "maintMargin": f"{a['maint']:.8f}",
                "initialMargin": f"{a['initial']:.8f}",
                "positionInitialMargin": f"{a['initial']:.8f}",
                "openOrderInitialMargin": "0.00000000",
                "crossWalletBalance": f"{a['wallet']:.8f}",
                "crossUnPnl": f"{a['unrealized']:.8f}",
                "availableBalance": f"{a['available']:.8f}",
                "maxWithdrawAmount": f"{a['withdraw']:.8f}", "marginAvailable": True,
                "updateTime": self.balance_time})
        positions = []
        for sym, s in self.market.series.items():
            st = self.settings[sym]
            for side in self.sides():
                p = self.position(sym, side)
                f = self._figures(p)
                positions.append({
                    "symbol": sym, "initialMargin": f"{f['initial']:g}",
                    "maintMargin": f"{f['maint']:g}",
                    "unrealizedProfit": f"{f['unrealized']:.8f}",
                    "positionInitialMargin": f"{f['initial']:g}",
                    "openOrderInitialMargin": "0", "leverage": str(st.leverage),
                    "isolated": st.margin_type == "ISOLATED",
                    "entryPrice": s.price(p.entry_price),
                    "maxNotional": str(max_notional(st.leverage)),
                    "bidNotional": "0", "askNotional": "0", "positionSide": side,
                    "positionAmt": s.qty(p.amount), "updateTime": p.update_time})
        return {
            "feeTier": 0, "canTrade": True, "canDeposit": True, "canWithdraw": True,
            "updateTime": 0, "multiAssetsMargin": self.multi_assets, "tradeGroupId": -1,
            "totalInitialMargin": f"{t['initial']:.8f}",
            "totalMaintMargin": f"{t['maint']:.8f}",
            "totalWalletBalance": f"{t['wallet']:.8f}",
            "totalUnrealizedProfit": f"{t['unrealized']:.8f}",
            "totalMarginBalance": f"{t['margin']:.8f}",
            "totalPositionInitialMargin": f"{t['initial']:.8f}",
            "totalOpenOrderInitialMargin": "0.00000000",
            "totalCrossWalletBalance": f"{t['wallet']:.8f}",
            "totalCrossUnPnl": f"{t['unrealized']:.8f}",
            "availableBalance": f"{t['available']:.8f}",
            "maxWithdrawAmount": f"{t['withdraw']:.8f}",
            "assets": assets, "positions": positions}

    def state(self) -> dict[str, object]:
        """`GET /sim/state`: the book for tests. Positions: open ones only."""
        return {
            "orders": [{k: v for k, v in o.items() if k != "payload"} for o in self.orders],
            "algo_orders": [{k: v for k, v in o.items() if k != "payload"}
                            for o in self.algo_orders],
            "positions": [{"symbol": p.symbol, "positionSide": p.side,
                           "positionAmt": self.market.series[p.symbol].qty(p.amount),
                           "entryPrice": self.market.series[p.symbol].price(p.entry_price)}
                          for p in self.open_positions()],
            "balances": {a: f"{v:.8f}" for a, v in self.balances.items()},
            **{k: f() for k, f in self.extra_state.items()}}


class AccountApi:
    """The signed account routes over one `Account`, served through `Rest.add_route`
    (so weights, faults and error bodies are Rest's)."""

    def __init__(self, rest: Rest, account: Account, auth: Auth) -> None:
        self.account, self.auth = account, auth
        signed = (
            ("GET", "/fapi/v1/positionSide/dual", self.get_dual, 30),
            ("POST", "/fapi/v1/positionSide/dual", self.set_dual, 1),
            ("GET", "/fapi/v1/multiAssetsMargin", self.get_multi_assets, 30),
            ("POST", "/fapi/v1/leverage", self.set_leverage, 1),
            ("POST", "/fapi/v1/marginType", self.set_margin_type, 1),
            ("GET", "/fapi/v2/account", self.get_account, 5),
            ("GET", "/fapi/v2/balance", self.get_balance, 5),
            ("GET", "/fapi/v2/positionRisk", self.get_position_risk, 5),
            ("GET", "/fapi/v1/openOrders", self.get_open_orders, _per_symbol(1, 40)),
            ("GET", "/fapi/v1/openAlgoOrders", self.get_open_algo_orders,
             _per_symbol(1, 40)),
        )
        for method, path, handler, weight in signed:
            rest.add_route(method, path, self._signed(handler), weight)
        rest.add_route("GET", "/sim/state", self.get_state, 0)

    def _signed(self, handler: SignedHandler) -> Callable[[Request], Awaitable[Response]]:
        async def route(req: Request) -> Response:
            return await handler(req, self.auth.verify(req))
        return route

    def _symbol(self, params: Params, required: bool) -> str | None:
        symbol = params.get("symbol", "")
        if not symbol:
            if required:
                raise _missing("symbol")
            return None
        self.account.series(symbol)
        return symbol

    async def get_dual(self, req: Request, params: Params) -> Response:
        return Response.json(200, {"dualSidePosition": self.account.dual_side})

    async def set_dual(self, req: Request, params: Params) -> Response:
        text = params.get("dualSidePosition", "").lower()
        if text not in ("true", "false"):
            raise _missing("dualSidePosition")
        want = text == "true"
        acc = self.account
        if want == acc.dual_side:
            raise ApiError(400, -4059, "No need to change position side.")
        if acc.open_orders() or acc.open_algo_orders():
            raise ApiError(400, -4067, "Position side cannot be changed if there exists "
                                       "open orders.")
        if acc.open_positions():
            raise ApiError(400, -4068, "Position side cannot be changed if there exists "
                                       "position.")
        acc.dual_side = want
        acc.positions.clear()
        return Response.json(200, {"code": 200, "msg": "success"})

    async def get_multi_assets(self, req: Request, params: Params) -> Response:
        return Response.json(200, {"multiAssetsMargin": self.account.multi_assets})

    async def set_leverage(self, req: Request, params: Params) -> Response:
        symbol = self._symbol(params, True)
        assert symbol is not None
        lev = _int(params, "leverage", None)
        if lev is None:
            raise _missing("leverage")
        if not 1 <= lev <= MAX_LEVERAGE:
            raise ApiError(400, -4028, f"Leverage {lev} is not valid")
        self.account.settings[symbol].leverage = lev
        return Response.json(200, {"leverage": lev, "maxNotionalValue": str(max_notional(lev)),
                                   "symbol": symbol})

    async def set_margin_type(self, req: Request, params: Params) -> Response:
        symbol = self._symbol(params, True)
        assert symbol is not None
        want = params.get("marginType", "").upper()
        if want not in ("ISOLATED", "CROSSED"):
            raise _missing("marginType")
        st = self.account.settings[symbol]
        if want == st.margin_type:
            raise ApiError(400, -4046, "No need to change margin type.")
        if want == "ISOLATED" and self.account.multi_assets:
            raise ApiError(400, -4168, "Unable to adjust to isolated-margin mode under the "
                                       "Multi-Assets mode.")
        if any(p.symbol == symbol for p in self.account.open_positions()):
            raise ApiError(400, -4048, "Margin type cannot be changed if there exists "
                                       "position.")
        if self.account.open_orders(symbol):
            raise ApiError(400, -4047, "Margin type cannot be changed if there exists "
                                       "open orders.")
        st.margin_type = want
        return Response.json(200, {"code": 200, "msg": "success"})

    async def get_account(self, req: Request, params: Params) -> Response:
        return Response.json(200, self.account.account())

    async def get_balance(self, req: Request, params: Params) -> Response:
        return Response.json(200, self.account.balance())

    async def get_position_risk(self, req: Request, params: Params) -> Response:
        return Response.json(200, self.account.position_risk(self._symbol(params, False)))

    async def get_open_orders(self, req: Request, params: Params) -> Response:
        return Response.json(200, self.account.open_orders(self._symbol(params, False)))

    async def get_open_algo_orders(self, req: Request, params: Params) -> Response:
        return Response.json(200, self.account.open_algo_orders(self._symbol(params, False)))

    async def get_state(self, req: Request) -> Response:
        return Response.json(200, self.account.state())


def _per_symbol(with_symbol: int, without: int) -> Callable[[Request], int]:
    """Binance's weight of a listing: small for one symbol, large for all."""
    def weight(req: Request) -> int:
        return with_symbol if req.query.get("symbol") else without
    return weight
