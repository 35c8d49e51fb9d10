"""Exchange credentials: the Secret type, where credentials come from, log masking, and a
real daemon that must not leak known secret values into logs, ctl output, reports or the
store."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtraderd.control import client as ctl
from qtraderd.core.config import load, with_changes
from qtraderd.runtime import secrets
from qtraderd.runtime.daemon import Daemon, DaemonError
from qtraderd.runtime.secrets import Credentials, CredentialsError, Secret
from tests.conftest import REPO

KEY_FILE_VALUE = "qtKEYfromCredDir5f0c2a9e"
SECRET_FILE_VALUE = "qtSECRETfromCredDir8b1d77e3"
KEY_ENV_VALUE = "qtKEYfromEnvC4e9a2b6"
SECRET_ENV_VALUE = "qtSECRETfromEnv19fa0d5c"
ALL_VALUES = (KEY_FILE_VALUE, SECRET_FILE_VALUE, KEY_ENV_VALUE, SECRET_ENV_VALUE)


@pytest.fixture(autouse=True)
def _forget_registered_values() -> Iterator[None]:
    yield
    secrets.forget_all()


def cred_dir(root: Path, key: str | None = KEY_FILE_VALUE,
             secret: str | None = SECRET_FILE_VALUE) -> Path:
    d = root / "creds"
    d.mkdir()
    for name, value in ((secrets.KEY_FILE, key), (secrets.SECRET_FILE, secret)):
        if value is not None:
            (d / name).write_text(value + "\n")  # systemd-creds files often end in \n
            (d / name).chmod(0o400)
    return d


# ---------------------------------------------------------------- the type


def test_secret_never_prints_its_value() -> None:
    s = Secret("hunter2hunter2")
    # every way code formats a value, old styles included (logging uses %)
    shown = [repr(s), str(s), f"{s}", f"{s!r}", f"{s:>40}", repr([s]),
             "%s" % s, "%r" % (s,), "{}".format(s),  # noqa: UP031, UP032
             repr(Credentials(s, s, "test"))]
    assert all("hunter2" not in text for text in shown)
    assert repr(s) == "Secret('****')" and f"{s}" == "Secret('****')"
    assert s.reveal() == "hunter2hunter2"
    assert s == Secret("hunter2hunter2") and s != Secret("other-value")
    with pytest.raises(TypeError):
        json.dumps({"key": s})
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        hash(s)


# ---------------------------------------------------------------- sources


def test_credentials_directory_wins_over_the_environment(tmp_path: Path) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(cred_dir(tmp_path)),
           "QT_BINANCE_API_KEY": KEY_ENV_VALUE, "QT_BINANCE_API_SECRET": SECRET_ENV_VALUE}
    creds = secrets.load(env)
    assert creds is not None
    assert creds.api_key.reveal() == KEY_FILE_VALUE  # trailing newline stripped
    assert creds.api_secret.reveal() == SECRET_FILE_VALUE
    assert creds.source == "$CREDENTIALS_DIRECTORY (binance-api-key, binance-api-secret)"
    # the variables are gone, so subprocesses (training, jobs, store writer) never get them
    assert "QT_BINANCE_API_KEY" not in env and "QT_BINANCE_API_SECRET" not in env
    assert secrets.describe(creds, "live") == (
        "exchange credentials: from $CREDENTIALS_DIRECTORY (binance-api-key, "
        "binance-api-secret)")


def test_environment_is_the_fallback(tmp_path: Path) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path),  # set, but holds no credential files
           "QT_BINANCE_API_KEY": KEY_ENV_VALUE, "QT_BINANCE_API_SECRET": SECRET_ENV_VALUE}
    creds = secrets.load(env)
    assert creds is not None and creds.api_key.reveal() == KEY_ENV_VALUE
    assert creds.source == "environment (QT_BINANCE_API_KEY, QT_BINANCE_API_SECRET)"
    assert secrets.describe(creds, "paper").endswith("; not used in paper mode")


def test_no_credentials_is_fine_for_paper_and_an_error_for_live() -> None:
    assert secrets.load({"QT_BINANCE_API_KEY": "  "}) is None  # blank counts as absent
    assert secrets.describe(None, "paper") == "exchange credentials: none (paper mode)"
    secrets.require("paper", None)
    with pytest.raises(CredentialsError) as err:
        secrets.require("live", None)
    msg = str(err.value)
    for name in ("binance-api-key", "binance-api-secret", "$CREDENTIALS_DIRECTORY",
                 "QT_BINANCE_API_KEY", "QT_BINANCE_API_SECRET", 'mode = "live"'):
        assert name in msg


@pytest.mark.parametrize(("files", "env", "missing"), [
    ((KEY_FILE_VALUE, None), {}, "has binance-api-key but not binance-api-secret"),
    ((None, SECRET_FILE_VALUE), {}, "has binance-api-secret but not binance-api-key"),
    (None, {"QT_BINANCE_API_SECRET": SECRET_ENV_VALUE},
     "has QT_BINANCE_API_SECRET but not QT_BINANCE_API_KEY"),
])
def test_half_a_pair_is_an_error_naming_the_missing_half(tmp_path: Path, files, env,
                                                         missing) -> None:
    env = dict(env)
    if files is not None:
        env["CREDENTIALS_DIRECTORY"] = str(cred_dir(tmp_path, *files))
    with pytest.raises(CredentialsError, match=missing) as err:
        secrets.load(env)
    assert not any(v in str(err.value) for v in ALL_VALUES)


async def test_live_daemon_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    d = Daemon(with_changes(load(env={}), mode="live"), tmp_path / "s", tmp_path / "m")
    with pytest.raises(DaemonError, match="needs exchange credentials"):
        await d.run()
    assert not (tmp_path / "s").exists()  # nothing touched


@pytest.mark.parametrize(("extra", "missing"), [
    ({}, "missing binance-api-key and binance-api-secret"),
    ({"QT_BINANCE_API_KEY": KEY_ENV_VALUE}, "not QT_BINANCE_API_SECRET"),
])
def test_cli_live_mode_without_credentials_exits_2(tmp_path: Path, extra, missing) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("QT_") and k != "CREDENTIALS_DIRECTORY"}
    env.update({"QT_MODE": "live", **extra})
    out = subprocess.run([sys.executable, "-m", "qtraderd", "run", "--state-dir",
                          str(tmp_path / "s"), "--models-dir", str(tmp_path / "m")],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert out.returncode == 2, out.stderr
    assert missing in out.stderr and KEY_ENV_VALUE not in out.stderr
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- log masking


def test_loaded_values_are_masked_in_log_messages_and_tracebacks(
        caplog: pytest.LogCaptureFixture) -> None:
    secrets.load({"QT_BINANCE_API_KEY": KEY_ENV_VALUE,
                  "QT_BINANCE_API_SECRET": SECRET_ENV_VALUE})
    log = logging.getLogger("qtraderd.test_secrets")
    with caplog.at_level(logging.INFO):
        log.info("signing with %s", KEY_ENV_VALUE)
        log.warning(f"inline {SECRET_ENV_VALUE} and {KEY_ENV_VALUE}!")
        try:
            raise RuntimeError(f"exchange said: bad key {KEY_ENV_VALUE}")
        except RuntimeError:
            log.exception("request failed")
        log.info("nothing to hide here: %d", 42)
    text = caplog.text
    assert KEY_ENV_VALUE not in text and SECRET_ENV_VALUE not in text
    assert "signing with ****" in text and "inline **** and ****!" in text
    assert "RuntimeError: exchange said: bad key ****" in text
    assert "nothing to hide here: 42" in text


def test_masking_also_reaches_plain_stream_handlers() -> None:
    """Handlers set up elsewhere (journald, stderr) see the masked record too."""
    secrets.register(SECRET_FILE_VALUE)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    log = logging.getLogger("qtraderd.test_secrets.stream")
    log.addHandler(handler)
    try:
        log.error("oops %s", SECRET_FILE_VALUE)
    finally:
        log.removeHandler(handler)
    assert buf.getvalue() == "oops ****\n"


# ---------------------------------------------------------------- a real daemon


@pytest.fixture
def world(trained, tmp_path):
    shutil.copytree(trained["state"], tmp_path / "state")
    shutil.copytree(trained["models"], tmp_path / "models")
    run_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="qtrt"))
    yield {"state": tmp_path / "state", "models": tmp_path / "models", "run": run_dir,
           "root": tmp_path}
    shutil.rmtree(run_dir, ignore_errors=True)


def _leaks(blob: bytes | str) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [v for v in ALL_VALUES if v.encode() in data]


def _file_leaks(*roots: Path) -> dict[str, list[str]]:
    found = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and (hit := _leaks(p.read_bytes())):
                found[str(p)] = hit
    return found


def _ctl(sock: Path, *words: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ctl.main(["--socket", str(sock), *words])
    return code, out.getvalue() + err.getvalue()


def test_a_running_daemon_leaks_no_secret_anywhere(world) -> None:
    creds = cred_dir(world["root"])
    sock = world["run"] / "qtraderd.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env.update({"CREDENTIALS_DIRECTORY": str(creds), "RUNTIME_DIRECTORY": str(world["run"]),
                "QT_BINANCE_API_KEY": KEY_ENV_VALUE, "QT_BINANCE_API_SECRET": SECRET_ENV_VALUE,
                "QT_FEED_EXIT_AT_END": "false", "QT_RUNTIME_LOG_LEVEL": "DEBUG",
                # the store's last four days (out of sample: it predicts and trades), not
                # all twenty: where a secret could leak does not depend on the length
                "QT_FEED_START": "2018-01-26",
                "QT_SIZING_MIN_EDGE_PCT": "-0.5", "QT_SIZING_MIN_CONFIDENCE": "0.25",
                "QT_LEARNING_ENABLED": "false"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "qtraderd", "run", "--state-dir", str(world["state"]),
         "--models-dir", str(world["models"])],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while True:  # poll until the replay has ended and everything is recorded
            assert time.monotonic() < deadline, "daemon did not finish its replay"
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with contextlib.suppress(ctl.CtlError):
                st = ctl.request(sock, "status")["result"]
                if st["actors"]["feed"]["finished"] and \
                        st["actors"]["recorder"]["buffered_steps"] == 0:
                    break
            time.sleep(0.1)
        assert st["credentials"] == "$CREDENTIALS_DIRECTORY (binance-api-key, " \
                                    "binance-api-secret)"
        for cmd in ("status", "modules", "positions", "trades", "pnl", "models", "learning",
                    "rl", "plugins"):
            for fmt in ((), ("--json",)):
                code, text = _ctl(sock, cmd, *fmt)
                assert code == 0 or cmd == "plugins", (cmd, text)
                outputs.append(text)
        assert "credentials" in outputs[2] and "binance-api-key" in outputs[2]  # modules
        # A client that sends a secret gets it back in its own error reply; the daemon's
        # log line about the refusal must mask it.
        bad = ctl.request(sock, "pause", {"symbol": KEY_FILE_VALUE})
        assert bad["ok"] is False
        verify = subprocess.run(
            [sys.executable, "-m", "qtraderd", "verify", "--socket", str(sock), "--json",
             "--wait", "0.2"], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
        outputs += [verify.stdout, verify.stderr]
        assert json.loads(verify.stdout)["checks"]
        running_leaks = _file_leaks(world["state"], world["models"])  # -wal and -shm too
        assert any(p.endswith("-wal") for p in map(str, world["state"].iterdir()))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert running_leaks == {}
    assert ("exchange credentials: from $CREDENTIALS_DIRECTORY (binance-api-key, "
            "binance-api-secret); not used in paper mode") in err
    assert "control command pause refused: pause: argument 'symbol': unknown symbol '****'" \
        in err
    assert " DEBUG " in err  # debug logging was on (actors finishing), still no leak
    assert _leaks(out) == [] and _leaks(err) == []
    assert [(i, _leaks(t)) for i, t in enumerate(outputs) if _leaks(t)] == []

    report_dir = world["root"] / "report"
    help_text = subprocess.run([sys.executable, "-m", "qtraderd", "report", "--help"],
                               capture_output=True, text=True, cwd=REPO).stdout
    html = ["--out", str(report_dir)] if "--out" in help_text else []
    for extra in ([], ["--json"], html):
        rep = subprocess.run([sys.executable, "-m", "qtraderd", "report", "--state-dir",
                              str(world["state"]), *extra], capture_output=True, text=True,
                             cwd=REPO, env=env, timeout=120)
        assert rep.returncode == 0, rep.stderr[-2000:]
        assert _leaks(rep.stdout) == [] and _leaks(rep.stderr) == []
    roots = [world["state"], world["models"]] + ([report_dir] if report_dir.exists() else [])
    assert _file_leaks(*roots) == {}
    # the stored run config holds no credentials at all
    conn = sqlite3.connect(world["state"] / "qtraderd.db")
    try:
        (config,) = conn.execute("SELECT config FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    assert "binance" not in config.lower() and "api" not in json.loads(config)
