"""Logging: one readable line per event on stderr, with stable wording for key events.

Key lines operators grep for: "risk state HALTED", "actor restarted", "model rejected",
"serving model", "stopping", "replay finished". Under journald (issue: service) the
format gains syslog priority prefixes; the wording stays the same.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup(level: str = "INFO") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    # watchfiles says "N changes detected" at INFO for every file event: our own
    # "serving model" / "model rejected" lines are the ones that matter.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
