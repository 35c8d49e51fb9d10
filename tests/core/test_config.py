"""Config: TOML + QT_<SECTION>_<KEY> overrides; unknown keys and bad values name the key."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from qtraderd.core.config import ConfigError, load, per_quote


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_seed_rules():
    c = load(env={})
    assert c.mode == "paper" and c.feed.source == "replay" and math.isinf(c.feed.speed)
    assert (c.sizing.leverage, c.sizing.take_profit_pct, c.sizing.stop_loss_pct) == (3.0, 1.6, 0.8)
    assert per_quote(c.sizing.margin, "USDT") == 300.0
    assert 0 < per_quote(c.sizing.margin, "BTC") < 0.1  # sensible BTC amounts for the demo
    assert (c.costs.taker_fee_pct, c.costs.maker_fee_pct) == (0.05, 0.02)


def test_the_issue_example_file_loads(tmp_path):
    p = write(tmp_path, """
mode = "paper"
[feed]
source = "replay"
symbols = ["ETHBTC", "LTCBTC"]
interval = "5m"
speed = "max"
[sizing]
margin = 300
leverage = 3.0
take_profit_pct = 1.6
stop_loss_pct = 0.8
""")
    c = load(p, env={})
    assert c.feed.symbols == ("ETHBTC", "LTCBTC")
    assert per_quote(c.sizing.margin, "BTC") == 300.0  # a plain number applies to all quotes
    c = load(write(tmp_path, "[feed]\nspeed = 60\n"), env={})
    assert c.feed.speed == 60.0


def test_environment_overrides_the_file(tmp_path):
    p = write(tmp_path, "[sizing]\nleverage = 2.0\n")
    env = {"QT_SIZING_LEVERAGE": "4", "QT_FEED_SYMBOLS": "ETHBTC, XMRBTC",
           "QT_SIZING_MARGIN": "BTC=0.05,USDT=100", "QT_FEED_EXIT_AT_END": "false",
           "QT_MODE": "paper", "QT_QPA_PLATFORM": "offscreen"}  # Qt's variable is not ours
    c = load(p, env=env)
    assert c.sizing.leverage == 4.0
    assert c.feed.symbols == ("ETHBTC", "XMRBTC")
    assert c.sizing.margin == {"BTC": 0.05, "USDT": 100.0}
    assert c.feed.exit_at_end is False


@pytest.mark.parametrize("text, needle", [
    ("[sizing]\nlevrage = 3\n", "unknown config key 'sizing.levrage'"),
    ("bogus = 1\n", "unknown config key 'bogus'"),
    ("[sizing]\nleverage = -1\n", "'sizing.leverage': expected a number > 0"),
    ("[sizing]\nleverage = 'x'\n", "'sizing.leverage'"),
    ("mode = 'yolo'\n", "'mode': expected one of 'paper', 'live'"),
    ("[feed]\nspeed = 0\n", "'feed.speed': expected \"max\" or a number > 0"),
    ("[feed]\nsymbols = 'ETHBTC'\n", "'feed.symbols': expected a list of strings"),
    ("[risk]\nmax_open_positions = 2.5\n", "'risk.max_open_positions': expected an integer"),
    ("[sizing]\ntake_profit_pct = 0.5\n", "take-profit must be larger than stop-loss"),
    ("feed = 3\n", "'feed': expected a table"),
    ("[feed\n", "not valid TOML"),
])
def test_bad_files_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=None) as err:
        load(write(tmp_path, text), env={})
    assert needle in str(err.value)


def test_bad_environment_values_name_the_variable():
    with pytest.raises(ConfigError) as err:
        load(env={"QT_SIZING_LEVERAGE": "lots"})
    assert "QT_SIZING_LEVERAGE" in str(err.value) and "'sizing.leverage'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load(env={"QT_RISK_MAX_DRAWDOWN": "10"})
    assert "risk.max_drawdown" in str(err.value) and "QT_RISK_MAX_DRAWDOWN" in str(err.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "nope.toml", env={})


def test_non_utf8_file_is_a_config_error_naming_it(tmp_path):
    """Found by fuzzing (issue 11, B14): a UnicodeDecodeError is no OSError, so it used to
    escape load() as a traceback (exit 1)."""
    p = tmp_path / "latin1.toml"
    p.write_bytes(b"[feed]\nsymbols = ['\xe9THBTC']\n")
    with pytest.raises(ConfigError) as err:
        load(p, env={})
    assert str(p) in str(err.value) and "not UTF-8" in str(err.value) and "0xe9" in str(err.value)


def test_cli_exits_2_on_bad_config(tmp_path):
    p = write(tmp_path, "[risk]\nmax_drawdown_pct = 200\n")
    out = subprocess.run([sys.executable, "-m", "qtraderd", "run", "--config", str(p),
                          "--state-dir", str(tmp_path / "s")], capture_output=True, text=True)
    assert out.returncode == 2
    assert "risk.max_drawdown_pct" in out.stderr and "<= 100" in out.stderr
    assert not (tmp_path / "s").exists()  # nothing touched before the config was valid


def test_effective_config_round_trips_to_json():
    import json

    d = load(env={}).to_dict()
    assert json.loads(json.dumps(d))["feed"]["speed"] == "max"


def test_every_key_is_documented_and_the_example_file_is_complete():
    """The README's table and examples/demo.toml stay true to the code."""
    from dataclasses import fields

    from qtraderd.core.config import _SECTION_TYPES, Config
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    keys = [f.name for f in fields(Config) if f.name not in _SECTION_TYPES]
    keys += [f"{s}.{g.name}" for s, t in _SECTION_TYPES.items() for g in fields(t)]
    missing = [k for k in keys if f"`{k}`" not in readme and f"`{k}," not in readme
               and f", `{k}`" not in readme]
    assert not missing, f"README.md does not document {missing}"
    example = load(REPO / "examples" / "qtraderd.toml", env={})
    assert example == load(env={})
    demo = load(REPO / "examples" / "demo.toml", env={})  # the `make run` demo loads
    assert demo.learning.enabled and demo.feed.source == "replay"


# ------------------------------------------------------------------ issue 11, B8: gaps


@pytest.mark.parametrize("text, needle", [
    ("[sizing]\nmargin = 0\n", "config key 'sizing.margin': expected a number or a table of "
     "QUOTE = number > 0 and <= 1e+12, got 0"),
    ("[sizing]\nmargin = 1e30\n", "'sizing.margin'"),
    ("[sizing]\nmargin = {BTC = 0.01, USDT = 0}\n", "got {'BTC': 0.01, 'USDT': 0}"),
    ("[account]\nbalances = {BTC = 0}\n", "config key 'account.balances'"),
    ("[account]\nbalances = {}\n", "'account.balances': expected at least one QUOTE"),
    ("[feed]\nstart = '2018-01-20'\nend = '2018-01-10'\n",
     "'feed.end' ('2018-01-10') and 'feed.start' ('2018-01-20'): the end must come after"),
    ("[feed]\nstart = '2018-01-20'\nend = '2018-01-20'\n", "the end must come after"),
    ("[feed]\nend = 'next week'\n", "config key 'feed.end': expected an ISO-8601"),
    ("[learning]\nfamilies = ['catboost']\n",
     "config key 'learning.families': expected a non-empty list of 'xgboost', 'lightgbm', "
     "'nhits', 'patchtst', got ['catboost']"),
    ("[learning]\nfamilies = []\n", "'learning.families'"),
    ("[train]\nfamilies = ['xgboost', 'svm']\n", "'train.families'"),
])
def test_values_that_cannot_trade_are_refused(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text), env={})
    assert needle in str(err.value)


@pytest.mark.parametrize("env, needles", [
    ({"QT_CONTINUOUS_LEARNING": "maybe"},
     ["'learning.enabled'", "got 'maybe' (from QT_CONTINUOUS_LEARNING)"]),
    ({"QT_AI_RETRAINING_AUTO_DEPLOY": "sure"}, ["(from QT_AI_RETRAINING_AUTO_DEPLOY)"]),
    ({"QT_FEED_SYMBOLS": ""}, ["QT_FEED_SYMBOLS is set but empty", "'feed.symbols'"]),
    ({"QT_FEED_SYMBOLS": " , "}, ["QT_FEED_SYMBOLS is set but empty"]),
    ({"QT_SIZING_LEVRAGE": "2"}, ["QT_SIZING_LEVRAGE", "did you mean QT_SIZING_LEVERAGE?"]),
    ({"QT_SIZNG_LEVERAGE": "2"}, ["unknown environment variable QT_SIZNG_LEVERAGE (did you "
                                  "mean QT_SIZING_LEVERAGE?)"]),
    ({"QT_NOT_A_THING": "1", "QT_ALSO_NOT": "2"},
     ["unknown environment variables QT_ALSO_NOT, QT_NOT_A_THING", "QT_<SECTION>_<KEY>"]),
    ({"QT_SIZING_MARGIN": "USDT=0"}, ["'sizing.margin'", "(from QT_SIZING_MARGIN)"]),
    ({"QT_LEARNING_FAMILIES": "catboost"}, ["'learning.families'", "catboost"]),
])
def test_bad_environments_name_the_variable_and_value(env, needles):
    with pytest.raises(ConfigError) as err:
        load(env=env)
    for needle in needles:
        assert needle in str(err.value)


def test_variables_that_are_not_ours_are_left_alone(tmp_path):
    env = {"QT_QPA_PLATFORM": "offscreen", "QT_SCALE_FACTOR": "2", "QT_IM_MODULE": "ibus",
           "QT_TEST_SHARED": "/x", "QT_BINANCE_API_KEY": "k", "QT_WEBHOOK_URL": "http://h"}
    with pytest.raises(ConfigError, match="QT_WEBHOOK_URL"):
        load(env=env)
    p = write(tmp_path, "[plugins.settings.webhook_notifier]\nurl_env = 'QT_WEBHOOK_URL'\n")
    assert load(p, env=env).plugins.settings  # a plugin setting names it: the plugin's


def test_config_knows_the_families_training_knows():
    from qtraderd.core.config import MODEL_FAMILIES
    from qtraderd.training.cli import ALL_FAMILIES

    assert set(MODEL_FAMILIES) == set(ALL_FAMILIES)


@pytest.mark.parametrize("env, needle", [
    ({"QT_FEED_SYMBOLS": ""}, "QT_FEED_SYMBOLS is set but empty"),
    ({"QT_CONTINUOUS_LEARNING": "maybe"}, "got 'maybe' (from QT_CONTINUOUS_LEARNING)"),
    ({"QT_SIZING_MARGIN": "1e30"}, "'sizing.margin'"),
    ({"QT_FEED_START": "2018-01-20", "QT_FEED_END": "2018-01-10"}, "'feed.end'"),
    ({"QT_LEARNING_FAMILIES": "catboost"}, "'learning.families'"),
    ({"QT_FEEDS_SYMBOLS": "ETHBTC"}, "did you mean QT_FEED_SYMBOLS?"),
])
def test_cli_refuses_bad_environments_with_exit_2(tmp_path, env, needle):
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    out = subprocess.run([sys.executable, "-m", "qtraderd", "run", "--state-dir",
                          str(tmp_path / "s")], capture_output=True, text=True,
                         env={**clean, **env}, timeout=60)
    assert out.returncode == 2 and needle in out.stderr, out.stderr[-1500:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "s").exists()


def test_no_setting_is_named_like_a_secret():
    """Learner jobs get the config through runtime.redact, which masks any value whose key
    looks secret ("key", "token", ...): a daemon setting named so would reach every job as
    '****' and fail it (exchange.listen_key_keepalive_s once did). Credentials never live
    in the config (runtime.secrets)."""
    from qtraderd.core.config import Config
    from qtraderd.runtime.redact import secret_key

    named = [f"{section}.{key}" for section, table in Config().to_dict().items()
             if isinstance(table, dict) for key in table if secret_key(key)]
    assert named == []
