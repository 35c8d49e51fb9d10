"""What the control socket can ask of a running daemon.

Read-only answers come from the actors' published status and read-only store queries;
commands that change state (halt, resume, flatten, pause, resume-symbol) are messages to
the actor that owns that state (risk), answered once it has applied them.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import trio

from qtraderd.control.server import ControlError, Handler
from qtraderd.core.clock import iso
from qtraderd.core.messages import Command
from qtraderd.learning.registry import list_models
from qtraderd.store.db import connect

if TYPE_CHECKING:
    from qtraderd.runtime.daemon import Daemon

RISK_COMMANDS = ("halt", "resume", "flatten", "pause", "resume-symbol")
LEARNER_COMMANDS = ("promote", "rollback", "retrain")


class ControlAPI:
    def __init__(self, daemon: Daemon, commands: trio.MemorySendChannel[Command],
                 learner: trio.MemorySendChannel[Command] | None = None) -> None:
        self.d = daemon
        self.commands = commands
        self.learner = learner
        self._ro: sqlite3.Connection | None = None

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
        return h

    def _db(self) -> sqlite3.Connection:
        if self._ro is None:
            self._ro = connect(self.d.state_dir, readonly=True)
        return self._ro

    async def status(self, args: dict[str, Any]) -> Any:
        return self.d.status()

    async def modules(self, args: dict[str, Any]) -> Any:
        d = self.d
        sup = d.supervisor.status() if d.supervisor else {}
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
        models = d.predictor.models.serving if d.supervisor else {}
        add("models", "ok" if models else "none",
            ", ".join(f"{f}/{m.version}" for f, m in models.items()) or
            "no model loaded: predicting nothing")
        add("learner", "ok" if d.learner else "disabled",
            "" if d.learner is None else
            f"{d.cfg.learning.mode}, {d.learner.evaluations} evaluations, "
            f"{d.learner.jobs_done} jobs, next evaluation at {iso(d.learner.next_eval)}")
        add("risk", d.risk.state, d.risk.reason or "within limits")
        paused = d.risk.portfolio.paused()
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
            for _, p in sorted(self.d.execution.positions.items())
        ]

    async def trades(self, args: dict[str, Any]) -> Any:
        try:
            limit = int(args.get("limit", 20))
        except (TypeError, ValueError) as exc:
            raise ControlError(f"limit must be an integer, got {args.get('limit')!r}") from exc
        rows = self._db().execute(
            "SELECT id, symbol, side, qty, entry_ts, entry_price, exit_ts, exit_price, net_pnl,"
            " return_pct, exit_reason FROM trades WHERE run_id=? ORDER BY id DESC LIMIT ?",
            (self.d.run_id, max(1, min(limit, 10_000)))).fetchall()
        return [{"id": r[0], "symbol": r[1], "side": "long" if r[2] > 0 else "short",
                 "qty": r[3], "entry": iso(r[4]), "entry_price": r[5], "exit": iso(r[6]),
                 "exit_price": r[7], "net_pnl": r[8], "return_pct": round(r[9], 3),
                 "reason": r[10]} for r in rows]

    async def pnl(self, args: dict[str, Any]) -> Any:
        accounts = [
            {"quote": a.quote, "balance": a.balance, "equity": a.equity,
             "start": self.d.cfg.account.balances.get(a.quote),
             "exposure": a.exposure, "open_positions": a.open_positions}
            for a in self.d.execution.accounts
        ]
        symbols = [{"symbol": s, **st} for s, st in self.d.risk.portfolio.stats().items()]
        return {"accounts": accounts, "symbols": symbols}

    async def models(self, args: dict[str, Any]) -> Any:
        served = self.d.predictor.models.describe()
        if self.learner is not None and self.d.learner is not None:
            learned = await self._ask(self.learner, "models", "learner")(args)
            return {"served": served, **learned}
        registry = [{"family": r["family"], "version": r["version"], "status": r["status"],
                     "created_at": r["created_at"]} for r in list_models(self._db())]
        return {"served": served, "registry": registry}

    async def learning(self, args: dict[str, Any]) -> Any:
        db = self._db()
        labelled, unlabelled = db.execute(
            "SELECT sum(label IS NOT NULL), sum(label IS NULL) FROM samples").fetchone()
        here = db.execute("SELECT count(*) FROM samples WHERE run_id=?",
                          (self.d.run_id,)).fetchone()[0]
        samples = {"with_outcome": labelled or 0, "without_outcome": unlabelled or 0,
                   "this_run": here,
                   "awaiting_outcome_in_memory": sum(
                       len(st.pending) for st in self.d.predictor._symbols.values())}
        versions = [{"family": r["family"], "version": r["version"], "status": r["status"]}
                    for r in list_models(db)]
        if self.learner is None or self.d.learner is None:
            return {"samples": samples, "versions": versions,
                    "learner": "disabled ([learning] enabled = false)"}
        report = await self._ask(self.learner, "learning", "learner")(args)
        return {"samples": samples, "versions": versions, **report}

    async def rl(self, args: dict[str, Any]) -> Any:
        return self.d.sizer.rl_status()

    async def plugins(self, args: dict[str, Any]) -> Any:
        """Every plugin file seen: version, state, hooks, calls, errors, last error."""
        if self.d.plugins is None:
            raise ControlError("plugins are disabled ([plugins] enabled = false)")
        return self.d.plugins.status()

    def _learner_command(self, name: str) -> Handler:
        async def handler(args: dict[str, Any]) -> Any:
            if self.learner is None or self.d.learner is None:
                raise ControlError("the learner is disabled ([learning] enabled = false)")
            return await self._ask(self.learner, name, "learner", timeout_s=30.0)(args)

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
