"""The daemon: wires the actors into the bar chain and runs them under the supervisor.

    feed -> execution(A) -> monitor -> predictor -> sizer -> risk -> execution(B) -> recorder

Around the chain run the services: the control socket, signal handling (SIGTERM/SIGINT:
stop the feed, let in-flight steps drain, flush, exit 0 — or cancel outright after
`runtime.shutdown_timeout_s`), and a progress line once a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import signal
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from qtraderd import __version__
from qtraderd.actors.execution import ExecutionActor
from qtraderd.actors.feed import FeedActor
from qtraderd.actors.learner import LearnerActor, retrain_banner
from qtraderd.actors.monitor import MonitorActor
from qtraderd.actors.predictor import PredictorActor
from qtraderd.actors.recorder import RecorderActor
from qtraderd.actors.risk import RiskActor
from qtraderd.actors.sizer import SizerActor
from qtraderd.control.api import ControlAPI
from qtraderd.control.client import daemon_socket_path
from qtraderd.control.schema import validated
from qtraderd.control.server import ControlError, ControlServer
from qtraderd.core.clock import ReplayClock, iso, wall_iso
from qtraderd.core.config import INTERVAL_MS, Config, parse_time, with_changes
from qtraderd.core.costs import CostModel
from qtraderd.core.instruments import InstrumentError, load_state_dir, quote_asset
from qtraderd.core.messages import Command, Record, Step
from qtraderd.features.labels import Barriers
from qtraderd.learning.registry import RegistryView, reconcile
from qtraderd.learning.rl import restore
from qtraderd.models.onnx_model import LoadedModel, load_champions
from qtraderd.plugins.host import PluginHost
from qtraderd.runtime import resume as resume_mod
from qtraderd.runtime.gcpolicy import steady_gc
from qtraderd.runtime.process import LockError, StateLock
from qtraderd.runtime.reload import (
    ReloadRejected,
    config_line,
    reload_config,
    stored_config,
    write_job_config,
)
from qtraderd.runtime.secrets import Credentials
from qtraderd.runtime.supervisor import EMPTY, Supervisor, offer
from qtraderd.runtime.systemd import Service
from qtraderd.store.db import check_store, connect, db_path, store_error
from qtraderd.venues.factory import VenueError, build_venue, check_venue
from qtraderd.venues.replay import stored_span, stored_symbols

log = logging.getLogger("qtraderd")

EXIT_OK, EXIT_ESCALATED = 0, 3


class DaemonError(RuntimeError):
    """Start-up cannot proceed; the message tells the operator what to do."""


class DaemonUnavailable(RuntimeError):
    """Start-up failed on something outside (the exchange unreachable): exit 1, so that
    systemd's Restart=on-failure tries again, unlike a DaemonError (exit 2)."""


def limit_malloc_arenas(n: int = 1) -> bool:
    """Cap glibc's per-thread malloc arenas (what MALLOC_ARENA_MAX=1 does).

    Worker threads (store reads, the models watcher) would each get an arena of their own;
    memory freed there is not reused by the event loop's thread, so RSS crept up by ~10 %
    per replay although no Python object leaked. One shared arena keeps RSS flat; the
    allocations in question are rare enough that arena contention costs nothing here.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, n))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False  # not glibc: nothing to do


def release_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc malloc_trim) after a run.

    A replay frees everything it built (actor state, model sessions, batches) when it
    ends, but glibc keeps freed pages mapped; a second run in the same process (tests,
    benchmarks, walk-forward) then starts from the first one's high-water mark.
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False  # not glibc: nothing to do


def unwrap(exc: BaseException) -> BaseException:
    """The single error inside nested one-member exception groups (Trio wraps errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def warm_up_exchange(cfg: Config, state_dir: Path) -> None:
    """A live feed's start-up alone (symbols checked, warm-up history stored), for `run` to
    train the first models on; DaemonError / DaemonUnavailable like the daemon's own."""

    async def main() -> None:
        feed_only = with_changes(cfg, mode="paper")  # the history alone: no account yet
        source, _, _ = build_venue(feed_only, state_dir, list(cfg.feed.symbols))
        daemon = Daemon(feed_only, state_dir, state_dir)
        daemon.source = source
        conn = connect(state_dir)
        try:
            await daemon._prepare_source(conn)
        finally:
            conn.close()
            await source.aclose()  # type: ignore[attr-defined]

    trio.run(main)


IDLE_PROGRESS_S = 60.0  # progress lines while no step goes by


@dataclass
class Daemon:
    cfg: Config
    state_dir: Path
    models_dir: Path
    socket_path: Path | None = None
    progress_every_s: float = 1.0
    models: dict[str, LoadedModel] | None = None  # preloaded (tests); else from models_dir
    config_path: Path | None = None  # re-read on reload (SIGHUP, `ctl reload`)
    credentials: Credentials | None = None  # secrets.load() at start; never in cfg or logs
    plugins_dir: Path | None = None  # `run` passes [plugins] dir; None: no plugin files
    fresh: bool = False  # close an unfinished last run instead of resuming it
    # The state-dir lock, when the caller took it before touching the state dir (`run`
    # does: a refused second instance must change nothing); else run() takes it.
    held_lock: StateLock | None = None
    run_id: int = 0
    started_wall: float = field(default_factory=time.monotonic)
    service: Service = field(default_factory=Service)  # sd_notify; no-op outside systemd

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.models_dir = Path(self.models_dir)
        if self.socket_path is None:
            self.socket_path = daemon_socket_path(self.state_dir)
        self.supervisor: Supervisor | None = None
        self.feed: FeedActor | None = None
        self.stopping = False
        self.exit_code = EXIT_OK
        self.channels: dict[str, trio.MemorySendChannel[Any]] = {}
        self.plugins: PluginHost | None = None
        self.quotes: set[str] = set()
        # Learner jobs read the config in force from here, never the operator's file.
        self.job_config: Path | None = None
        self.resume: resume_mod.Resume | None = None
        self.lock = StateLock(self.state_dir)

    # -- assembly ------------------------------------------------------------------------
    def _open_store(self) -> sqlite3.Connection:
        return connect(self.state_dir)

    def _symbols(self, conn: sqlite3.Connection) -> list[str]:
        if self.cfg.feed.source != "replay":  # a live feed: the configured symbols
            return list(self.cfg.feed.symbols)  # (check_venue refuses none)
        interval = self.cfg.feed.interval
        stored = stored_symbols(conn, interval)
        wanted = list(self.cfg.feed.symbols) or stored
        missing = [s for s in wanted if s not in stored]
        if missing:
            raise DaemonError(
                f"no {interval} candles stored for {', '.join(missing)} in "
                f"{self.state_dir}; import them with `qtraderd import FILE --state-dir "
                f"{self.state_dir}` (stored: {', '.join(stored) or 'none'})")
        if not wanted:
            raise DaemonError(f"no {interval} candles in {self.state_dir}; import some with "
                              "`qtraderd import FILE`")
        return wanted

    def _new_run(self, conn: sqlite3.Connection, symbols: list[str]) -> int:
        cur = conn.execute(
            "INSERT INTO runs (started_at, mode, source, seed, config, symbols, interval, status)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (wall_iso(), self.cfg.mode,
             self.cfg.feed.source, self.cfg.seed, json.dumps(stored_config(self.cfg)),
             json.dumps(symbols), self.cfg.feed.interval, "running"))
        return int(cur.lastrowid or 0)

    def _actor_event(self, actor: str, event: str, detail: str, restarts: int) -> None:
        if not offer(self._records, Record("actor_events", {
                "run_id": self.run_id, "at": wall_iso(),
                "clock_ts": self.clock.now_ms(), "actor": actor, "event": event,
                "detail": detail, "restarts": restarts})):
            log.warning("actor event not recorded (recorder busy or gone): %s %s", actor, event)

    # -- running -------------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> int:
        limit_malloc_arenas()
        cfg = self.cfg
        if cfg.mode == "live" and self.credentials is None:
            raise DaemonError('mode = "live" needs exchange credentials; none were loaded '
                              "(see README, Secrets)")
        try:
            check_venue(cfg)
        except VenueError as exc:
            raise DaemonError(str(exc)) from None
        lock = self.held_lock
        if lock is None or lock.fd is None:
            lock = StateLock(self.state_dir)
            try:
                await trio.to_thread.run_sync(lock.acquire)  # waits for a predecessor's writer
            except LockError as exc:
                raise DaemonError(str(exc)) from exc
        try:
            conn = self._open_store()
        except BaseException:
            lock.release()
            raise
        self.lock = lock
        try:
            # locked by another process or damaged pages: exit 2 with what to do, not a
            # traceback from whichever start-up step touched the store first
            check_store(conn, db_path(self.state_dir))
            symbols = self._symbols(conn)
            self.source, self.broker, self.clock = build_venue(
                cfg, self.state_dir, symbols, parse_time("feed.start", cfg.feed.start),
                parse_time("feed.end", cfg.feed.end), self.credentials)
            try:
                load_state_dir(self.state_dir)
                await self._prepare_source(conn, self.broker)
                self.quotes = {quote_asset(s) for s in symbols}
            except InstrumentError as exc:
                raise DaemonError(str(exc)) from None
            if self.models_dir.is_dir():  # before anything reads either side
                reconcile(conn, self.models_dir)
            if self.models is None:
                self.models, errors = load_champions(self.models_dir)
                for err in errors:
                    log.error("model rejected: %s", err)
            interval_ms = INTERVAL_MS[cfg.feed.interval]
            try:
                self.resume = resume_mod.plan(conn, cfg, self.fresh)
            except resume_mod.ResumeError as exc:
                raise DaemonError(str(exc)) from exc
            self.run_id = (self.resume.run_id if self.resume is not None
                           else self._new_run(conn, symbols))
            resume_mod.mark_started(conn, self.run_id, self.resume)
            log.info("qtraderd %s starting: run %d, mode %s, source %s, %d symbols (%s), "
                     "interval %s, speed %s, models %s", __version__, self.run_id, cfg.mode,
                     cfg.feed.source, len(symbols), ",".join(symbols), cfg.feed.interval,
                     "max" if math.isinf(cfg.feed.speed) else f"{cfg.feed.speed:g}x",
                     ",".join(f"{f}/{m.version}" for f, m in self.models.items()) or "none")
            log.info("%s", config_line(cfg, self.config_path))
            log.info(retrain_banner(cfg))
            await self._run_chain(conn, symbols, interval_ms, task_status)
        except sqlite3.DatabaseError as exc:  # start-up reads (the actors have their own)
            raise store_error(db_path(self.state_dir), exc) from None
        finally:
            self._finish(conn)
            conn.close()
            lock.release()
            release_memory()
            aclose = getattr(getattr(self, "source", None), "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await aclose()
        return self.exit_code

    async def _prepare_source(self, conn: sqlite3.Connection, broker: Any = None) -> None:
        """A live source's start-up (Binance: exchange clock, symbols checked against
        exchangeInfo with their filters as instruments, warm-up history stored) before
        any actor runs; the store writer does not run yet, so it writes through `conn`."""
        prepare = getattr(self.source, "prepare", None)
        if prepare is None:
            return
        from qtraderd.venues.binance.account_setup import AccountSetupError
        from qtraderd.venues.binance.rest import RestError
        from qtraderd.venues.binance.warmup import SymbolError

        self.service.notifier.status("warming up: backfilling history from the exchange")
        try:
            instruments = await prepare(conn)
            prepare_account = getattr(broker, "prepare", None)
            if prepare_account is not None:  # live: the account set up to trade them
                log.info("live trading on Binance USD-M %s (%s)", self.cfg.exchange.environment,
                         self.cfg.exchange.rest_url)
                await prepare_account(instruments)
        except (SymbolError, AccountSetupError) as exc:
            raise DaemonError(str(exc)) from None
        except RestError as exc:
            raise DaemonUnavailable(f"exchange start-up failed: {exc}") from None

    async def _run_chain(self, conn: sqlite3.Connection, symbols: list[str], interval_ms: int,
                         task_status: Any) -> None:
        cfg = self.cfg
        cap = cfg.runtime.channel_capacity
        source = self.source
        costs = CostModel.from_config(cfg.costs)
        feed_tx, feed_rx = trio.open_memory_channel[Step](1)
        mon_tx, mon_rx = trio.open_memory_channel[Step](cap)
        pred_tx, pred_rx = trio.open_memory_channel[Step](cap)
        learn_tx, learn_rx = trio.open_memory_channel[Step](cap)
        size_tx, size_rx = trio.open_memory_channel[Step](cap)
        risk_tx, risk_rx = trio.open_memory_channel[Step](cap)
        back_tx, back_rx = trio.open_memory_channel[Step](cap)
        rec_tx, rec_rx = trio.open_memory_channel[list[Step]](64)
        records_tx, records_rx = trio.open_memory_channel[Record](1024)
        cmd_tx, cmd_rx = trio.open_memory_channel[Command](16)
        pcmd_tx, pcmd_rx = trio.open_memory_channel[Command](16)
        lcmd_tx, lcmd_rx = trio.open_memory_channel[Command](16)
        xcmd_tx, xcmd_rx = trio.open_memory_channel[Command](4)
        self._records = records_tx
        self.channels = {"feed": feed_tx, "monitor": mon_tx, "predictor": pred_tx,
                         "learner": learn_tx, "sizer": size_tx, "risk": risk_tx,
                         "execution_b": back_tx, "recorder": rec_tx, "records": records_tx,
                         "risk_commands": cmd_tx, "predictor_commands": pcmd_tx,
                         "learner_commands": lcmd_tx, "execution_commands": xcmd_tx}
        barriers = Barriers(cfg.sizing.take_profit_pct / 100, cfg.sizing.stop_loss_pct / 100,
                            cfg.labels.horizon_bars)
        live = cfg.feed.source != "replay"
        if live:  # bars the feed stores outside its steps (late, history): loose records
            source.store = self._bar_store(records_tx.clone(), cfg.feed.interval)
        self.feed = FeedActor(source, feed_tx, interval_ms,
                              math.inf if live else cfg.feed.speed,  # live: paced by time
                              hold_at_end=not cfg.feed.exit_at_end)
        journal: tuple[tuple[str, str], ...] = ()
        if getattr(self.broker, "journal_first", False):  # live: orders possibly in flight
            journal = tuple(conn.execute(  # any live run's: one may have died unresumed
                "SELECT o.client_id, o.symbol FROM orders o JOIN runs r ON r.id = o.run_id "
                "WHERE r.mode = 'live' AND o.client_id IS NOT NULL AND o.status IN "
                "('new', 'accepted', 'partially_filled')").fetchall())
        self.execution = ExecutionActor(
            self.broker, feed_rx, mon_tx, back_rx, rec_tx,
            self.clock if isinstance(self.clock, ReplayClock) else None, run_id=self.run_id,
            checkpoint_steps=cfg.store.checkpoint_steps, journal=journal, commands=xcmd_rx,
            stale_after_ms=int(cfg.risk.max_signal_age_s * 1000) if cfg.mode == "live" else None,
            now_ms=self.clock.now_ms)
        self.monitor = MonitorActor(cfg.monitor, mon_rx, pred_tx)
        if cfg.plugins.enabled:  # loaded now, in name order: every run starts the same way
            self.plugins = PluginHost(cfg.plugins, self.plugins_dir)
            self.plugins.load_all()
        learning = cfg.learning.enabled
        self.predictor = PredictorActor(barriers, self.models or {}, pred_rx,
                                        learn_tx if learning else size_tx,
                                        models_dir=self.models_dir, commands=pcmd_rx,
                                        scored_wanted=learning)
        self.learner: LearnerActor | None = None
        if learning:
            if self.config_path is not None:
                self.job_config = write_job_config(cfg, self.state_dir)
            ro = connect(self.state_dir, readonly=True)
            try:
                registry = RegistryView.load(ro, self.models_dir)
            finally:
                ro.close()
            self.learner = LearnerActor(
                cfg, self.job_config, self.state_dir, self.models_dir, self.clock, registry,
                learn_rx, size_tx, pcmd_tx, records_tx.clone(), lcmd_rx,
                hold_clock=cfg.learning.replay_holds_clock and cfg.feed.source == "replay",
                run_id=self.run_id,
                data_start=stored_span(conn, symbols, cfg.feed.interval)[0],
                events=self.plugins.emit if self.plugins is not None else None)
        agent = restore(cfg.rl, cfg.seed, self.state_dir) if cfg.rl.enabled else None
        if agent is not None:
            log.info("RL sizer: Q-learning over %d stored states (epsilon %g, multipliers %s)",
                     agent.status()["states_visited"], cfg.rl.epsilon,
                     ", ".join(f"{m:g}" for m in cfg.rl.multipliers))
        self.sizer = SizerActor(cfg.sizing, cfg.monitor, costs, size_rx, risk_tx, agent=agent,
                                plugins=self.plugins)
        self.risk = RiskActor(cfg.risk, cfg.portfolio, costs, self.clock, interval_ms, risk_rx,
                              back_tx, cmd_rx, records=records_tx.clone(),
                              plugins=self.plugins,
                              stale_after_ms=int(cfg.risk.max_signal_age_s * 1000)
                              if cfg.mode == "live" else None)
        self.recorder = RecorderActor(self.state_dir, self.run_id, rec_rx, records_rx,
                                      cfg.store.flush_rows, cfg.store.flush_ms,
                                      keep_fds=(self.lock.fd,) if self.lock.fd else ())
        actors = [self.feed, self.execution, self.monitor, self.predictor, self.sizer,
                  self.risk, self.recorder]
        if self.learner is not None:
            actors.insert(4, self.learner)
        if self.resume is not None:
            self._restore(actors)
        self.supervisor = Supervisor(
            intensity=cfg.runtime.restart_intensity, period_s=cfg.runtime.restart_period_s,
            backoff_s=cfg.runtime.restart_backoff_s,
            backoff_max_s=cfg.runtime.restart_backoff_max_s, on_event=self._actor_event)
        self.api = ControlAPI(self, cmd_tx, lcmd_tx, xcmd_tx)
        assert self.socket_path is not None
        cc = cfg.control  # the default timeout leaves promote / rollback time to load models
        handlers = validated({**self.api.handlers(), "reload": self._ctl_reload},
                             lambda: symbols)  # every request's arguments checked first
        server = ControlServer(self.socket_path, handlers,
                               group=cc.group or None, max_request_bytes=cc.max_request_bytes,
                               request_timeout_s=cc.request_timeout_s,
                               max_connections=cc.max_connections)
        async with trio.open_nursery() as services:
            try:
                await services.start(server.serve)
            except RuntimeError as exc:  # socket taken by another daemon, path unusable
                raise DaemonError(str(exc)) from exc
            services.start_soon(self._signals)
            if self.plugins is not None:
                await services.start(self.plugins.run)
            services.start_soon(self._hangups)
            services.start_soon(self.service.run, self.supervisor, self.progress_line)
            if self.progress_every_s > 0:
                services.start_soon(self._progress)
            task_status.started(self)
            with steady_gc():
                await self.supervisor.run(actors)
            if self.plugins is not None:  # the last trades' events still reach notifiers
                await self.plugins.notifications.drain(cfg.runtime.shutdown_timeout_s / 2)
            services.cancel_scope.cancel()
        if self.supervisor.escalation is not None:
            log.error("daemon exiting: %s", self.supervisor.escalation)
            self.exit_code = EXIT_ESCALATED
        if not self.stopping:  # the daemon ends on its own: say so, as a stop would
            why = str(self.supervisor.escalation or "") or "end of data"
            log.info("stopping: %s", why)
            self.service.stopping(why)
            self.lock.mark_stopping()
        self._log_progress(final=True)

    @staticmethod
    def _bar_store(records: trio.MemorySendChannel[Record], interval: str) -> Any:
        from qtraderd.venues.binance.warmup import bar_record

        async def store(bars: Any) -> None:
            for bar in bars:
                await records.send(bar_record(bar, interval))
        return store

    def _restore(self, actors: list[Any]) -> None:
        """Every actor back to its state at the run's last checkpoint (the feed: to the
        bar after it; risk: plus the ctl commands given after it)."""
        r = self.resume
        assert r is not None
        for actor in actors:
            if actor.name in r.states:
                actor.restore_state(r.states[actor.name])
            elif actor.export_state() is not None:
                log.warning("resume: no stored state for actor %s; it starts empty",
                            actor.name)
        accounts = r.states.get("execution", {}).get("accounts", ())
        log.info("resuming run %d from %s (start %d): %d open positions, equity %s",
                 self.run_id, iso(r.ts + INTERVAL_MS[self.cfg.feed.interval]), r.starts + 1,
                 sum(a.open_positions for a in accounts),
                 " ".join(f"{a.quote} {a.equity:,.6g}" for a in accounts
                          if a.quote in self.quotes) or "-")

    def request_stop(self, why: str = "stop requested") -> None:
        """Graceful stop: the feed stops, in-flight steps drain, the recorder flushes."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: %s", why)
        self.service.stopping(why)
        self.lock.mark_stopping()  # a successor started now waits for us, not refused
        if self.feed is not None:
            self.feed.stop()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.request_stop(f"received {signal.Signals(signum).name}")
                break
        await trio.sleep(self.cfg.runtime.shutdown_timeout_s)
        log.error("shutdown took longer than %.1f s: cancelling actors",
                  self.cfg.runtime.shutdown_timeout_s)
        if self.supervisor is not None:
            self.supervisor.cancel()

    async def _hangups(self) -> None:
        """SIGHUP (`systemctl reload`): re-read the config file; a bad one is only logged."""
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                with contextlib.suppress(ReloadRejected):
                    reload_config(self)

    async def _ctl_reload(self, args: dict[str, Any]) -> Any:
        try:
            return reload_config(self)
        except ReloadRejected as exc:
            raise ControlError(f"config reload rejected: {exc}") from exc

    async def _progress(self) -> None:
        """A progress line every `progress_every_s` while steps go by; while none do (a
        live feed between bars, a held replay) one a minute is enough."""
        last_steps, last_at = -1, -math.inf
        while True:
            await trio.sleep(self.progress_every_s)
            steps = self.snapshot("feed").get("steps", 0)
            now = trio.current_time()
            if steps != last_steps or now - last_at >= IDLE_PROGRESS_S:
                self._log_progress()
                last_steps, last_at = steps, now

    def snapshot(self, name: str) -> Mapping[str, Any]:
        """Actor `name`'s published snapshot (empty before the actors start)."""
        return self.supervisor.snapshot(name) if self.supervisor is not None else EMPTY

    def actors(self) -> dict[str, dict[str, Any]]:
        return self.supervisor.status() if self.supervisor is not None else {}

    def progress_line(self, final: bool = False) -> str:
        """One line on what the daemon is doing: the progress log and systemd's STATUS."""
        feed = self.snapshot("feed")
        if not feed:
            return "starting"
        elapsed = max(1e-9, time.monotonic() - self.started_wall)
        ex = self.snapshot("execution")
        equity = " ".join(f"{a.quote} {a.equity:,.6g}" for a in ex["accounts"]
                          if a.quote in self.quotes)
        current = self.snapshot("learner").get("current_job")
        job = f" | learner: retraining {current}" if current and not final else ""
        done = "replay finished" if self.cfg.feed.source == "replay" else "feed finished"
        return (f"{done if final and feed['finished'] else 'progress'}: "
                f"{feed['bars']:,} bars ({feed['bars'] / elapsed:,.0f} bars/s) | data time "
                f"{iso(feed['last_ts'])} | trades {ex['trades']} | open "
                f"{len(ex['positions'])} | equity {equity or '-'} | risk "
                f"{self.snapshot('risk')['state']}{job}")

    def _log_progress(self, final: bool = False) -> None:
        if self.snapshot("feed"):
            log.info("%s", self.progress_line(final))

    def _finish(self, conn: sqlite3.Connection) -> None:
        if not self.run_id:
            return
        status = "escalated" if self.exit_code else (
            "stopped" if self.stopping else "finished")
        conn.execute("UPDATE runs SET ended_at=?, status=?, exit_code=? WHERE id=?",
                     (wall_iso(), status, self.exit_code,
                      self.run_id))

    def status(self) -> dict[str, Any]:
        feed = self.snapshot("feed")
        elapsed = max(1e-9, time.monotonic() - self.started_wall)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "run_id": self.run_id,
            "mode": self.cfg.mode,
            "source": self.cfg.feed.source,
            "credentials": self.credentials.source if self.credentials else "none",
            "state_dir": str(self.state_dir.resolve()),
            "models_dir": str(self.models_dir.resolve()),
            "clock": iso(self.clock.now_ms()),
            "clock_ms": self.clock.now_ms(),
            "bars": feed.get("bars", 0),
            "steps": feed.get("steps", 0),
            "bars_per_s": round(feed.get("bars", 0) / elapsed, 1),
            "risk_state": self.snapshot("risk").get("state", "-"),
            **({"feed": _feed_state(feed)} if self.cfg.feed.source != "replay" else {}),
            "stopping": self.stopping,
            "config": str(self.config_path) if self.config_path else "defaults (no --config)",
            "systemd": self.service.summary(),
            "actors": self.actors(),
            "queues": {name: f"{st.current_buffer_used}/{st.max_buffer_size}"
                       for name, st in ((n, ch.statistics()) for n, ch in self.channels.items())},
        }


FEED_KEYS = ("connected", "reconnects", "last_frame_age_s", "warmup_bars", "backfilled_bars",
             "history_bars", "late_bars", "skipped_steps", "malformed_frames",
             "rest_weight_used", "rest_weight_limit", "rest_banned", "clock_offset_ms",
             "next_step", "stream_error", "rest_error")


def _feed_state(feed: Mapping[str, Any]) -> dict[str, Any]:
    """A live feed's state for `ctl status` (from the feed actor's snapshot)."""
    return {"last_bar": feed.get("last_bar", "-"), "last_bar_ms": feed.get("last_ts"),
            **{k: feed[k] for k in FEED_KEYS if k in feed}}
