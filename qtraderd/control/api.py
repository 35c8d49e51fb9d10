"""What the control socket can ask of a running daemon.

Read-only answers come from the actors' published snapshots (`DaemonView.snapshot`, never
an actor's attributes) and from read-only store queries, which run in a worker thread on a
connection of their own, bounded by LIMITs and an interrupt after `QUERY_TIMEOUT_S`, so a
big store never stalls the event loop that carries the bars. Commands that change state
(halt, resume, flatten, pause, resume-symbol; promote, rollback, retrain) are messages to
the actor that owns that state, answered once it has applied them.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from qtraderd.control.schema import MAX_ROWS
from qtraderd.control.server import ControlError, Handler
from qtraderd.core.clock import Clock, iso
from qtraderd.core.config import Config
from qtraderd.core.messages import Command
from qtraderd.learning.registry import list_models
from qtraderd.store.db import connect

RISK_COMMANDS = ("halt", "resume", "flatten", "pause", "resume-symbol")
LEARNER_COMMANDS = ("promote", "rollback", "retrain")
QUERY_TIMEOUT_S = 2.0  # a store query running longer is interrupted (ctl answers an error)

T = TypeVar("T")


class DaemonView(Protocol):
    """What control reads of the daemon (qtraderd.runtime.daemon.Daemon): settings, the
    status summary and the actors' snapshots. A Protocol, so control does not import the
    daemon (which imports control)."""

    cfg: Config
    state_dir: Path
    run_id: int
    socket_path: Path | None
    credentials: Any  # runtime.secrets.Credentials: only its `source` is shown
    clock: Clock
    plugins: Any  # plugins.host.PluginHost | None: a service beside the actors

    def status(self) -> dict[str, Any]: ...

    def actors(self) -> dict[str, dict[str, Any]]: ...

    def snapshot(self, name: str) -> Mapping[str, Any]: ...


def run_query(state_dir: Path, query: Callable[[sqlite3.Connection], T],
              timeout_s: float = QUERY_TIMEOUT_S) -> T:
    """Run `query` on a read-only connection of its own (in the calling thread), and
    interrupt it after `timeout_s`."""
    conn = connect(state_dir, readonly=True)
    deadline = time.monotonic() + timeout_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        return query(conn)
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise ControlError(f"store query took longer than {timeout_s:g} s") from exc
        raise
    finally:
        conn.close()


class ControlAPI:
    def __init__(self, daemon: DaemonView, commands: trio.MemorySendChannel[Command],
                 learner: trio.MemorySendChannel[Command] | None = None,
                 execution: trio.MemorySendChannel[Command] | None = None) -> None:
        self.d = daemon
        self.commands = commands
        self.learner_commands = learner
        self.execution_commands = execution

    def handlers(self) -> dict[str, Handler]:
        h: dict[str, Handler] = {
            "status": self.status,
            "modules": self.modules,
            "positions": self.positions,
            "trades": self.trades,
            "pnl": self.pnl,
            "models": self.models,
            "learning": self.learning,
            "rl": self.rl,
            "plugins": self.plugins,
        }
        for name in RISK_COMMANDS:
            h[name] = self._ask(self.commands, name, "risk")
        for name in LEARNER_COMMANDS:
            h[name] = self._learner_command(name)
        if self.execution_commands is not None:
            h["reconcile"] = self._ask(self.execution_commands, "reconcile", "execution",
                                       timeout_s=8.0)
        return h

    async def _query(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """`query` in a worker thread; the event loop keeps carrying bars meanwhile."""
        return await trio.to_thread.run_sync(run_query, self.d.state_dir, query,
                                             abandon_on_cancel=True)

    def _learning_on(self) -> bool:
        return self.learner_commands is not None and bool(self.d.snapshot("learner"))

    async def status(self, args: dict[str, Any]) -> Any:
        return self.d.status()

    async def modules(self, args: dict[str, Any]) -> Any:
        d = self.d
        sup = d.actors()
        rows: list[dict[str, Any]] = []

        def add(module: str, status: str, detail: str) -> None:
            rows.append({"module": module, "status": status, "detail": detail})

        add("config", "ok", f"mode {d.cfg.mode}, source {d.cfg.feed.source}")
        creds = d.credentials  # where they came from; the values never leave secrets.Secret
        add("credentials", "loaded" if creds else "none",
            creds.source if creds else f"none ({d.cfg.mode} mode)")
        add("clock", "ok", f"{type(d.clock).__name__} at {iso(d.clock.now_ms())}")
        add("store", "ok", f"{d.state_dir / 'qtraderd.db'} (WAL), run {d.run_id}")
        for name, st in sup.items():
            status = {"running": "ok", "stopped": "done"}.get(st["state"], st["state"])
            if st["restarts"]:
                status = f"{status} ({st['restarts']} restarts)"
            detail = ", ".join(f"{k}={v}" for k, v in st.items()
                               if k not in ("state", "restarts", "last_error")
                               and not isinstance(v, dict))
            add(f"actor:{name}", status, detail)
        models = d.snapshot("predictor").get("models", {})
        add("models", "ok" if models else "none",
            ", ".join(f"{f}/{v}" for f, v in models.items()) or
            "no model loaded: predicting nothing")
        learner = d.snapshot("learner")
        add("learner", "ok" if learner else "disabled",
            "" if not learner else
            f"{d.cfg.learning.mode}, {learner['evaluations']} evaluations, "
            f"{learner['jobs_done']} jobs, next evaluation at {iso(learner['next_eval'])}")
        risk = d.snapshot("risk")
        add("risk", risk.get("state", "-"), risk.get("reason") or "within limits")
        paused = risk.get("paused_symbols", {})
        add("portfolio", "ok" if not paused else "paused symbols",
            ", ".join(f"{s} ({r})" for s, r in paused.items()) or "no pauses")
        add("plugins", "ok" if d.plugins is not None else "disabled",
            d.plugins.summary() if d.plugins is not None else "[plugins] enabled = false")
        add("control", "ok", str(d.socket_path))
        return rows

    async def positions(self, args: dict[str, Any]) -> Any:
        return [
            {"symbol": p.symbol, "side": "long" if p.side > 0 else "short", "qty": p.qty,
             "entry": p.entry_price, "mark": p.mark_price, "stop": p.stop_price,
             "take": p.take_price, "unrealized": p.unrealized, "bars_held": p.bars_held,
             "trailing": p.trailing}
            for p in self.d.snapshot("execution").get("positions", ())
        ]

    async def trades(self, args: dict[str, Any]) -> Any:
        limit = args.get("limit", 20)  # checked by control.schema: an int in 1..MAX_ROWS
        run_id, n = self.d.run_id, max(1, min(int(limit), MAX_ROWS))
        rows = await self._query(lambda db: db.execute(
            "SELECT id, symbol, side, qty, entry_ts, entry_price, exit_ts, exit_price, net_pnl,"
            " return_pct, exit_reason FROM trades WHERE run_id=? ORDER BY id DESC LIMIT ?",
            (run_id, n)).fetchall())
        return [{"id": r[0], "symbol": r[1], "side": "long" if r[2] > 0 else "short",
                 "qty": r[3], "entry": iso(r[4]), "entry_price": r[5], "exit": iso(r[6]),
                 "exit_price": r[7], "net_pnl": r[8], "return_pct": round(r[9], 3),
                 "reason": r[10]} for r in rows]

    async def pnl(self, args: dict[str, Any]) -> Any:
        accounts = [
            {"quote": a.quote, "balance": a.balance, "equity": a.equity,
             "start": self.d.cfg.account.balances.get(a.quote),
             "exposure": a.exposure, "open_positions": a.open_positions}
            for a in self.d.snapshot("execution").get("accounts", ())
        ]
        stats = self.d.snapshot("risk").get("portfolio", {})
        symbols = [{"symbol": s, **st} for s, st in stats.items()]
        return {"accounts": accounts, "symbols": symbols}

    async def models(self, args: dict[str, Any]) -> Any:
        served = list(self.d.snapshot("predictor").get("served", ()))
        if self.learner_commands is not None and self._learning_on():
            learned = await self._ask(self.learner_commands, "models", "learner")(args)
            return {"served": served, **learned}
        registry = [{"family": r["family"], "version": r["version"], "status": r["status"],
                     "created_at": r["created_at"],
                     "reason": r["metrics"].get("gate_reason")}
                    for r in await self._query(list_models)]
        return {"served": served, "registry": registry}

    async def learning(self, args: dict[str, Any]) -> Any:
        """Sample counts without counting the samples table: this run's come from the
        predictor's snapshot (rows produced, outcomes known), the store's total is its
        highest id (one b-tree descent), so the answer costs the same at any store size."""
        pred = self.d.snapshot("predictor")
        produced, labelled = pred.get("samples", 0), pred.get("outcomes", 0)

        def query(db: sqlite3.Connection) -> tuple[int, list[dict[str, object]]]:
            stored = db.execute("SELECT max(id) FROM samples").fetchone()[0] or 0
            return stored, list_models(db)

        stored, listed = await self._query(query)
        samples = {"with_outcome": labelled, "without_outcome": max(0, produced - labelled),
                   "this_run": produced, "stored_all_runs": stored,
                   "awaiting_outcome_in_memory": pred.get("awaiting_outcome", 0)}
        versions = [{"family": r["family"], "version": r["version"], "status": r["status"]}
                    for r in listed]
        if self.learner_commands is None or not self._learning_on():
            return {"samples": samples, "versions": versions,
                    "learner": "disabled ([learning] enabled = false)"}
        report = await self._ask(self.learner_commands, "learning", "learner")(args)
        return {"samples": samples, "versions": versions, **report}

    async def rl(self, args: dict[str, Any]) -> Any:
        return dict(self.d.snapshot("sizer").get("rl", {"enabled": False}))

    async def plugins(self, args: dict[str, Any]) -> Any:
        """Every plugin file seen: version, state, hooks, calls, errors, last error."""
        if self.d.plugins is None:
            raise ControlError("plugins are disabled ([plugins] enabled = false)")
        return self.d.plugins.status()

    def _learner_command(self, name: str) -> Handler:
        async def handler(args: dict[str, Any]) -> Any:
            if self.learner_commands is None or not self._learning_on():
                raise ControlError("the learner is disabled ([learning] enabled = false)")
            return await self._ask(self.learner_commands, name, "learner", timeout_s=30.0)(args)

        return handler

    @staticmethod
    def _ask(channel: trio.MemorySendChannel[Command], name: str, actor: str,
             timeout_s: float = 3.0) -> Handler:
        """A handler that sends `name` to the actor owning the state and awaits its answer."""
        async def handler(args: dict[str, Any]) -> Any:
            reply_tx, reply_rx = trio.open_memory_channel[Any](1)
            try:
                channel.send_nowait(Command(name, args, reply_tx))
            except trio.WouldBlock as exc:
                raise ControlError(f"{actor} actor is busy; try again") from exc
            except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
                raise ControlError(f"{actor} actor has stopped") from exc
            with trio.move_on_after(timeout_s):
                result = await reply_rx.receive()
                if isinstance(result, dict) and "error" in result:
                    raise ControlError(result["error"])
                return result
            raise ControlError(f"{actor} actor did not answer {name!r} within "
                               f"{timeout_s:g} s")

        return handler
