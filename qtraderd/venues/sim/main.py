"""`qtraderd exchange-sim`: the simulator as a process.

Prints `exchange-sim listening on http://127.0.0.1:PORT` first (once the URL is in
`--url-file`, written atomically, if given), then `exchange-sim api key KEY secret SECRET`
when no --api-key/--api-secret were given (a random pair), prints `exchange-sim data ended`
when the last candle has closed, serves `--linger` seconds more and exits 0.
SIGTERM/SIGINT: exit 0. Bad input (files, symbols, range, fault spec, port, balance): exit 2
with one line naming it.
This module imports only argparse at load time: `qtraderd --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_USAGE = 0, 2

DESCRIPTION = (
    "Serve stored candles as a local Binance USD-M futures exchange on 127.0.0.1: REST "
    "(/fapi/v1/time, /fapi/v1/exchangeInfo, /fapi/v1/klines; signed account endpoints "
    "checked against --api-key/--api-secret) and the kline streams of the "
    "market route (/market/stream?streams=..., /market/ws/...) on one port. Candles before "
    "--start are history REST serves at once; from --start the clock runs at --speed x "
    "wall time, sending open-kline updates and one closed kline per candle. The legacy "
    "stream URLs (/stream, /ws) accept and deliver no klines, as Binance's do since "
    "2026-04. Faults (--faults) are seeded by --seed. Exit 0 after --linger seconds past "
    "the end of the data, or on SIGTERM/SIGINT; exit 2 on bad input.")
FAULTS_HELP = (
    "comma-separated NAME=PROBABILITY[:DURATION], e.g. "
    "drop=0.01,stall=0.005:10s,garbage=0.01,dup=0.01,reorder=0.01,http429=0.02:1s,"
    "http418=0.001:5s,http5xx=0.02,slow=0.05:2s. Per stream frame: drop (close the "
    "connection abruptly), stall (silence both ways for DURATION, TCP kept open), garbage "
    "(an extra malformed frame), dup (a closed kline sent twice), reorder (a frame overtaken "
    "by the next). Per REST request: http429 (Retry-After DURATION), http418 (every request "
    "banned for DURATION), http5xx, slow (answer delayed by DURATION). Per user data event: "
    "user_dup (sent twice), user_delay (held DURATION, later events overtake it), "
    "key_expiry (listenKeyExpired, the key dropped, the event lost), user_drop (the user "
    "stream closed abruptly); they strike ALGO_UPDATE and FUNDING_FEE events too. Per "
    "accepted POST /fapi/v1/order or /fapi/v1/algoOrder (the order IS placed, filled and "
    "published): lost_reply (the connection closed with no answer), order_5xx (answered "
    "503, code -1000). /sim/state counts every fault under \"faults\"")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--state-dir", type=Path, metavar="DIR",
                     help="serve the candles of this state directory's store (bars table)")
    src.add_argument("--csv", type=Path, nargs="+", action="extend", metavar="FILE",
                     help="serve CSV files named SYMBOL-INTERVAL.csv (repeatable; header "
                          "open_time,open,high,low,close,volume)")
    p.add_argument("--symbols", default=None, metavar="A,B",
                   help="comma-separated symbols to serve (default: all)")
    p.add_argument("--interval", default=None,
                   help="1m|3m|5m|15m|30m|1h|2h|4h|1d (default: the files' interval; 5m "
                        "for --state-dir)")
    p.add_argument("--start", default="", metavar="T",
                   help="first live candle's open time, inclusive (ISO-8601 like "
                        "2021-11-20T12:00Z; default: the first candle); earlier candles "
                        "are history")
    p.add_argument("--end", default="", metavar="T",
                   help="open times before T only (exclusive; default: all)")
    p.add_argument("--speed", type=_positive, default=1.0, metavar="N",
                   help="sim time runs at N x wall time (default 1)")
    p.add_argument("--port", type=_port, default=0, metavar="P",
                   help="TCP port on 127.0.0.1 (default 0: a free one)")
    p.add_argument("--faults", default="", metavar="SPEC", help=FAULTS_HELP)
    p.add_argument("--seed", type=_nonneg_int, default=0, metavar="S",
                   help="seed of the fault generator (default 0)")
    p.add_argument("--url-file", type=Path, default=None, metavar="F",
                   help="write the URL to F once listening")
    p.add_argument("--linger", type=_nonneg, default=10.0, metavar="SECONDS",
                   help="keep serving this long after the data ended (default 10)")
    p.add_argument("--ping-interval", type=_positive, default=180.0, metavar="S",
                   help="WebSocket ping interval, seconds (Binance: 180)")
    p.add_argument("--max-age", type=_positive, default=86_400.0, metavar="S",
                   help="close stream connections this old, seconds (Binance: 86400)")
    p.add_argument("--max-streams", type=_positive_int, default=1024, metavar="N",
                   help="streams per connection (Binance: 1024)")
    p.add_argument("--weight-limit", type=_positive_int, default=2400, metavar="N",
                   help="REST request weight per minute (Binance: 2400)")
    p.add_argument("--hold", action="store_true",
                   help="keep the clock at --start until the first connection (REST or "
                        "stream), so a client started after the simulator misses no live "
                        "candle")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="the API key signed requests must send in X-MBX-APIKEY (with "
                        "--api-secret; default: a random pair, printed at start)")
    p.add_argument("--api-secret", default=None, metavar="SECRET",
                   help="the HMAC-SHA256 secret signed requests are checked against")
    p.add_argument("--balance", action="append", default=None, metavar="ASSET=AMOUNT",
                   help="the account's starting balance (repeatable or comma-separated, "
                        "e.g. USDT=10000,BNB=1; default USDT=10000)")
    p.add_argument("--slippage-bps", type=_nonneg, default=2.0, metavar="BPS",
                   help="MARKET fills: last price moved this many basis points against "
                        "the taker (default 2)")
    p.add_argument("--taker-fee", type=_nonneg, default=0.0005, metavar="RATE",
                   help="MARKET fills: fee as a fraction of the notional (default 0.0005)")
    p.add_argument("--funding-interval-h", type=_positive, default=8.0, metavar="H",
                   help="funding settles every H hours of SIMULATOR time, at multiples of "
                        "H since the epoch (default 8: 00:00, 08:00, 16:00 UTC)")
    p.add_argument("--funding-rate", type=_finite, default=0.0001, metavar="RATE",
                   help="funding rate per settlement: each open position pays "
                        "amount x mark x RATE (shorts receive it; default 0.0001)")
    p.add_argument("--updates", type=_nonneg_int, default=3, metavar="N",
                   help="open-kline updates per candle before the closed one (default 3)")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive(text: str) -> float:
    x = _number(text)
    if not 0 < x < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return x


def _finite(text: str) -> float:
    x = _number(text)
    if not -1 < x < 1:
        raise argparse.ArgumentTypeError(f"expected a rate between -1 and 1, got {text!r}")
    return x


def _nonneg(text: str) -> float:
    x = _number(text)
    if not 0 <= x < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return x


def _nonneg_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    n = _nonneg_int(text)
    if n == 0:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {text!r}")
    return n


def _port(text: str) -> int:
    n = _nonneg_int(text)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text!r}")
    return n


def _time(option: str, text: str) -> int | None:
    from qtraderd.core.config import ConfigError, parse_time

    try:
        return parse_time(option, text)
    except ConfigError:
        raise ValueError(f"{option}: expected an ISO-8601 date/time like 2021-11-20 or "
                         f"2021-11-20T12:00Z, got {text!r}") from None


def _error(msg: str) -> int:
    print(f"qtraderd exchange-sim: error: {msg}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def write_url_file(path: Path, url: str) -> None:
    """Write atomically: a reader sees no file or the whole URL, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(url + "\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """The subcommand: build the market, serve it, exit."""
    from qtraderd.core.config import INTERVAL_MS
    from qtraderd.venues.sim.account import parse_balances
    from qtraderd.venues.sim.candles import SimInputError
    from qtraderd.venues.sim.faults import FaultSpec, FaultSpecError
    from qtraderd.venues.sim.server import SimServer, load_market
    from qtraderd.venues.sim.streams import StreamOptions

    try:
        if args.interval is not None and args.interval not in INTERVAL_MS:
            raise SimInputError(f"--interval: unknown interval {args.interval!r} (known: "
                                f"{', '.join(INTERVAL_MS)})")
        start, end = _time("--start", args.start), _time("--end", args.end)
        faults = FaultSpec.parse(args.faults)
        symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()] \
            if args.symbols else None
        market = load_market(csv=args.csv, state_dir=args.state_dir, symbols=symbols,
                             interval=args.interval, start_ms=start, end_ms=end)
        balances = parse_balances(",".join(args.balance)) if args.balance else None
        sim = SimServer(market, speed=args.speed, port=args.port, faults=faults,
                        api_key=args.api_key, api_secret=args.api_secret, balances=balances,
                        slippage_bps=args.slippage_bps, taker_fee=args.taker_fee,
                        seed=args.seed, updates_per_candle=args.updates,
                        weight_limit=args.weight_limit, hold=args.hold,
                        funding_interval_h=args.funding_interval_h,
                        funding_rate=args.funding_rate,
                        stream_options=StreamOptions(
                            ping_interval_s=args.ping_interval, max_age_s=args.max_age,
                            max_streams=args.max_streams))
    except (SimInputError, FaultSpecError, ValueError) as exc:
        return _error(str(exc))
    import trio

    try:
        return trio.run(_main, sim, args)
    except OSError as exc:  # cannot listen (port taken) or cannot write --url-file
        return _error(str(exc))
    except BaseExceptionGroup as group:
        oserrors = group.subgroup(OSError)
        if oserrors is None:
            raise
        while isinstance(leaf := oserrors.exceptions[0], BaseExceptionGroup):
            oserrors = leaf
        return _error(str(leaf))


async def _main(sim, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    import signal

    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(sim.serve)
            except OSError as exc:
                raise OSError(f"--port {args.port}: cannot listen on 127.0.0.1: "
                              f"{exc.strerror or exc}") from None
            if args.url_file is not None:  # before the line: whoever sees it finds the file
                try:
                    write_url_file(args.url_file, sim.url)
                except OSError as exc:
                    raise OSError(f"--url-file {args.url_file}: cannot write: "
                                  f"{exc.strerror or exc}") from None
            print(f"exchange-sim listening on {sim.url}", flush=True)
            if sim.key_generated:  # a local test exchange: its random pair is no secret
                print(f"exchange-sim api key {sim.api_key} secret {sim.api_secret}",
                      flush=True)
            nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
            s = sim.market
            print(f"exchange-sim serving {', '.join(s.series)} {s.interval} at speed "
                  f"{args.speed:g}, faults {sim.faults.spec}", flush=True)
            await sim.data_ended.wait()
            print("exchange-sim data ended", flush=True)
            await trio.sleep(args.linger)
            nursery.cancel_scope.cancel()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(sim.faults.counts.items())) or "none"
    print(f"exchange-sim stopped: {sim.rest.requests} requests, {sim.hub.connections} stream "
          f"connections, {sim.closed_klines} closed klines, faults injected: {counts}",
          flush=True)
    return EXIT_OK


async def _stop_on_signal(signals, scope) -> None:  # type: ignore[no-untyped-def]
    async for _ in signals:
        scope.cancel()
        return
