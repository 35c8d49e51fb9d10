"""systemd integration: readiness, status, reload and stop notifications, and the watchdog.

systemd's `Type=notify` protocol is one datagram per message on the AF_UNIX socket named
by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), each a few
`KEY=value` lines. It is small enough to speak directly; a library would add a
dependency for twenty lines. Without `$NOTIFY_SOCKET` (a terminal, the tests, any other
supervisor) every call here is a no-op.

What the daemon says, and when (qtraderd.runtime.daemon wires it):
* `READY=1` once the store is open, models, the registry and the RL table are restored
  and every actor's task has started (Supervisor.started) — not when the process merely
  exists, so `systemctl start` returns when the daemon can really answer and trade;
* `STATUS=` the progress line (bars, data time, trades, equity, risk state, learner
  job), at most once a second and only when it changed — `systemctl status` shows it;
* `RELOADING=1` ... `READY=1` around a config reload (qtraderd.runtime.reload); a refused
  reload puts back the STATUS shown before it (never leaves "reloading" behind);
* `STOPPING=1` as soon as a stop is requested (or the daemon exits on its own), with
  `STATUS=stopping: <why>`; from then on no progress line replaces it;
* `WATCHDOG=1` every `$WATCHDOG_USEC / 2`, from a task of its own, only while the
  daemon is healthy (see Watchdog): a daemon that is alive but stuck gets killed and
  restarted by systemd instead of sitting there holding positions it no longer manages.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from qtraderd.runtime.supervisor import Supervisor

log = logging.getLogger("qtraderd.service")

NOTIFY_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV = "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"


def notify_address(raw: str | None) -> str | bytes | None:
    """The sendto() address for a $NOTIFY_SOCKET value; None if unset or unsupported.

    `@name` is Linux's abstract namespace: a leading NUL byte instead of the '@'. Other
    transports systemd may name (vsock: in newer versions) are not used by a host service.
    """
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """WatchdogSec in seconds if the watchdog is meant for this process, else None.

    `$WATCHDOG_PID`, when set, names the process the watchdog belongs to: a child that
    inherited the environment (learner jobs, the store writer) must not think it is
    the one to ping.
    """
    raw_pid = env.get(WATCHDOG_PID_ENV, "")
    if raw_pid and raw_pid != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(env.get(WATCHDOG_USEC_ENV, ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """Sends sd_notify messages; every method is a cheap no-op when not under systemd.

    Sending never blocks or raises: the socket is non-blocking (a full queue drops the
    message, which the next status or ping replaces) and errors are logged once.
    """

    def __init__(self, address: str | bytes | None = None,
                 watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s if address is not None else None
        self._sock: socket.socket | None = None
        self._last_status = ""  # what systemd shows: the last STATUS that left the process
        self._before_reload = ""
        self.stopped = False  # STOPPING=1 sent: STATUS is "stopping: ..." from then on
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(notify_address(env.get(NOTIFY_ENV)), watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send one message of `KEY=value` fields; True if it left the process."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except BlockingIOError:
            log.debug("sd_notify queue full; dropped %r", fields)
            return False
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %r: %s (further failures not logged)",
                            self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self._send("READY=1", status=None if self.stopped else status)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) match the reload to this
        # message; older versions ignore the field.
        self._before_reload = self._last_status
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send("RELOADING=1", f"MONOTONIC_USEC={usec}",
                          status=None if self.stopped else "reloading the configuration")

    def reload_refused(self, fallback: str) -> bool:
        """READY=1 after a refused reload, with the STATUS shown before it (`fallback` if
        there was none): nothing changed, so neither does what systemd shows."""
        return self.ready(self._before_reload or fallback)

    def stopping(self, status: str | None = None) -> bool:
        sent = self._send("STOPPING=1", status=status)
        self.stopped = True
        return sent

    def status(self, text: str) -> bool:
        """STATUS=text, unless it is what systemd already shows; nothing once stopping
        (the progress line must not replace "stopping: <why>")."""
        if self.stopped:
            return False
        return self._send(status=text)

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up (or stop) time, e.g. while training the first models."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def _send(self, *fields: str, status: str | None = None) -> bool:
        """`fields` plus STATUS=status when that differs from what systemd shows; the
        shown status changes only when the message really left (a dropped one is not
        shown, so the same text is sent again next time)."""
        line = None if status is None else " ".join(status.split())  # one line
        out = list(fields)
        if line is not None and line != self._last_status:
            out.append(f"STATUS={line}")
        if not out:
            return False
        sent = self.notify(*out)
        if sent and line is not None:
            self._last_status = line
        return sent

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """Pings systemd only while the event loop and every actor make progress.

    Two ways to be stuck, two signals:
    * the event loop is blocked (a synchronous call that never returns, a deadlock in a
      C extension): this task does not run, so no pings — systemd notices by itself;
    * the loop runs but an actor is wedged (awaiting something that never comes while
      messages pile up for it): detected here. An actor is wedged when it has a backlog
      (Actor.backlog: messages waiting that it could take) and its `processed` count has
      not moved for longer than `stall_s` (default: the whole watchdog interval). An
      idle actor — nothing waiting — is healthy however long it sleeps. In the lockstep
      chain a step stuck in any actor leaves the next bar waiting at execution, so
      execution is the one reported; the log line lists every actor's count, and the
      one that lags behind is the culprit. While an actor declares a deliberate wait
      (`busy_until`: a learner job holding the replay clock, bounded by its timeout)
      nothing is called wedged.
    Once wedged, pings stop; systemd kills the daemon one watchdog interval after the
    last ping and `Restart=on-failure` starts a fresh one. If the actor recovers first,
    pings resume and the episode is logged.
    """

    def __init__(self, notifier: Notifier, supervisor: Supervisor, interval_s: float,
                 stall_s: float | None = None) -> None:
        self.notifier = notifier
        self.supervisor = supervisor
        self.interval_s = interval_s
        self.period_s = interval_s / 2
        self.stall_s = interval_s if stall_s is None else stall_s
        self.pings = 0
        self.problems: list[str] = []
        self._seen: dict[str, tuple[int, float]] = {}  # actor -> (processed, since)

    def check(self, now: float) -> list[str]:
        """What is wrong right now (empty: healthy); updates each actor's progress mark."""
        handles = self.supervisor.handles
        if any(h.actor.busy_until is not None and h.actor.busy_until > now
               for h in handles.values()):
            self._seen.clear()  # stall clocks start afresh when the deliberate wait ends
            return []
        problems = []
        for name, h in handles.items():
            if h.state in ("stopped", "failed"):
                self._seen.pop(name, None)
                continue
            processed, backlog = h.actor.processed, h.actor.backlog()
            seen = self._seen.get(name)
            # a restart's backoff is the supervisor's deliberate pause, not a wedge
            if seen is None or processed != seen[0] or backlog == 0 or h.state == "restarting":
                self._seen[name] = (processed, now)
                continue
            stalled = now - seen[1]
            if stalled > self.stall_s:
                problems.append(f"actor {name} has {backlog} waiting message(s) and handled "
                                f"none for {stalled:.0f} s")
        return problems

    async def run(self) -> None:
        log.info("watchdog: pinging systemd every %.3g s while every actor makes progress "
                 "(WatchdogSec %.3g s)", self.period_s, self.interval_s)
        next_at = trio.current_time() + self.period_s
        while True:
            await trio.sleep_until(next_at)
            now = trio.current_time()
            if now - next_at > self.period_s:
                log.warning("watchdog: the event loop was blocked for %.1f s", now - next_at)
            # from now, not from the missed slot: after a blocked loop the next ping still
            # waits a whole period (a catch-up ping would follow this one at once)
            next_at = now + self.period_s
            problems = self.check(now)
            if problems:
                if not self.problems:
                    counts = ", ".join(f"{n} {h.actor.processed}"
                                       for n, h in self.supervisor.handles.items())
                    log.error("watchdog: withholding keep-alive pings (systemd will restart "
                              "the daemon): %s (messages handled: %s)", "; ".join(problems),
                              counts)
                self.problems = problems
                continue
            if self.problems:
                log.warning("watchdog: healthy again, keep-alive pings resumed")
                self.problems = []
            if self.notifier.watchdog():
                self.pings += 1


class Service:
    """The daemon's side of the conversation with systemd (a no-op without it)."""

    def __init__(self, notifier: Notifier | None = None, status_every_s: float = 1.0) -> None:
        self.notifier = Notifier.from_env() if notifier is None else notifier
        self.status_every_s = status_every_s
        self.watchdog: Watchdog | None = None
        self.ready = False

    async def run(self, supervisor: Supervisor, status_line: Callable[[], str]) -> None:
        """Wait until every actor runs, say READY=1, then keep STATUS and the watchdog."""
        n = self.notifier
        if not n.enabled:
            return
        await supervisor.started.wait()
        self.ready = True
        n.ready(status_line())
        log.info("ready: notified systemd (%d actors running)", len(supervisor.handles))
        async with trio.open_nursery() as nursery:
            if n.watchdog_s:
                self.watchdog = Watchdog(n, supervisor, n.watchdog_s)
                nursery.start_soon(self.watchdog.run)
            while True:
                await trio.sleep(self.status_every_s)
                n.status(self.status_text(status_line()))

    def status_text(self, line: str) -> str:
        wd = self.watchdog
        if wd is not None and wd.problems:
            return f"{line} | WEDGED: {wd.problems[0]}"
        return line

    def reloading(self) -> None:
        if self.ready:  # before READY=1 systemd is still waiting for the start to finish
            self.notifier.reloading()

    def reloaded(self, status: str) -> None:
        """READY=1 after RELOADING=1 and a reload that applied."""
        if self.ready:
            self.notifier.ready(status)

    def reload_refused(self, status: str) -> None:
        """READY=1 after RELOADING=1 and a refused reload: the old config stays, and so
        does the STATUS shown before (`status` if there was none)."""
        if self.ready:
            self.notifier.reload_refused(status)

    def stopping(self, why: str) -> None:
        self.notifier.stopping(f"stopping: {why}")

    def summary(self) -> dict[str, Any]:
        """For `ctl status`: is systemd listening, and is the watchdog happy."""
        wd = self.watchdog
        return {"notify": self.notifier.enabled, "ready_sent": self.ready,
                "watchdog_s": self.notifier.watchdog_s,
                "watchdog_pings": wd.pings if wd else 0,
                "watchdog_problems": list(wd.problems) if wd else []}
