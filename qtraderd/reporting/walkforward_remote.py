"""`qtraderd walkforward --executor ray`: the two daemon arms as Ray tasks, in parallel.

The plan, the work dir and the initial models are made here exactly as for a local run
(one training shared by both arms, so it stays local). The trained base store and models
are shipped once (`share`, as bytes: a cluster node cannot see this machine's files); each
arm task rebuilds them in a temp dir of its own, runs the real daemon over them in a
subprocess (`qtraderd run` with the arm's generated TOML: learning on or off), and sends
its store and models back. They land in `<out>/work/<arm>` where the local run leaves
them, so the report is built by the same code from the same files.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from qtraderd.reporting.sweep_task import DB_NAME, pack, rebuild, replay
from qtraderd.reporting.walkforward_plan import ARMS, Plan, WalkforwardError

log = logging.getLogger("qtraderd.reporting.walkforward")


def run_arm_task(item: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """One daemon arm, on whichever node runs it; -> its store and models as bytes."""
    import os

    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="qtwfr"))  # short: the control socket lives here
    try:
        state, models = rebuild(shared, root)
        replay(root, state, models, item["toml"], f"arm '{ARMS[item['arm']]}'", None)
        back = pack(state, models, -2**63, 2**63 - 1)
        conn = sqlite3.connect(state / DB_NAME)
        try:
            back["run_id"] = conn.execute("SELECT max(id) FROM runs").fetchone()[0]
        finally:
            conn.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    back["wall_s"] = time.monotonic() - t0
    back["host"] = os.uname().nodename
    return back


def run_arms(plan: Plan, tomls: dict[str, Path], executor: str, address: str | None
             ) -> tuple[dict[str, int], dict[str, float]]:
    """Both daemon arms as tasks on `executor`; -> (run ids, wall seconds) per arm."""
    from qtraderd.training.cluster import ClusterUnavailable, open_executor

    base = plan.work / "base"
    payload = pack(base / "state", base / "models", -2**63, 2**63 - 1)
    arms = ["continuous", "frozen"]
    items = [{"arm": arm, "toml": tomls[arm].read_text()} for arm in arms]
    try:
        ex = open_executor(executor, address)
    except ClusterUnavailable as exc:
        raise WalkforwardError(str(exc)) from exc
    runs, walls = {}, {}
    with ex:
        log.info("walkforward: running the daemon arms (%s) as tasks on %s",
                 ", ".join(ARMS[a] for a in arms), ex.where)
        shared = ex.share(payload)
        try:
            for i, back in ex.map(run_arm_task, items, shared=shared, cpus=1):
                arm = arms[i]
                rebuild(back, plan.work / arm)  # where a local run leaves them
                runs[arm], walls[arm] = int(back["run_id"]), float(back["wall_s"])
                log.info("walkforward: arm '%s' finished on %s in %.1f s (run %d)", ARMS[arm],
                         back["host"], back["wall_s"], runs[arm])
        except RuntimeError as exc:
            raise WalkforwardError(str(exc), 1) from exc
    return runs, walls
