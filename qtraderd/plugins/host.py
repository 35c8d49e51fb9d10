"""The plugin host: the registry of loaded plugins, the only way actors call them.

Where plugins live at run time: actors share nothing but messages, so the registry is an
object owned by the daemon and handed to the sizer and risk actors at construction, like
the cost model. The actors call it synchronously inside `handle` (filters, risk rules,
events); the registry changes only in the host's own reload task. Everything runs on the
one Trio event loop, and neither `handle` nor a registry update awaits in the middle, so
a plugin is never swapped halfway through a hook call — no locks needed. The watcher
thread (qtraderd.runtime.dirwatch) only hands batches of changed paths to that task, and a
plugin's file is imported in a worker thread but installed on the loop.

Isolation (qtraderd.plugins.isolation): plugin code — import, setup, hooks, teardown —
runs in the plugin's own worker thread, never on the loop's. Every call has a deadline
(`hook_timeout_ms`; notifiers `notify_timeout_s`; imports `load_timeout_s`); a call past
it is abandoned and counts as an overrun, and `max_overruns` in a row disable the plugin.
Whatever a plugin raises, SystemExit and KeyboardInterrupt included, is caught in its
thread: such an attempt to stop the process disables the plugin at once (or rejects the
file) and the daemon keeps running. Real signals reach the main thread only, which runs
no plugin code, so SIGTERM/SIGINT still stop the daemon while a hook loops.

Order and determinism: filters and rules run sorted by NAME; the chain-derived state
kept here (regime run lengths for `SignalView.bars_in_regime`, approved entries per
symbol and UTC day for `AccountState.entries_today`) is updated from the actors' calls in
chain order. A replay with the same plugins therefore decides the same way every time.

Errors: a hook that raises, returns nonsense or overruns its deadline counts as an error
of its plugin — logged once per burst ("plugin error: ..."), counted, and after
`max_errors` in a row the plugin is disabled ("plugin disabled: ...") until its file
changes (or is touched). Filters and rules fail open: an error is "no opinion", and the
built-in limits still apply. Nothing a plugin does can take an actor down.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import watchfiles

from qtraderd.core.config import Config, PluginsConfig
from qtraderd.core.messages import AccountView, OrderIntent, Prediction, RiskEvent, Sample, Step
from qtraderd.plugins import views
from qtraderd.plugins.isolation import Lane, Overrun, PluginFailed
from qtraderd.plugins.loader import (
    LoadedPlugin,
    PluginRejected,
    describe,
    file_digest,
    forget,
    is_plugin_file,
    load_plugin,
)
from qtraderd.plugins.notify import Notifications
from qtraderd.plugins.results import BadResult, checked, filter_result, risk_result
from qtraderd.runtime import secrets
from qtraderd.runtime.dirwatch import watch_in_thread

log = logging.getLogger("qtraderd.plugins")

ACTIVE, REJECTED, DISABLED, REMOVED = "active", "rejected", "disabled", "removed"
DAY_MS = 86_400_000
SETTLE_ROUNDS = 25  # a file still changing after this many settle periods is loaded anyway
STUCK_LIMIT = 4  # abandoned calls of one plugin still running: disabled, whatever else
_FAILED: Any = object()  # a hook call that raised or overran (already counted)
# settings whose values are masked in every log line (a webhook URL carries its token)
SECRET_KEY = ("url", "token", "secret", "password", "passwd", "key", "auth", "header",
              "cookie", "credential")


@dataclass
class PluginState:
    """One plugin file and what happened to it (what `ctl plugins` shows)."""

    path: Path
    name: str
    state: str
    plugin: LoadedPlugin | None = None
    calls: int = 0
    errors: int = 0
    consecutive: int = 0
    overruns: int = 0  # in a row
    last_error: str = ""
    note: str = ""  # e.g. why the latest version of the file was rejected
    sha256: str = ""  # of the last file seen (loaded or rejected)
    hooks: tuple[str, ...] = field(default_factory=tuple)
    blocked_by: Path | None = None  # rejected because that file's plugin has our NAME
    lane: Lane | None = field(default=None, repr=False)  # where its code runs

    @property
    def version(self) -> str:
        return self.plugin.version if self.plugin is not None else ""

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version or "-", "state": self.state,
                "hooks": ",".join(self.hooks) or "-", "calls": self.calls,
                "errors": self.errors, "last_error": self.note or self.last_error or "",
                "file": self.path.name}


class PluginHost:
    def __init__(self, cfg: PluginsConfig, directory: Path | None) -> None:
        """`directory`: the plugins folder (None: no plugins; the daemon's tests). Made
        absolute once, here: the watcher reports absolute paths, and the registry's keys
        must be the same paths (a relative `plugins` never matched them)."""
        self.cfg = cfg
        _mask_secrets(cfg.settings)  # before any plugin code could log them
        self.directory = Path(directory).resolve() if directory is not None else None
        self.states: dict[Path, PluginState] = {}
        self.filters: list[PluginState] = []
        self.rules: list[PluginState] = []
        self.notifiers: list[PluginState] = []
        self.notifications = Notifications(self, cfg.notify_queue, cfg.notify_timeout_s)
        self.watching = False
        self._dirty: set[Path] = set()
        self._forced: set[Path] = set()  # reload even if the bytes did not change
        self._wake = trio.Event()
        self._regimes: dict[str, tuple[str, int]] = {}
        self._entries: dict[str, int] = {}
        self._entries_day = -1
        self.reloads = 0

    # -- the registry ------------------------------------------------------------------
    def _settings(self, name: str) -> Mapping[str, Any]:
        return self.cfg.settings.get(name, {})

    def load_all(self) -> None:
        """Start-up: load every plugin file in name order, synchronously (deterministic)."""
        if self.directory is None:
            return
        if not self.directory.is_dir():
            log.warning("plugins: directory %s does not exist: no plugins (create it and "
                        "restart to use plugins)", self.directory)
            return
        paths = sorted(p for p in self.directory.iterdir() if is_plugin_file(p))
        timeout = self.cfg.load_timeout_s
        started = [(path, *self._start_load(path)) for path in paths]  # all at once
        deadline = time.monotonic() + timeout
        for path, lane, job in started:
            try:
                result = lane.wait(job, max(0.0, deadline - time.monotonic()))
            except Overrun:
                result = _stuck_import(timeout)
            self.install(path, result, lane)
        log.info("plugins: %d active from %s (%s)", len(self.active()), self.directory,
                 ", ".join(f"{s.name} {s.version}" for s in self.active()) or "none")

    def reconfigure(self, cfg: Config) -> None:
        """A config reload: limits apply at once; a plugin whose settings table changed is
        reloaded, so its setup sees the new table. (`dir` and `notify_queue` need a
        restart.)"""
        old = self.cfg.settings
        self.cfg = cfg.plugins
        _mask_secrets(self.cfg.settings)
        self.notifications.timeout_s = cfg.plugins.notify_timeout_s
        changed = {st.path for st in self.states.values() if st.state != REMOVED
                   and old.get(st.name) != self.cfg.settings.get(st.name)}
        if changed:
            self._forced |= changed
            self._changed(changed)

    def _load(self, path: Path) -> LoadedPlugin | PluginRejected:
        """Runs in the file's lane (a worker thread)."""
        try:
            return load_plugin(path, self._settings)
        except PluginRejected as exc:
            return exc

    def _start_load(self, path: Path) -> tuple[Lane, Any]:
        lane = Lane(path.stem)
        return lane, lane.submit(self._load, path)

    async def _load_async(self, path: Path) -> tuple[Lane, LoadedPlugin | PluginRejected]:
        """Import in the file's own thread, awaited with `load_timeout_s` (a looping import
        is abandoned and the file rejected; other files load meanwhile)."""
        lane = Lane(path.stem)
        timeout = self.cfg.load_timeout_s
        try:
            return lane, await lane.acall(timeout, self._load, path)
        except Overrun:
            return lane, _stuck_import(timeout)
        except PluginFailed as exc:  # not from plugin code (load_plugin catches that)
            return lane, PluginRejected(f"load failed: {describe(exc.error)}")

    def active(self) -> list[PluginState]:
        return sorted((s for s in self.states.values() if s.state == ACTIVE),
                      key=lambda s: s.name)

    def install(self, path: Path, result: LoadedPlugin | PluginRejected,
                lane: Lane | None = None) -> None:
        """Put a load result into effect (on the event loop, between two messages);
        `lane`: the thread it was loaded in, which runs its hooks from now on."""
        st = self.states.get(path)
        if isinstance(result, PluginRejected):
            if lane is not None:
                lane.close()
            self._rejected(path, st, result.name or path.stem, result.reason, result.sha256)
            return
        lane = lane or Lane(result.name)
        clash = next((s for s in self.states.values() if s.name == result.name
                      and s.path != path and s.state in (ACTIVE, DISABLED)), None)
        if clash is not None:
            self._teardown(result, lane)
            lane.close()
            forget(result)
            self._rejected(path, st, result.name,
                           f"NAME {result.name!r} is already used by {clash.path.name}",
                           result.sha256, blocked_by=clash.path)
            return
        previous = st.plugin if st is not None and st.state in (ACTIVE, DISABLED) else None
        if st is not None:
            self._retire(st)
        self.states[path] = PluginState(path, result.name, ACTIVE, result,
                                        sha256=result.sha256, hooks=tuple(result.hooks),
                                        lane=lane)
        self._rebuild()
        log.info("plugin loaded: %s %s (%s): hooks %s%s", result.name, result.version, path,
                 ", ".join(result.hooks), f" (replaces {previous.version})"
                 if previous is not None else "")

    def _rejected(self, path: Path, st: PluginState | None, name: str, reason: str,
                  digest: str, blocked_by: Path | None = None) -> None:
        """Record a refusal. `digest` is of the refused bytes: the file may already have
        changed again, and that newer version must not be mistaken for this one."""
        keeps = st is not None and st.plugin is not None and st.state == ACTIVE
        log.error("plugin rejected: %s (%s): %s%s", name, path, reason,
                  f"; version {st.version} keeps running" if keeps and st else "")
        if st is not None and st.plugin is not None and st.state in (ACTIVE, DISABLED):
            st.note = f"file rejected: {reason}"
            st.sha256 = digest
            return
        self.states[path] = PluginState(path, name, REJECTED, None, last_error=reason,
                                        sha256=digest, blocked_by=blocked_by)
        self._rebuild()

    def remove(self, path: Path) -> None:
        st = self.states.get(path)
        if st is None or st.state == REMOVED:
            return
        self._retire(st)
        log.info("plugin removed: %s %s (%s)%s", st.name, st.version or "-", path,
                 " (it was rejected)" if st.state == REJECTED else "")
        if st.state == REJECTED:  # never ran: nothing to remember (nor to fail `verify`)
            del self.states[path]
        else:
            st.state, st.note, st.sha256 = REMOVED, "", ""
        self._rebuild()
        # a file refused only because this one held its NAME gets another chance (a
        # rename whose "added" event came before its "deleted" one, say)
        waiting = {s.path for s in self.states.values()
                   if s.state == REJECTED and s.blocked_by == path}
        if waiting:
            self._forced |= waiting
            self._changed(waiting)

    def disable(self, st: PluginState, why: str) -> None:
        if st.state != ACTIVE:
            return
        log.error("plugin disabled: %s %s (%s): %s; fix the file (or touch it) to reload it",
                  st.name, st.version, st.path, why)
        self._retire(st)
        st.state = DISABLED
        st.note = f"disabled: {why}"  # what `ctl plugins` shows as its last_error
        self._rebuild()

    def _retire(self, st: PluginState) -> None:
        """Tear a running plugin down (once: disabled and removed ones already were)."""
        if st.plugin is not None and st.state == ACTIVE and st.lane is not None:
            self._teardown(st.plugin, st.lane)
        if st.plugin is not None:
            forget(st.plugin)
        if st.lane is not None:
            st.lane.close()

    def _teardown(self, plugin: LoadedPlugin, lane: Lane) -> None:
        if plugin.teardown is None:
            return
        try:
            lane.call(self.cfg.hook_timeout_ms / 1000.0, plugin.teardown)
        except (Overrun, PluginFailed) as exc:
            log.error("plugin error: %s %s (%s) in teardown: %s", plugin.name, plugin.version,
                      plugin.path.name, exc)

    def _rebuild(self) -> None:
        active = self.active()
        self.filters = [s for s in active if "filter_signal" in s.hooks]
        self.rules = [s for s in active if "check_order" in s.hooks]
        self.notifiers = [s for s in active if "notify" in s.hooks]

    # -- errors ------------------------------------------------------------------------
    def failed(self, st: PluginState, hook: str, error: str,
               exc: BaseException | None = None) -> None:
        """Count an error; log the first of a burst; disable after max_errors in a row."""
        st.errors += 1
        st.consecutive += 1
        st.last_error = f"{hook}: {error}"
        if st.consecutive == 1:
            log.error("plugin error: %s %s (%s) in %s: %s (further errors in a row are "
                      "counted, not logged)", st.name, st.version, st.path.name, hook, error,
                      exc_info=exc)
        limit = self.cfg.max_errors
        if limit and st.consecutive >= limit:
            self.disable(st, f"{st.consecutive} errors in a row (last: {st.last_error})")

    @staticmethod
    def succeeded(st: PluginState) -> None:
        st.consecutive = 0
        st.overruns = 0

    def call_failed(self, st: PluginState, hook: str, exc: Overrun | PluginFailed) -> None:
        """A call through the plugin's lane raised (`PluginFailed`) or overran."""
        if isinstance(exc, PluginFailed):
            error = exc.error
            if isinstance(error, BadResult):  # its message says what came back
                self.failed(st, hook, exc.text)
                return
            if isinstance(error, Exception):
                self.failed(st, hook, f"{type(error).__name__}: {exc.text}", error)
                return
            # SystemExit, KeyboardInterrupt, ...: the plugin tried to stop the process
            self.failed(st, hook, describe(error))
            self.disable(st, f"{hook} raised {describe(error)}")
            return
        st.overruns += 1
        self.failed(st, hook, f"overran: {exc}")
        stuck = st.lane.stuck() if st.lane is not None else 0
        limit = self.cfg.max_overruns
        if limit and st.overruns >= limit:
            self.disable(st, f"{st.overruns} overruns in a row of its "
                         f"{hook} deadline (last: {exc})")
        elif stuck >= STUCK_LIMIT:
            self.disable(st, f"{stuck} abandoned calls are still running")

    def _call(self, st: PluginState, hook: str, check: Callable[[Any], Any], *args: Any) -> Any:
        """One chain hook, in the plugin's thread, within `hook_timeout_ms` (blocking: the
        chain is synchronous), its answer checked there too (plugins/results.py).
        `_FAILED` when it raised, returned nonsense or overran (already counted)."""
        st.calls += 1
        assert st.plugin is not None and st.lane is not None
        try:
            return st.lane.call(self.cfg.hook_timeout_ms / 1000.0, checked, check,
                                st.plugin.hooks[hook], *args)
        except (Overrun, PluginFailed) as exc:
            self.call_failed(st, hook, exc)
            return _FAILED

    # -- hooks: signal filters (sizer) ---------------------------------------------------
    def observe_samples(self, samples: Iterable[Sample]) -> None:
        """Every step, in chain order: how long each symbol has been in its regime."""
        regimes = self._regimes
        for s in samples:
            prev = regimes.get(s.symbol)
            regimes[s.symbol] = (s.regime, prev[1] + 1 if prev and prev[0] == s.regime else 1)

    def filter_signal(self, p: Prediction, side: int, confidence: float, edge: float,
                      sample: Sample, price: float, step: Step) -> tuple[float, str]:
        """(factor, reason): 1 and "" to keep; 0 and "plugin:NAME:why" for a veto; a
        factor in between with the reason of the last filter that scaled."""
        if not self.filters:
            return 1.0, ""
        regime = self._regimes.get(p.symbol)
        age = regime[1] if regime is not None and regime[0] == sample.regime else 1
        view = views.signal_view(p, side, confidence, edge, sample, price, step, age)
        factor, reason = 1.0, ""
        for st in list(self.filters):
            if st.state != ACTIVE or st.plugin is None:
                continue
            out = self._call(st, "filter_signal", filter_result, view)
            if out is _FAILED:
                continue
            self.succeeded(st)
            if out is None or out[0] >= 1.0:
                continue
            factor *= out[0]
            reason = f"plugin:{st.name}:{out[1] or 'veto'}"
            if factor <= 0.0:
                return 0.0, reason
        return factor, reason

    # -- hooks: risk rules (risk) --------------------------------------------------------
    def _roll_day(self, ts: int) -> None:
        day = ts // DAY_MS
        if day != self._entries_day:
            self._entries_day = day
            self._entries.clear()

    def check_order(self, it: OrderIntent, qty: float, acct: AccountView, step: Step,
                    risk_state: str) -> str | None:
        """None to allow, else the denial's reason code "plugin:NAME:code"."""
        if not self.rules:
            return None
        self._roll_day(step.close_ts)
        order = views.order_view(it, qty)
        account = views.account_state(acct, step, risk_state, self._entries.get(it.symbol, 0),
                                       sum(self._entries.values()))
        for st in list(self.rules):
            if st.state != ACTIVE or st.plugin is None:
                continue
            code = self._call(st, "check_order", risk_result, order, account)
            if code is _FAILED:
                continue
            self.succeeded(st)
            if code is not None:
                return f"plugin:{st.name}:{code or 'deny'}"
        return None

    def note_entry(self, symbol: str, ts: int) -> None:
        """Risk approved an entry for `symbol` (counts for `entries_today`)."""
        self._roll_day(ts)
        self._entries[symbol] = self._entries.get(symbol, 0) + 1

    # -- events (notifiers) ----------------------------------------------------------------
    def emit(self, kind: str, ts: int, data: dict[str, Any]) -> None:
        """Queue an event for the notifiers; never blocks (a full queue drops and counts)."""
        if self.notifiers:
            self.notifications.put(kind, ts, data)

    def step_events(self, step: Step, risk_events: Iterable[RiskEvent]) -> None:
        """The events of one finished risk step: entries filled, trades closed, risk and
        symbol state changes."""
        if not self.notifiers:
            return
        for f in step.fills:
            if f.reason == "entry":
                self.emit("trade_opened", f.ts, views.fill_opened(f))
        for t in step.closed:
            self.emit("trade_closed", t.exit_ts, views.trade_closed(t))
        for e in risk_events:
            self.emit_risk_event(e)

    def emit_risk_event(self, e: RiskEvent) -> None:
        kind, data = views.risk_event(e)
        self.emit(kind, e.ts, data)

    # -- the host's tasks ----------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Notifier delivery, and (with a directory) the watcher and the reload task."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.notifications.run)
            if self.directory is not None and self.directory.is_dir():
                nursery.start_soon(self._reload_loop)
                nursery.start_soon(self._watch)
                self.watching = True
            task_status.started()

    async def _watch(self) -> None:
        assert self.directory is not None
        directory = self.directory

        def wanted(_change: watchfiles.Change, path: str) -> bool:
            return is_plugin_file(path) and Path(path).parent == directory

        def paths(changes: set[tuple[watchfiles.Change, str]]) -> set[Path]:
            return {Path(p) for _c, p in changes}

        try:
            await watch_in_thread(directory, watch_filter=wanted, process=paths,
                                  deliver=self._changed, recursive=False)
        finally:
            self.watching = False

    def _changed(self, paths: set[Path]) -> None:
        self._dirty |= paths
        self._wake.set()

    async def _reload_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self._settle()
            dirty, self._dirty = self._dirty, set()
            await self._reload_batch(dirty)

    async def _settle(self) -> None:
        """Wait until no watched file changed size or mtime for one settle period: an
        editor or a copy still writing is given time to finish."""
        period = self.cfg.settle_ms / 1000.0
        before = _stamps(self._dirty)
        for _ in range(SETTLE_ROUNDS):
            await trio.sleep(period)
            now = _stamps(self._dirty)
            if now == before:
                return
            before = now

    async def reload(self, path: Path) -> None:
        """Load, replace or remove the plugin of one file, as it is on disk now."""
        await self._reload_batch({path})

    async def _reload_batch(self, paths: set[Path]) -> None:
        """Removals first (a rename frees the NAME), then every changed file imported at
        once, each in its own thread with its own deadline (a looping import delays no
        other file beyond that deadline), installed in name order (deterministic)."""
        for path in sorted(p for p in paths if not p.exists()):
            self.remove(path)
        wanted = [p for p in sorted(paths) if p.exists() and self._needs_load(p)]
        if not wanted:
            return
        self.reloads += len(wanted)
        results: dict[Path, tuple[Lane, LoadedPlugin | PluginRejected]] = {}

        async def load(path: Path) -> None:
            results[path] = await self._load_async(path)

        async with trio.open_nursery() as nursery:
            for path in wanted:
                nursery.start_soon(load, path)
        for path in wanted:
            lane, result = results[path]
            if path.exists():
                self.install(path, result, lane)
            elif isinstance(result, LoadedPlugin):  # deleted while it loaded
                self._teardown(result, lane)
                lane.close()
                forget(result)

    def _needs_load(self, path: Path) -> bool:
        st = self.states.get(path)
        forced = path in self._forced
        self._forced.discard(path)
        if st is not None and st.state in (ACTIVE, REJECTED) and not forced:
            try:
                return file_digest(path) != st.sha256
            except OSError:
                return False
        return True  # new, removed before, disabled (a touch revives it) or forced

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory) if self.directory is not None else "none",
            "watching": self.watching,
            "max_errors": self.cfg.max_errors,
            **self.notifications.status(),
            "plugins": [s.row() for s in sorted(self.states.values(),
                                                key=lambda s: (s.name, s.path.name))],
        }

    def summary(self) -> str:
        """One line for `ctl modules`."""
        counts: dict[str, int] = {}
        for s in self.states.values():
            counts[s.state] = counts.get(s.state, 0) + 1
        return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none loaded"


def _stuck_import(timeout: float) -> PluginRejected:
    return PluginRejected(f"import did not finish within {timeout:g} s (a loop or a wait "
                          "at import time?); its thread is abandoned")


def _mask_secrets(settings: Mapping[str, Any]) -> None:
    """Values of secret-looking settings (`url`, `token`, an `Authorization` or `X-Api-Key`
    header, ...) are masked in every log line from now on: an error message quoting a
    webhook URL or a header must not put the token in the journal. Decided per key, at
    any depth, so `headers = {Content-Type = "application/json"}` stays readable."""
    for key, value in settings.items():
        name = str(key).lower()
        if isinstance(value, Mapping):
            _mask_secrets(value)
        elif (isinstance(value, str) and not name.endswith(("_env", "_file"))
              and any(word in name for word in SECRET_KEY)):
            secrets.register(value)  # (`url_env` names where the secret is: not one)


def _stamps(paths: Iterable[Path]) -> dict[Path, tuple[int, int] | None]:
    out: dict[Path, tuple[int, int] | None] = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out[p] = None
        else:
            out[p] = (st.st_size, st.st_mtime_ns)
    return out

