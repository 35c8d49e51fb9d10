"""Live-trading benchmark: closed kline -> order request sent, the order's round trip
through the simulator, and reconnect + reconcile time.

    .venv/bin/python benchmarks/live.py [--bars N] [--speed S] [--drop-bars N] [--drop P]
                                        [--keep DIR]

1. Set-up as live_feed.py: the ten shared 5m alt/BTC pairs imported (what the simulator
   serves), XGBoost + LightGBM trained on the shared 1m series of Nov 2017, so every 5m
   bar of January 2018 is out of sample and every live step runs real ONNX inference.
2. Orders: `qtraderd exchange-sim` (a real subprocess, loopback TCP, keys and a 1 BTC
   balance, zero slippage) serves the pairs from 2018-01-16 at --speed; the daemon runs in
   a child process in mode = "live" (feed.source binance, [exchange] custom at the
   simulator's URL, credentials from QT_BINANCE_API_KEY/SECRET, a loose entry rule so
   the small models trade, learning and plugins off). Inside that child only, wrappers
   take timestamps: websockets' socket read (when a frame's bytes reached the process), the
   kline stream client (which read delivered which closed kline), `LoadedModel.predict`
   (inference per step), `ExecutionActor._journal` (the order rows committed to SQLite
   before any request leaves), `BinanceBroker.submit`, `RestClient._send` for
   `POST /fapi/v1/order` and httpcore's socket write under it (the request's bytes
   leaving the process), the user stream's parse (the fill's frame read) and
   `BinanceBroker.apply` / `_open` / `_close` (the fill applied: the position opened or
   closed in the broker; then, for an entry, its stop and take-profit placed).
   Per order: the read of the last of its step's ten closed klines -> its request's bytes
   written, wall time and event-loop thread CPU, minus that step's inference; the journal
   commit inside it separately. Round trip: request written -> REST answer, -> the
   ORDER_TRADE_UPDATE FILLED frame read, -> the fill applied.
3. Reconnect + reconcile: the same set-up with the simulator's `user_drop` fault (each
   user data event, with the given probability, closes the private stream abruptly
   instead of being sent: the event is lost). Per drop: the connection's end seen by the
   daemon -> the next connection up (the reconnect backoff, a new listenKey, the
   WebSocket handshake) -> `reconcile_live` returning (positions, balances, algo orders
   and every order in flight looked up over REST).

The product code is unchanged; every timestamp is taken inside the daemon's process.
Prints the figures with their targets; exits 0 (the targets are reported, not enforced).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

import _common
from _common import BAR_MS, FRAME_HOOKS, INFER_HOOKS, PAIRS, START, iso, pct

KEY, SECRET = "bench-key", "bench-secret"
ORDER_PATH = "/fapi/v1/order"
# zero slippage (the simulator's too) and a loose entry rule: the small models trade
LIVE = "[costs]\nslippage_bps = 0\n[sizing]\nmin_edge_pct = -0.5\nmin_confidence = 0.25\n"

CHILD = textwrap.dedent("""
    import contextvars, json, sys, time
    t_start = time.perf_counter()
    import trio
    import httpcore._backends.trio as httpcore_trio
    from qtraderd.actors.execution import ExecutionActor
    from qtraderd.core.config import load
    from qtraderd.runtime import logs, secrets
    from qtraderd.runtime.daemon import Daemon
    from qtraderd.venues.binance import reconcile as reconcile_mod
    from qtraderd.venues.binance import userstream as userstream_mod
    from qtraderd.venues.binance.broker import BinanceBroker
    from qtraderd.venues.binance.rest import RestClient
    from qtraderd.venues.binance.userdata import BinanceOrderUpdate
    cfg_path, state, models, sock, order_path = sys.argv[1:6]
    cfg = load(cfg_path, env={})
    logs.setup(cfg.runtime.log_level)
    credentials = secrets.load()
    perf, tcpu, pcpu = time.perf_counter, time.thread_time, time.process_time
""") + FRAME_HOOKS + INFER_HOOKS + textwrap.dedent("""
    t_imported = time.perf_counter()

    # the orders' rows committed before any request leaves, per step
    # and the orders risk allowed on the step (not the closes the broker makes itself)
    journal, decided = {}, set()
    orig_journal = ExecutionActor._journal
    async def _journal(self, step):
        t0, c0 = perf(), tcpu()
        await orig_journal(self, step)
        journal[step.ts] = (t0, perf(), c0, tcpu())
    ExecutionActor._journal = _journal
    orig_orders = ExecutionActor._orders
    def _orders(self, step):
        out = orig_orders(self, step)
        decided.update(o.client_id for _, o in out)
        return out
    ExecutionActor._orders = _orders

    # market orders the broker was given, by client id
    orders = {}
    orig_submit = BinanceBroker.submit
    async def submit(self, order):
        orders.setdefault(order.client_id, {"ts": order.decided_ts, "purpose": order.purpose,
                                            "submit": perf()})
        return await orig_submit(self, order)
    BinanceBroker.submit = submit

    # POST /fapi/v1/order: the REST client's send and the first socket write under it
    sending = contextvars.ContextVar("sending", default=None)
    orig_rest_send = RestClient._send
    async def rest_send(self, method, path, params, signed, keyed=False):
        o = None
        if method == "POST" and path == order_path and params:
            o = orders.get(params.get("newClientOrderId"))
        if o is None:
            return await orig_rest_send(self, method, path, params, signed, keyed)
        o.setdefault("rest", perf())
        o.setdefault("rest_cpu", tcpu())
        token = sending.set(o)
        try:
            resp = await orig_rest_send(self, method, path, params, signed, keyed)
        finally:
            sending.reset(token)
        o.setdefault("reply", perf())
        return resp
    RestClient._send = rest_send
    orig_write = httpcore_trio.TrioStream.write
    async def write(self, buffer, timeout=None):
        await orig_write(self, buffer, timeout)
        o = sending.get()
        if o is not None and "sent" not in o:
            o["sent"], o["sent_cpu"] = perf(), tcpu()
    httpcore_trio.TrioStream.write = write

    # user events: the frame read that carried each (parse right after recv, no await
    # in between), the broker applying it, the position opened or closed
    user_read = {}
    orig_parse = userstream_mod.parse_user_event
    def parse_user_event(raw):
        ev = orig_parse(raw)
        user_read[id(ev)] = last[0]
        return ev
    userstream_mod.parse_user_event = parse_user_event
    reconnect_items = []
    orig_apply = BinanceBroker.apply
    async def apply(self, item):
        read = user_read.pop(id(item), None)
        o = None
        if isinstance(item, BinanceOrderUpdate) and item.is_fill and item.status == "FILLED":
            o = orders.get(item.client_id)
            if o is not None and "fill_in" not in o:
                o["fill_read"], o["fill_in"] = read, perf()
            else:
                o = None
        elif isinstance(item, userstream_mod.UserStreamReconnected):
            reconnect_items.append(perf())
        await orig_apply(self, item)
        if o is not None:
            o["fill_done"] = perf()
    BinanceBroker.apply = apply
    def applied(cid):
        o = orders.get(cid)
        if o is not None and "fill_in" in o and "applied" not in o:
            o["applied"] = perf()
    orig_open = BinanceBroker._open
    def _open(self, cid, *args, **kwargs):
        out = orig_open(self, cid, *args, **kwargs)
        applied(cid)
        return out
    BinanceBroker._open = _open
    orig_close = BinanceBroker._close
    def _close(self, pos, ts, price, reason, order_id, **kwargs):
        out = orig_close(self, pos, ts, price, reason, order_id, **kwargs)
        applied(order_id)
        return out
    BinanceBroker._close = _close

    # the user stream's connections (up: the session starts; down: it ended), the
    # backoff drawn, the listenKey requests; reconcile_live (broker.py imports it from
    # the module at each call)
    sessions, backoffs, keys, reconciles = [], [], [], []
    orig_session = userstream_mod.UserStream._session
    async def _session(self, ws, send):
        rec = [perf(), None]
        sessions.append(rec)
        try:
            return await orig_session(self, ws, send)
        finally:
            rec[1] = perf()
    userstream_mod.UserStream._session = _session
    orig_backoff = userstream_mod.backoff_delay
    def backoff_delay(*args):
        d = orig_backoff(*args)
        backoffs.append((perf(), d))
        return d
    userstream_mod.backoff_delay = backoff_delay
    orig_key = userstream_mod.UserStream._fresh_key
    async def _fresh_key(self):
        t0 = perf()
        out = await orig_key(self)
        keys.append((t0, perf()))
        return out
    userstream_mod.UserStream._fresh_key = _fresh_key
    orig_reconcile = reconcile_mod.reconcile_live
    async def reconcile_live(b, saved, journal_ids):
        t0, c0 = perf(), tcpu()
        out = await orig_reconcile(b, saved, journal_ids)
        reconciles.append((t0, perf(), tcpu() - c0, len(out)))
        return out
    reconcile_mod.reconcile_live = reconcile_live

    async def main():
        d = Daemon(cfg, state, models, socket_path=sock, progress_every_s=60.0,
                   credentials=credentials)
        code = await d.run()
        return code, d

    code, d = trio.run(main)
    symbols = list(cfg.feed.symbols)
    steps = {}
    for ts in {o["ts"] for o in orders.values()}:
        frames = [frame_at.get((s, ts)) for s in symbols]
        steps[ts] = {"read": max(frames) if all(frames) else None,
                     "inf": infer[ts] if ts in infer else [0.0, 0.0],
                     "journal": journal.get(ts), "marks": marks.get(ts, {}),
                     "marks_cpu": marks_cpu.get(ts, {})}
    for cid, o in orders.items():  # decided on a step (not made by the broker itself)
        o["decided"] = cid in decided
    out = {"code": code, "import_s": t_imported - t_start, "orders": orders,
           "steps": {str(k): v for k, v in steps.items()}, "sessions": sessions,
           "backoffs": backoffs, "keys": keys, "reconciles": reconciles,
           "reconnect_items": reconnect_items, "cpu_s": pcpu(),
           "predictions": d.predictor.predictions, "broker": d.broker.status(),
           "stream": d.broker.stream.status() if d.broker.stream else {}}
    sys.stdout.write(json.dumps(out, default=str))
""")


def phase(work: Path, name: str, models: Path, speed: float, bars: int,
          faults: str = "") -> dict:
    """One simulator subprocess and one live daemon child over `bars` live 5m bars."""
    end_ms = _common.start_ms() + bars * BAR_MS  # exclusive for the simulator
    shutil.rmtree(work / f"state-{name}", ignore_errors=True)  # a fresh run, not a resume
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env.update(QT_BINANCE_API_KEY=KEY, QT_BINANCE_API_SECRET=SECRET)
    with _common.simulator(work, name, [
            "--state-dir", str(work / "market"), "--symbols", ",".join(PAIRS), "--interval",
            "5m", "--start", START, "--end", iso(end_ms), "--speed", f"{speed:g}",
            "--updates", "3", "--linger", "30", "--hold", "--slippage-bps", "0",
            "--api-key", KEY, "--api-secret", SECRET, "--balance", "BTC=1",
            "--faults", faults, "--seed", "13"]) as url:
        cfg = _common.write_config(work / f"{name}.toml", url, speed, end_ms - BAR_MS, mode="live",
                           extra=LIVE)
        out = _common.run_child(CHILD, work, name, [str(cfg), str(work / f"state-{name}"),
                                            str(models), ORDER_PATH], env=env)
    (work / f"{name}.json").write_text(json.dumps(out))  # the raw timestamps (--keep)
    return out


def _p(xs: list[float]) -> str:
    return (f"p50 {pct(xs, 50):.2f} ms, p99 {pct(xs, 99):.2f} ms, max {max(xs):.2f} ms"
            if xs else "none")


def report_orders(run: dict, speed: float, bars: int) -> bool:
    """Print kline -> order sent and the order round trip; True if the target is met."""
    ms = 1000.0
    orders, steps = run["orders"], run["steps"]
    sent = [o for o in orders.values() if "sent" in o]
    print(f"  order run: simulator speed {speed:g} (a 5m bar every {BAR_MS / speed:.0f} ms "
          f"of wall time), {bars} bars served, {run['predictions']:,} predictions; "
          f"{len(orders)} market orders submitted ("
          f"{sum(o['purpose'] == 'entry' for o in orders.values())} entries, "
          f"{sum(not o['decided'] for o in orders.values())} closes the broker made "
          f"itself: a protective level already crossed), {len(sent)} sent; "
          f"{run['broker'].get('protective_placed', '?')} protective orders placed")
    met = True
    for purpose in ("entry", "exit"):
        by_step: dict[str, list[dict]] = {}  # the step's orders, in the order sent
        for o in sorted(sent, key=lambda o: o["sent"]):
            if o["purpose"] == purpose and o["decided"]:
                by_step.setdefault(str(o["ts"]), []).append(o)
        rows, lasts = [], []
        for ts, sent_orders in by_step.items():
            s = steps[ts]
            if s["read"] is None or s["read"][0] > sent_orders[0]["sent"]:
                continue  # a catch-up step (bars from REST), not completed by a frame
            rows.append((sent_orders[0], s))
            if len(sent_orders) > 1:
                lasts.append((sent_orders[-1]["sent"] - s["read"][0] - s["inf"][0]) * 1000.0)
        label = {"entry": "entries", "exit": "exits decided on the step (their stop and "
                 "take-profit are cancelled over REST first)"}[purpose]
        print(f"  closed-kline frame read (the last of the step's 10) -> the order request's "
              f"bytes written, {label}: {len(rows)} steps with orders")
        if not rows:
            continue
        lat = [(o["sent"] - s["read"][0]) * ms for o, s in rows]
        beyond = [(o["sent"] - s["read"][0] - s["inf"][0]) * ms for o, s in rows]
        cpu_beyond = [(o["sent_cpu"] - s["read"][1] - s["inf"][1]) * ms for o, s in rows]
        inf = [s["inf"][0] * ms for _, s in rows]
        jr = [(s["journal"][1] - s["journal"][0]) * ms for _, s in rows if s["journal"]]
        print(f"    wall time: {_p(lat)}; model inference per step {_p(inf)}")
        tag = " (target <= 1 ms)" if purpose == "entry" else ""
        print(f"    beyond inference: {_p(beyond)}{tag}")
        print(f"    the event-loop thread's CPU time beyond inference: {_p(cpu_beyond)}")
        print(f"    (that is the step's first order; the broker sends a step's orders one "
              f"after the other, each after the previous one's answer: the last of "
              f"{len(lasts)} steps with more than one, beyond inference: {_p(lasts)})")
        print(f"    of which the journal commit (rows in SQLite before the request): "
              f"{_p(jr)}")
        legs, legs_cpu = [], []
        for o, s in rows:
            m, c, j = s["marks"], s["marks_cpu"], s["journal"]
            if "predicted" in m and j:
                legs.append((m["predictor"] - s["read"][0], m["predicted"] - m["predictor"],
                             j[0] - m["predicted"], j[1] - j[0], o["rest"] - j[1],
                             o["sent"] - o["rest"]))
                legs_cpu.append((c["predictor"] - s["read"][1], c["predicted"] - c["predictor"],
                                 j[2] - c["predicted"], j[3] - j[2], o["rest_cpu"] - j[3],
                                 o["sent_cpu"] - o["rest_cpu"]))
        names = ("frames read -> predictor (stream client, feed, execution phase A, monitor)",
                 "predictor (features, inference, ensemble)",
                 "-> journal (sizer, risk, execution phase B)",
                 "journal commit (a message to the recorder, the store writer's commit)",
                 "-> REST client (broker submit; exits: the stop and take-profit "
                 "cancelled)", "REST client -> bytes written (signing, httpx)")
        print("    where it goes, p50 / p99 ms, wall time | event-loop thread CPU:")
        for i, n in enumerate(names):
            v = [leg[i] * ms for leg in legs]
            vc = [leg[i] * ms for leg in legs_cpu]
            print(f"      {n}: {pct(v, 50):.2f} / {pct(v, 99):.2f} | {pct(vc, 50):.2f} / "
                  f"{pct(vc, 99):.2f}")
        if purpose == "entry":
            met = len(rows) >= 20 and pct(beyond, 99) <= 1.0
    trips = [o for o in sent if "reply" in o and "applied" in o and o.get("fill_read")]
    print(f"  order round trip through the simulator ({len(trips)} orders filled on the "
          "stream), from the request's bytes written:")
    if trips:
        print(f"    -> REST answer: {_p([(o['reply'] - o['sent']) * ms for o in trips])}")
        print(f"    -> ORDER_TRADE_UPDATE FILLED frame read: "
              f"{_p([(o['fill_read'] - o['sent']) * ms for o in trips])}")
        print(f"    -> the broker takes the fill (behind earlier user events, whose "
              f"stops and take-profits it places over REST first): "
              f"{_p([(o['fill_in'] - o['sent']) * ms for o in trips])}")
        print(f"    -> fill applied (the broker's position opened or closed): "
              f"{_p([(o['applied'] - o['sent']) * ms for o in trips])}")
        ent = [o for o in trips if o["purpose"] == "entry" and "fill_done" in o]
        if ent:
            print(f"    -> entries' stop and take-profit placed (apply done): "
                  f"{_p([(o['fill_done'] - o['sent']) * ms for o in ent])}")
    return met


def report_reconnects(run: dict, prob: float, bars: int) -> None:
    """Print reconnect + reconcile time per dropped user stream connection."""
    ms = 1000.0
    sessions, recs = run["sessions"], run["reconciles"]
    rows = []
    for prev, nxt in itertools.pairwise(sessions):
        # up: the new connection's session starts, or (sent just before) the broker
        # takes its "reconnected" item, whichever comes first; that item's reconcile
        down = prev[1]
        item = next((t for t in run["reconnect_items"] if down is not None and t >= down),
                    None)
        rec = next((r for r in recs if item is not None and r[0] >= item), None)
        if rec is None:
            continue
        up = min(nxt[0], item)
        backoff = next((d for t, d in run["backoffs"] if down <= t <= up), 0.0)
        key = next((k for k in run["keys"] if down <= k[0] <= up), None)
        rows.append({"total": rec[1] - down, "up": up - down, "backoff": backoff,
                     "key": key[1] - key[0] if key else 0.0,
                     "handshake": up - key[1] if key else 0.0, "queued": rec[0] - up,
                     "reconcile": rec[1] - rec[0], "rec_cpu": rec[2]})
    st = run["stream"]
    print(f"  reconnect run: user_drop={prob:g} (each user event, with that probability, "
          f"closes the private stream abruptly instead of being sent), {bars} bars; "
          f"{len(rows)} drops measured, {st.get('reconnects', '?')} reconnects, "
          f"{len(run['orders'])} market orders")
    if not rows:
        return

    def col(k: str, less_backoff: bool = False) -> list[float]:
        return [(r[k] - (r["backoff"] if less_backoff else 0.0)) * ms for r in rows]

    lines = [
        ("stream down -> reconnected -> reconcile done", col("total")),
        ("  the same without the reconnect backoff (drawn from 0.125-0.25 s: [exchange] "
         "reconnect_min_s 0.25, half of it random)", col("total", True)),
        ("  down -> up", col("up")),
        ("    the backoff", col("backoff")),
        ("    a new listenKey (POST)", col("key")),
        ("    the WebSocket handshake", col("handshake")),
        ("  up -> reconcile starts (the broker busy with earlier user events)", col("queued")),
        ("  reconcile_live (REST: orders in flight, balances, positions, algo orders; "
         "protective orders placed again, orphans cancelled)", col("reconcile")),
        ("    its event-loop thread CPU", col("rec_cpu"))]
    for label, values in lines:
        print(f"    {label}: {_p(values)}")


def cpu_now() -> float:
    """CPU time of this process and its finished children (and theirs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=200,
                    help="live 5m bars of the order run (default 200)")
    ap.add_argument("--speed", type=float, default=1500.0,
                    help="simulator speed (default 1500: a bar every 200 ms)")
    ap.add_argument("--drop-bars", type=int, default=60,
                    help="live bars of the reconnect run (default 60)")
    ap.add_argument("--drop", type=float, default=0.1,
                    help="user_drop probability per user event in the reconnect run "
                         "(default 0.1)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work dir here")
    args = ap.parse_args()
    work = _common.work_dir(args.keep)
    t0 = time.perf_counter()
    cpu = [cpu_now()]
    try:
        _, models = _common.prepare(work)
        cpu.append(cpu_now())
        print(f"imported and trained in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        t = time.perf_counter()
        orders = phase(work, "orders", models, args.speed, args.bars)
        cpu.append(cpu_now())
        print(f"order run in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        t = time.perf_counter()
        drops = phase(work, "drops", models, args.speed, args.drop_bars,
                      faults=f"user_drop={args.drop:g}")
        cpu.append(cpu_now())
        print(f"reconnect run in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"qtraderd live-trading benchmark: {len(PAIRS)} pairs (5m) from {START}, the "
          "daemon (mode live, learning and plugins off) against `qtraderd exchange-sim` "
          "(its own process) on loopback; XGBoost + LightGBM ONNX on every step")
    met = report_orders(orders, args.speed, args.bars)
    report_reconnects(drops, args.drop, args.drop_bars)
    print(f"  daemon child imports {orders['import_s']:.2f} s; daemon process CPU "
          f"{orders['cpu_s']:.1f} s (order run), {drops['cpu_s']:.1f} s (reconnect run); "
          f"whole benchmark {time.perf_counter() - t0:.0f} s wall, {cpu[3] - cpu[0]:.1f} s "
          f"CPU (all processes): import and training {cpu[1] - cpu[0]:.1f} s, order run "
          f"{cpu[2] - cpu[1]:.1f} s, reconnect run {cpu[3] - cpu[2]:.1f} s (simulator, "
          "daemon, store writer)")
    verdict = "met" if met else "NOT met"
    print(f"  target {verdict}: entries, closed kline -> order request sent, p99 beyond "
          "inference <= 1 ms over >= 20 steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
