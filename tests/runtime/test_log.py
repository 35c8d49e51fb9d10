"""Logging under journald and elsewhere: real subprocesses, real stderr files.

With `$JOURNAL_STREAM` naming the process's stderr (as systemd sets it), every stderr line
— each line of a multi-line message and of a traceback too — starts with the `<N>`
syslog priority and carries no timestamp; otherwise lines are plain and timestamped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SNIPPET = r"""
import logging, warnings
from qtraderd.runtime import logs as log
log.setup("DEBUG")
lg = logging.getLogger("qtraderd.test")
lg.debug("debug line")
lg.info("info line")
lg.warning("warning line one\nwarning line two")
lg.error("error line")
try:
    1 / 0
except ZeroDivisionError:
    lg.exception("caught it")
lg.critical("critical line")
warnings.warn("careful now")
raise RuntimeError("never caught\nsecond line of the message")
"""

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def run(tmp_path: Path, args: list[str], journal: str | None) -> tuple[int, list[str]]:
    """Run with stderr in a file; journal: "match" (JOURNAL_STREAM = that file), a literal
    value, or None (unset)."""
    err_path = tmp_path / "stderr.txt"
    env = {k: v for k, v in os.environ.items()
           if k != "JOURNAL_STREAM" and not k.startswith("QT_")}
    with open(err_path, "w") as err:
        if journal == "match":
            st = os.fstat(err.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal is not None:
            env["JOURNAL_STREAM"] = journal
        code = subprocess.run([sys.executable, *args], stderr=err, stdout=subprocess.DEVNULL,
                              env=env, cwd=REPO, timeout=120).returncode
    return code, err_path.read_text().splitlines()


def test_under_journald_every_line_carries_its_priority(tmp_path):
    code, lines = run(tmp_path, ["-c", SNIPPET], "match")
    assert code == 1 and len(lines) > 12
    bad = [ln for ln in lines if not re.match(r"<[0-7]>", ln)]
    assert not bad, f"lines without a priority prefix: {bad}"
    assert not any(TIMESTAMP.search(ln) for ln in lines)  # journald timestamps itself
    assert "<7>DEBUG qtraderd.test: debug line" in lines
    assert "<6>INFO qtraderd.test: info line" in lines
    assert "<4>WARNING qtraderd.test: warning line one" in lines
    assert "<4>warning line two" in lines  # the second line of one message
    assert "<3>ERROR qtraderd.test: error line" in lines
    tb = lines[lines.index("<3>ERROR qtraderd.test: caught it"):]
    assert tb[1] == "<3>Traceback (most recent call last):"
    assert "<3>ZeroDivisionError: division by zero" in tb
    assert "<2>CRITICAL qtraderd.test: critical line" in lines
    assert any(ln.startswith("<4>WARNING py.warnings: ") and "careful now" in ln
               for ln in lines)
    # an uncaught exception goes through the same formatter, every line of it
    tail = lines[lines.index("<2>CRITICAL qtraderd: uncaught exception, exiting"):]
    assert tail[1] == "<2>Traceback (most recent call last):"
    assert "<2>RuntimeError: never caught" in tail
    assert tail[-1] == "<2>second line of the message"


@pytest.mark.parametrize("journal", [None, "12345:67890", "garbage"])
def test_elsewhere_lines_are_plain_and_timestamped(tmp_path, journal):
    """Unset, or naming some other stream (a child redirected away from the journal)."""
    code, lines = run(tmp_path, ["-c", SNIPPET], journal)
    assert code == 1
    assert not any(re.match(r"<[0-7]>", ln) for ln in lines)
    info = next(ln for ln in lines if "info line" in ln)
    assert TIMESTAMP.match(info) and info.endswith("INFO    qtraderd.test: info line")
    assert "Traceback (most recent call last):" in lines
    assert lines[-1] == "second line of the message"  # Python's own excepthook


def test_cli_errors_and_learner_processes_use_the_same_format(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[risk]\nmax_drawdown_pct = 200\n")
    code, lines = run(tmp_path, ["-m", "qtraderd", "run", "--config", str(bad),
                                 "--state-dir", str(tmp_path / "s")], "match")
    assert code == 2 and lines[0].startswith("<3>qtraderd: error: config key "
                                             "'risk.max_drawdown_pct'")
    code, lines = run(tmp_path, ["-m", "qtraderd.training", "train", "--state-dir",
                                 str(tmp_path / "nothing"), "--models-dir",
                                 str(tmp_path / "m")], "match")
    assert code == 2 and lines and lines[0].startswith("<3>error: no store at")
    # a learner job's logging: ours at INFO in the journal format, the ML libraries' only
    # from WARNING up
    job = ("import logging\nfrom qtraderd.training.cli import setup_logging\nsetup_logging()\n"
           "logging.getLogger('qtraderd.training').info('job step')\n"
           "logging.getLogger('lightgbm').info('chatter')\n"
           "logging.getLogger('lightgbm').warning('a real warning')\n")
    code, lines = run(tmp_path, ["-c", job], "match")
    assert code == 0 and lines == ["<6>INFO qtraderd.training: job step",
                                   "<4>WARNING lightgbm: a real warning"]
