"""Logging: one readable line per event on stderr, with stable wording for key events.

Key lines operators grep for (README, "Operations"): "qtraderd ... starting",
"config in force", "Retraining Orchestrator", "ready", "progress", "risk state",
"actor restarted", "retrain started", "retrain failed", "gate decision",
"model deployed", "model rolled back", "model rejected", "serving model",
"config reloaded", "config reload rejected", "watchdog", "stopping", "replay finished".

Under systemd, stderr is a stream to journald, which timestamps every line itself and
takes its priority from a `<N>` syslog prefix (sd-daemon(3)). So when `$JOURNAL_STREAM`
names our stderr, every line — each line of a multi-line message or traceback included,
since journald makes each its own entry — starts with the record's priority and carries
no timestamp; `journalctl -p warning -u qtraderd` then works. Elsewhere (a terminal, a
file, a test) lines keep their timestamp. The wording is the same either way. Learner
jobs and the store writer inherit the daemon's stderr and use this module too, so their
lines reach the journal the same way.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import IO, Any

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
JOURNAL_ENV = "JOURNAL_STREAM"


def priority(levelno: int) -> int:
    """syslog priority of a logging level: DEBUG 7, INFO 6, WARNING 4, ERROR 3, CRITICAL 2."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def journal_stream(stream: IO[Any] | None = None,
                   env: Mapping[str, str] | None = None) -> bool:
    """Is `stream` (default stderr) the journald stream systemd connected us to?

    `$JOURNAL_STREAM` is "device:inode" of that stream. It is inherited by anything we
    start, so it is compared with the stream's fstat() (as systemd.exec(5) recommends):
    a child whose stderr was redirected elsewhere keeps plain, timestamped lines.
    """
    raw = (os.environ if env is None else env).get(JOURNAL_ENV, "")
    dev, sep, ino = raw.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((sys.stderr if stream is None else stream).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):  # no real file descriptor, bad value
        return False


class JournalFormatter(logging.Formatter):
    """`<N>` on every line of the formatted record, and no timestamp (journald adds it)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def formatter(stream: IO[Any] | None = None) -> logging.Formatter:
    """The right formatter for `stream` (default stderr): journald's or the plain one."""
    return JournalFormatter() if journal_stream(stream) else logging.Formatter(FORMAT,
                                                                               DATEFMT)


def prefix(levelno: int = logging.ERROR) -> str:
    """`<N>` for a line written to stderr without logging (e.g. the CLI's error line)."""
    return f"<{priority(levelno)}>" if journal_stream() else ""


def setup(level: str | int = "INFO") -> None:
    """Root logger to stderr at `level`; under journald also route what would otherwise
    bypass the formatter (uncaught exceptions, warnings) through it."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    root.addHandler(handler)
    root.setLevel(level)
    # watchfiles says "N changes detected" at INFO for every file event: our own
    # "serving model" / "model rejected" lines are the ones that matter.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    # httpx logs every request at INFO with its full URL: a notifier's webhook URL
    # carries its token, and a line per POST is noise anyway (plugins' errors are ours)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if isinstance(handler.formatter, JournalFormatter):
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(exc_type: type[BaseException], exc: BaseException,
                  tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("qtraderd").critical("uncaught exception, exiting",
                                           exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("qtraderd").critical("uncaught exception in thread %s", name,
                                           exc_info=(args.exc_type, args.exc_value,
                                                     args.exc_traceback))
