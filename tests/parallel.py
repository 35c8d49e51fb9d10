"""How `make test` spreads the suite over worker processes (pytest-xdist, `-n 3 --dist
loadgroup` on two cores: much of the suite waits on paced simulators and subprocesses).

Two cores, one suite of ~1,400 tests of which a few dozen take most of the time (real
daemons, training subprocesses, walk-forwards, Ray heads). Three rules make the parallel
run short and keep it as correct as the serial one:

* **Expensive work is done once.** `build_once` builds a directory (the trained store and
  models) in the session's shared temp root under a file lock — whichever worker gets
  there first builds, the others wait — and hands each worker its own copy, so a test
  that writes into it never races another worker.
* **A module whose tests share a module-scoped fixture runs on one worker** (`GROUPED`):
  the fixture (a walk-forward, trained networks, a 2.4M-row store) is built once, not once
  per worker. Every other test is a unit of its own.
* **Longest first.** Units go out in collection order, one at a time as a worker frees
  up; `schedule` sorts the collection so that units holding a test listed in `LONG` come
  first, heaviest first, and no long test starts near the end while the other worker sits
  idle. Everything else keeps pytest's order. The figures are seconds on a quiet 2-core
  machine (`pytest --durations`); they only order the run, so a stale or missing entry
  costs balance, never correctness.

`LongFirstScheduling` is what `--dist loadgroup` runs here (conftest's
`pytest_xdist_make_scheduler`): xdist's own loadgroup reads `xdist_group` marks through
the node id, which pytest 9.2 no longer lets it rewrite (pytest-xdist#1386), so it would
silently spread a group over both workers. The ordering applies only inside xdist workers:
a plain `pytest` run is unchanged.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# modules whose tests share a module-scoped fixture (`schedule` warns about one missing here)
GROUPED = frozenset({
    "tests/control/test_bad_requests.py",
    "tests/fuzz/test_ctl_fuzz.py",
    "tests/fuzz/test_models_fuzz.py",
    "tests/reporting/test_report_html.py",
    "tests/reporting/test_report_vetoes.py",
    "tests/reporting/test_sweep.py",
    "tests/reporting/test_walkforward.py",
    "tests/reporting/test_walkforward_ray.py",
    "tests/store/test_importer.py",
    "tests/store/test_schema.py",
    "tests/test_learning_e2e.py",
    "tests/training/test_cluster.py",
    "tests/training/test_nets.py",
    "tests/training/test_ray_training.py",
})

# nodeid without parameters -> seconds per collected test (each parametrization), with its
# share of module fixtures; a quiet 2-core machine
LONG: dict[str, float] = {
    "tests/venues/sim/test_live_trading.py::test_kill_9_at_twenty_moments_loses_and_"
    "duplicates_nothing": 55,
    "tests/venues/sim/test_live_trading.py::test_every_fault_at_once_keeps_the_books_"
    "straight": 21,
    "tests/venues/sim/test_live_trading.py::test_live_on_the_simulator_trades_as_the_"
    "replay": 22,
    "tests/venues/sim/test_live_faults.py::test_every_fault_at_once_loses_and_duplicates_no_"
    "bar": 22,
    "tests/venues/sim/test_live_vs_replay.py::test_a_dry_run_on_the_simulator_trades_exactly_"
    "as_the_replay": 6.5,
    "tests/venues/sim/test_try_live.py::test_the_readme_two_commands_dry_run_on_the_"
    "simulator": 11,
    # the Ray modules (one head each, GROUPED) and the three-instance proof
    "tests/reporting/test_walkforward_ray.py::test_ray_arms_give_the_local_report": 18,
    "tests/reporting/test_sweep.py::test_local_sweep_reports_every_cell_with_progress": 10,
    "tests/training/test_ray_training.py::test_ray_trains_the_same_models_as_local": 9,
    "tests/runtime/test_instances.py::test_three_instances_side_by_side_trade_as_each_does_"
    "alone": 10,
    "tests/test_learning_e2e.py::test_replays_with_the_learner_are_identical": 15,
    "tests/runtime/test_crash.py::test_kill_9_with_the_learner_on_resumes_and_keeps_the_"
    "registry_honest": 17,
    "tests/test_cli.py::test_the_demo_from_a_fresh_directory": 31,
    "tests/reporting/test_walkforward.py::test_the_whole_walkforward_is_deterministic": 14,
    "tests/reporting/test_walkforward.py::test_four_arms_with_numbers_from_the_stores": 14,
    "tests/test_learning_e2e.py::test_learner_evaluates_hourly_on_the_data_clock_and_"
    "records_jobs": 16,  # the module's shared replay
    "tests/test_learning_e2e.py::test_ctl_answers_while_a_job_holds_the_clock": 15,
    "tests/runtime/test_crash.py::test_kill_9_at_twenty_random_moments_changes_nothing": 17,
    "tests/training/test_nets.py::test_real_candles_auc_below_leakage_threshold": 14,
    "tests/training/test_nets.py::test_cli_subprocess_trains_both_networks": 11,
    "tests/training/test_nets.py::test_window_data_matches_the_tree_samples": 9,
    "tests/store/test_schema.py::test_hot_queries_use_indexes_at_scale": 1.1,  # x6
    "tests/runtime/test_secrets.py::test_a_running_daemon_leaks_no_secret_anywhere": 3.9,
    "tests/reporting/test_verify.py::test_verify_a_healthy_then_broken_then_stopped_daemon": 2.2,
    "tests/test_startup_errors.py::test_run_on_a_store_locked_by_another_process_exits_2": 5.6,
    "tests/test_cli.py::test_locked_store_is_a_clear_error": 5.2,
    "tests/fuzz/test_plugins_fuzz.py::test_plugins_that_loop": 7,
    "tests/actors/test_learner.py::test_a_real_job_trains_scores_and_records_its_decision": 4,
}


def shared_root(factory: pytest.TempPathFactory) -> Path:
    """The temp directory every worker of this session sees (a worker's basetemp is
    `<root>/popen-gwN`); without xdist, the session's own basetemp."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], None]) -> Path:
    """`build(dir)` once per session, whichever worker comes first; this worker's copy.

    The build goes to `<name>.partial` and is renamed when complete, so a build that
    failed in one worker is redone (and fails loudly) in the next, never half-used.
    """
    root = shared_root(factory)
    done = root / f"shared-{name}"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits here while one builds
        if not done.is_dir():
            partial = root / f"shared-{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            build(partial)
            partial.rename(done)
    mine = factory.mktemp(name)
    shutil.copytree(done, mine, symlinks=True, dirs_exist_ok=True)
    return mine


def _module_fixture_users(item: pytest.Item) -> bool:
    """Whether the test uses a module- or class-scoped fixture (built once per module)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs and defs[-1].scope in ("module", "class")
               for defs in info.name2fixturedefs.values())


def unit_of(nodeid: str) -> str:
    """The work unit of a test: its module if GROUPED, else the test itself."""
    module = nodeid.split("::", 1)[0]
    return module if module in GROUPED else nodeid


def schedule(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the longest units first (in place); only in xdist workers, where both workers
    collect and must agree (the order depends on nothing but the collected items)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    missing = sorted({it.nodeid.split("::", 1)[0] for it in items if _module_fixture_users(it)}
                     - GROUPED)
    if missing and os.environ.get("PYTEST_XDIST_WORKER") == "gw0":
        config.issue_config_time_warning(pytest.PytestWarning(
            f"tests/parallel.py: add {', '.join(missing)} to GROUPED (module-scoped "
            "fixtures are built once per worker otherwise)"), stacklevel=2)
    weight: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        unit = unit_of(item.nodeid)
        first.setdefault(unit, i)
        weight[unit] = weight.get(unit, 0.0) + LONG.get(item.nodeid.split("[", 1)[0], 0.0)
    items.sort(key=lambda it: (-weight[unit_of(it.nodeid)], first[unit_of(it.nodeid)]))


def make_scheduler(config: pytest.Config, log: object) -> object:
    """The `--dist loadgroup` scheduler: LoadScope with our units, in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class LongFirstScheduling(LoadScopeScheduling):
        """xdist's scope scheduler with `unit_of` as the scope; the collection order
        (longest first, see `schedule`) is kept instead of sorting units by size."""

        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    config.option.loadscopereorder = False
    return LongFirstScheduling(config, log)
