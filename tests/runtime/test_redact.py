"""Secret-looking settings are redacted wherever the configuration is printed or stored:
the start-up line, runs.config, job-config.toml (issue 11, B9)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from qtraderd.core.config import load
from qtraderd.runtime.redact import MASK, redact, redact_url, secret_key
from tests.conftest import REPO, make_store

BEARER = "Bearer s3cr3t-b3ar3r-t0k3n"
HOOK = "https://hooks.slack.com/services/T0AAAA/B0BBBB/XyZsecretPathPart"
API_KEY = "ak-9f8e7d6c5b4a"
QUERY = "https://api.example.org/v1/send?token=qtok-123456&chat=42"
USERINFO = "https://alice:pa55w0rdX@relay.example.org:8443/"
SECRETS = ("s3cr3t-b3ar3r-t0k3n", "XyZsecretPathPart", API_KEY, "qtok-123456", "pa55w0rdX",
           "T0AAAA")

CONFIG = f"""
[learning]
enabled = true

[plugins.settings.webhook_notifier]
url = "{HOOK}"
url_env = "QT_OTHER_HOOK"
events = ["trade_closed"]
timeout_s = 3
headers = {{Authorization = "{BEARER}", X-Api-Key = "{API_KEY}"}}

[plugins.settings.telegram]
endpoint = "{QUERY}"
api_key = "{API_KEY}"
relay = "{USERINFO}"
chat = "plain text stays"
"""


@pytest.mark.parametrize("name, secret", [
    ("api_key", True), ("apiKey", True), ("X-Api-Key", True), ("token", True),
    ("bot_token", True), ("password", True), ("client_secret", True),
    ("Authorization", True), ("passphrase", True), ("auth", True), ("key", True),
    ("url_env", False), ("events", False), ("timeout_s", False), ("monkey", False),
    ("keys", False), ("take_profit_pct", False), ("group", False),
])
def test_secret_key_names(name, secret):
    assert secret_key(name) is secret


@pytest.mark.parametrize("url, want", [
    (HOOK, "https://hooks.slack.com/****"),
    (QUERY, "https://api.example.org/****"),
    (USERINFO, f"https://{MASK}@relay.example.org:8443"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://[::1]:9/x", "http://[::1]:9/****"),
    ("https://", MASK),
])
def test_urls_keep_only_scheme_and_host(url, want):
    assert redact_url(url) == want


def test_redact_masks_secret_values_and_keeps_the_rest(tmp_path):
    cfg = load(_write(tmp_path / "c.toml"), env={"QT_OTHER_HOOK": "x"})
    d = cfg.to_dict()
    r = redact(d)
    text = json.dumps(r)
    assert not [s for s in SECRETS if s in text]
    hook = r["plugins"]["settings"]["webhook_notifier"]
    assert hook["headers"] == {"Authorization": MASK, "X-Api-Key": MASK}
    assert hook["url"] == "https://hooks.slack.com/****"
    assert hook["url_env"] == "QT_OTHER_HOOK" and hook["events"] == ["trade_closed"]
    assert r["plugins"]["settings"]["telegram"]["chat"] == "plain text stays"
    assert {k: v for k, v in r.items() if k != "plugins"} == \
        {k: v for k, v in d.items() if k != "plugins"}  # trading keys untouched
    assert d["plugins"]["settings"]["webhook_notifier"]["headers"]["Authorization"] == BEARER


def _write(path: Path) -> Path:
    path.write_text(CONFIG)
    return path


def test_a_run_prints_and_stores_no_plugin_secret(tmp_path):
    """A real `qtraderd run`: the start-up line, runs.config and job-config.toml."""
    state = make_store(tmp_path / "state", symbols=("ETHBTC",), limit=400)
    cfg = _write(tmp_path / "c.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env["QT_OTHER_HOOK"] = "https://hooks.example.org/named/by/url_env"
    out = subprocess.run([sys.executable, "-m", "qtraderd", "run", "--no-train", "--config",
                          str(cfg), "--state-dir", str(state), "--models-dir",
                          str(tmp_path / "m"), "--plugins-dir", str(tmp_path / "none")],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stderr.splitlines() if "config in force:" in x)
    assert "hooks.slack.com/****" in line and "Authorization" in line
    conn = sqlite3.connect(state / "qtraderd.db")
    stored = conn.execute("SELECT config FROM runs").fetchone()[0]
    conn.close()
    job = (state / "job-config.toml").read_text()
    for where, text in (("stderr", out.stderr), ("stdout", out.stdout),
                        ("runs.config", stored), ("job-config.toml", job)):
        leaked = [s for s in SECRETS if s in text]
        assert not leaked, f"{where} holds {leaked}"
    assert (state / "job-config.toml").stat().st_mode & 0o077 == 0
    # the job still gets everything it needs: its snapshot loads, equal but for redaction
    snap = load(state / "job-config.toml", env=env)
    want = load(cfg, env=env)
    assert snap.learning == want.learning and snap.train == want.train
    assert snap.sizing == want.sizing and snap.feed == want.feed
    assert snap.plugins.settings["webhook_notifier"]["url_env"] == "QT_OTHER_HOOK"
    assert json.loads(stored) == redact(want.to_dict())
