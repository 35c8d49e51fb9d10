"""[exchange]: hosts per environment, the explicit key production needs, custom URLs, and
feed.speed on a real exchange. Every refusal names the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qtraderd.core.config import ConfigError, load, to_toml


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_testnet_hosts():
    ex = load(env={}).exchange
    assert ex.environment == "testnet" and ex.recv_window == 5000
    assert (ex.rest_url, ex.stream_url) == ("https://demo-fapi.binance.com",
                                            "wss://demo-fstream.binance.com")
    assert (ex.stream_timeout_s, ex.close_deadline_s, ex.max_streams_per_connection,
            ex.planned_reconnect_h) == (30.0, 5.0, 1024, 23.5)


def test_production_with_its_key_and_custom_urls(tmp_path):
    cfg = load(write(tmp_path, "[exchange]\nenvironment = 'production'\n"
                                "allow_production = true\n"), env={})
    assert (cfg.exchange.rest_url, cfg.exchange.stream_url) == ("https://fapi.binance.com",
                                                                "wss://fstream.binance.com")
    cfg = load(env={"QT_EXCHANGE_ENVIRONMENT": "custom",
                    "QT_EXCHANGE_BASE_URL": "http://127.0.0.1:8765/",
                    "QT_EXCHANGE_WS_URL": "ws://127.0.0.1:8765",
                    "QT_FEED_SOURCE": "binance", "QT_FEED_SPEED": "500"})
    assert (cfg.exchange.rest_url, cfg.exchange.stream_url) == ("http://127.0.0.1:8765",
                                                                "ws://127.0.0.1:8765")
    assert cfg.feed.speed == 500  # a loopback exchange runs at its own speed
    # the effective config written out reads back equal (learner snapshots, walk-forward)
    assert load(write(tmp_path, to_toml(cfg, "snapshot")), env={}) == cfg


@pytest.mark.parametrize("text, needle", [
    ("[exchange]\nenvironment = 'production'\n",
     "config key 'exchange.environment': \"production\" trades and reads the real exchange; "
     "set exchange.allow_production = true"),
    ("[exchange]\nenvironment = 'mainnet'\n",
     "config key 'exchange.environment': expected one of 'testnet', 'production', 'custom'"),
    ("[exchange]\nenvironment = 'custom'\nws_url = 'ws://127.0.0.1:1'\n",
     "config key 'exchange.base_url': expected a URL starting with http:// or https:// "
     "(required with exchange.environment = \"custom\"), got ''"),
    ("[exchange]\nenvironment = 'custom'\nbase_url = 'http://127.0.0.1:1'\n",
     "config key 'exchange.ws_url': expected a URL starting with ws:// or wss://"),
    ("[exchange]\nenvironment = 'custom'\nbase_url = '127.0.0.1:1'\nws_url = 'ws://h'\n",
     "'exchange.base_url'"),
    ("[exchange]\nbase_url = 'http://127.0.0.1:1'\n",
     "config key 'exchange.base_url': set only with exchange.environment = \"custom\" "
     "('testnet' uses https://demo-fapi.binance.com)"),
    ("[exchange]\nrecv_window = 70000\n", "config key 'exchange.recv_window': expected an "
     "integer >= 1 and <= 60000"),
    ("[exchange]\nmax_streams_per_connection = 2000\n", "'exchange.max_streams_per_connection'"),
    ("[exchange]\nplanned_reconnect_h = 24\n", "'exchange.planned_reconnect_h'"),
    ("[exchange]\nstream_timeout = 3\n", "unknown config key 'exchange.stream_timeout'"),
    ("[feed]\nsource = 'binance'\n",
     "config key 'feed.speed': with feed.source = \"binance\" on https://demo-fapi.binance.com "
     "data time is wall time; expected 1, got max"),
    ("[feed]\nsource = 'binance'\nspeed = 60\n[exchange]\nenvironment = 'custom'\n"
     "base_url = 'https://sim.example.org'\nws_url = 'wss://sim.example.org'\n",
     "'feed.speed': with feed.source = \"binance\" on https://sim.example.org"),
])
def test_bad_exchange_settings_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text), env={})
    assert needle in str(err.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_speed_other_than_1_only_on_loopback(tmp_path, host):
    cfg = load(write(tmp_path, f"[feed]\nsource = 'binance'\nspeed = 'max'\n[exchange]\n"
                               f"environment = 'custom'\nbase_url = 'http://{host}:9'\n"
                               f"ws_url = 'ws://{host}:9'\n"), env={})
    assert cfg.feed.speed == float("inf")
    assert load(write(tmp_path, "[feed]\nsource = 'binance'\nspeed = 1\n"), env={}).feed.speed == 1


def test_environment_variable_typo_names_the_exchange_key():
    with pytest.raises(ConfigError) as err:
        load(env={"QT_EXCHANGE_RECV_WINDOWS": "10"})
    assert "exchange.recv_windows" in str(err.value)
    assert "did you mean QT_EXCHANGE_RECV_WINDOW?" in str(err.value)


def test_cli_exits_2_naming_the_key(tmp_path):
    p = write(tmp_path, "[exchange]\nenvironment = 'production'\n")
    out = subprocess.run([sys.executable, "-m", "qtraderd", "run", "--config", str(p),
                          "--state-dir", str(tmp_path / "s")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "exchange.allow_production" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
