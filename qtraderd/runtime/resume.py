"""Starting a run: resume the last one if it did not finish, or begin a new one.

A run's actors commit their state with every checkpoint step (qtraderd.core.checkpoint),
so whatever stopped the process — `kill -9`, a watchdog abort, the OOM killer, an
escalation (exit 3), SIGTERM before the data ended — the store holds a consistent cut.
`qtraderd run` on such a state directory **continues that run**: same run id, the account,
positions, pending orders, risk state, RL table and models' bookkeeping as of the last
checkpoint, and the feed from the next bar. A run is never left `running` by a start: it
is continued (its `starts` counter and a `run_starts` row say so) or, with
`qtraderd run --fresh`, closed as `crashed` and a new run begins from the configured
balances.

Resuming with different trading settings would mix two experiments in one run, so a
change to any key in RESUME_KEYS is refused (exit 2) naming the keys; other keys
(logging, control socket, risk limits, learning thresholds...) may change and are listed.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

from qtraderd.core.checkpoint import StateError, unpack
from qtraderd.core.clock import iso, wall_iso
from qtraderd.core.config import Config
from qtraderd.runtime.reload import changed_keys, stored_config

log = logging.getLogger("qtraderd.resume")

UNFINISHED = ("running", "stopped", "escalated")
# Settings that define what a run *is*: a resumed run must keep them.
RESUME_KEYS = ("mode", "seed", "feed.source", "feed.symbols", "feed.interval", "feed.start",
               "feed.end", "account.", "costs.", "sizing.take_profit_pct",
               "sizing.stop_loss_pct", "labels.", "learning.enabled", "learning.families",
               "rl.enabled", "rl.multipliers")


class ResumeError(RuntimeError):
    """The last run cannot be continued as asked; the message says what to do."""


@dataclass
class Resume:
    run_id: int
    seq: int  # the last step recorded whole
    ts: int  # its bar open time: the feed continues after it
    bars: int
    starts: int
    states: dict[str, Any]  # actor name -> its restored state (feed: where to continue;
    # risk: with "reapply", the ctl commands given after the checkpoint)




def plan(conn: sqlite3.Connection, cfg: Config, fresh: bool) -> Resume | None:
    """The run to continue, or None for a new one (closing an unfinished one if fresh)."""
    row = conn.execute(
        "SELECT id, status, config, resume_seq, resume_ts, bars, starts, last_ts "
        "FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    if row is None or row[1] not in UNFINISHED:
        return None
    run_id, status, stored, seq, ts, bars, starts, last_ts = row
    if fresh or seq is None:
        why = ("--fresh" if fresh else "it died before its first checkpoint: nothing to "
               "resume")
        conn.execute("UPDATE runs SET status='crashed', ended_at=coalesce(ended_at, ?) "
                     "WHERE id=?", (wall_iso(), run_id))
        log.warning("run %d (%s, last bar %s) closed as crashed without resuming: %s",
                    run_id, status, iso(last_ts), why)
        return None
    changed = changed_keys(json.loads(stored), stored_config(cfg))  # both redacted
    blocking = [k for k in changed if any(k == p or (p.endswith(".") and k.startswith(p))
                                          for p in RESUME_KEYS)]
    if blocking:
        raise ResumeError(
            f"run {run_id} did not finish (status {status}, last recorded bar {iso(ts)}) and "
            f"this configuration differs from its own in {', '.join(blocking)}: start with "
            f"the run's settings to resume it, or with `qtraderd run --fresh` to close it and "
            f"begin a new run")
    if changed:
        log.info("resuming run %d with %d changed settings: %s", run_id, len(changed),
                 ", ".join(changed))
    states: dict[str, Any] = {}
    for actor, blob, at_seq in conn.execute(
            "SELECT actor, state, seq FROM checkpoints WHERE run_id=?", (run_id,)):
        if at_seq != seq:
            raise ResumeError(f"run {run_id}: the stored state of {actor!r} is from step "
                              f"{at_seq}, not {seq}; the store is inconsistent — start with "
                              "`qtraderd run --fresh`")
        try:
            states[actor] = unpack(blob, actor)
        except StateError as exc:
            raise ResumeError(f"run {run_id} cannot be resumed: {exc}; start with "
                              "`qtraderd run --fresh` to close it and begin a new run") from exc
    commands = [(name, json.loads(args)) for name, args in conn.execute(
        "SELECT name, args FROM risk_commands WHERE run_id=? AND after_seq>=? ORDER BY rowid",
        (run_id, seq))]
    states["feed"] = {"seq": seq, "bars": bars, "last_ts": ts}  # the next bar after it
    if "risk" in states:
        states["risk"]["reapply"] = commands
    return Resume(run_id, seq, ts, bars, starts, states)


def mark_started(conn: sqlite3.Connection, run_id: int, resume: Resume | None) -> None:
    """Record this process's start of the run (new or continued)."""
    if resume is not None:
        conn.execute("UPDATE runs SET status='running', ended_at=NULL, exit_code=NULL, "
                     "starts=starts+1, pid=? WHERE id=?", (os.getpid(), run_id))
    else:
        conn.execute("UPDATE runs SET pid=? WHERE id=?", (os.getpid(), run_id))
    conn.execute(
        "INSERT INTO run_starts (run_id, at, pid, kind, resume_seq, resume_ts) "
        "VALUES (?,?,?,?,?,?)",
        (run_id, wall_iso(), os.getpid(), "resume" if resume else "new",
         resume.seq if resume else None, resume.ts if resume else None))
