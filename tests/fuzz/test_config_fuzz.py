"""Fuzzing config files and `QT_*` environments (issue 11, B14).

The promise: `qtraderd run` either starts, or exits 2 with a message that names the bad
input (the config key, the environment variable, or the file), never a traceback. The
many cases run in-process through what `qtraderd run` calls before it touches the state
dir — `config.load` (TOML + environment), then `check_venue` — where anything but
ConfigError/VenueError would be a traceback at start-up. A handful of real `qtraderd run`
subprocesses then check the exit code and stderr end to end.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtraderd.core.config import Config, ConfigError, load, parse_time
from qtraderd.core.config_env import NOT_CONFIG, QT_TOOLKIT, SEED_ENV
from qtraderd.venues.factory import VenueError, check_venue
from tests.fuzz.fuzz_count import tally

pytestmark = pytest.mark.fuzz

REPO = Path(__file__).resolve().parents[2]
SECTIONS = {f.name: [g.name for g in fields(getattr(Config(), f.name))]
            for f in fields(Config) if hasattr(f.default_factory, "__dataclass_fields__")}
TOP = [f.name for f in fields(Config) if f.name not in SECTIONS]
KEYS = [f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks] + TOP
ENV_NAMES = sorted(f"QT_{k.upper().replace('.', '_')}" for k in KEYS)


# ------------------------------------------------------------------ a small TOML writer
def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else
                                            "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=True)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, Raw):
        return v.text
    raise TypeError(type(v))


class Raw:
    """A TOML literal written as is (dates, times)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text!r})"


def toml_doc(top: dict[str, Any], tables: dict[str, dict[str, Any]]) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in top.items()]
    for name, body in tables.items():
        lines.append(f"[{json.dumps(name)}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ strategies
plausible = st.sampled_from(["max", "1", "0", "-1", "true", "maybe", "", "BTC=1,ETH=0",
                             "xgboost", "catboost", "2018-01-10", "2018-01-10T00:00:00Z",
                             "ENFORCED", "paper", "live", "binance", "5m", "7m", "DEBUG"])
numbers = (st.integers() | st.floats() | st.sampled_from([0, -1, 1e30, 2**63, 2**64 + 1]))
dates = st.sampled_from([Raw("1979-05-27T07:32:00Z"), Raw("1979-05-27"), Raw("07:32:00")])
scalars = numbers | st.booleans() | st.text(max_size=20) | plausible | dates
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | plausible, inner, max_size=3),
                      max_leaves=8)
section_names = st.sampled_from(list(SECTIONS)) | st.text(min_size=1, max_size=8)


@st.composite
def config_tables(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    top = draw(st.dictionaries(st.sampled_from(TOP) | st.text(min_size=1, max_size=8),
                               values, max_size=2))
    tables: dict[str, dict[str, Any]] = {}
    for name in draw(st.lists(section_names, max_size=4, unique=True)):
        if name in top:
            continue
        keys = st.sampled_from(SECTIONS.get(name) or ["x"]) | st.text(min_size=1, max_size=8)
        tables[name] = draw(st.dictionaries(keys, values, max_size=4))
    return top, tables


env_values = (plausible | st.text(max_size=20) | numbers.map(str)).filter(
    lambda s: "\x00" not in s)
def environments(names: list[str]) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(st.sampled_from(names) | st.text(min_size=1, max_size=12).map(
        lambda s: "QT_" + s.upper()).filter(lambda s: "\x00" not in s and "=" not in s),
        env_values, max_size=4)


def startup_checks(path: Path | None, env: dict[str, str]) -> Config:
    """What `qtraderd run` does with its config before touching the state dir."""
    cfg = load(path, env)
    check_venue(cfg)
    return cfg


KNOWN_VARS = set(ENV_NAMES) | set(SEED_ENV) | NOT_CONFIG
# the merged design's hints: "did you mean QT_X?" and the examples of the unknown-variable
# refusal — names the operator did not set, but only ever known ones
HINT = re.compile(r"did you mean (QT_[A-Z0-9_]+)\?|\(e\.g\. (QT_[A-Z0-9_]+), (QT_[A-Z0-9_]+);")
UNKNOWN_VARS = re.compile(r"^unknown environment variables? (.*?): qtraderd reads ")


def ours(var: str) -> bool:
    """A QT_* variable qtraderd reads (a config key, a seed switch, a secret) or one it
    leaves to the Qt toolkit; every other QT_* variable must be refused."""
    return var in KNOWN_VARS or var.startswith(QT_TOOLKIT)


def assert_names_input(msg: str, path: Path | None, env: dict[str, str]) -> None:
    """The message names something the operator gave — the file, a config key, or a
    variable they set — and no variable they did not set except as a hint naming a
    variable that exists. An unknown-variable refusal lists only unknown variables."""
    for hint in HINT.findall(msg):
        for var in filter(None, hint):
            assert var in KNOWN_VARS, f"hint names {var}, which is no variable: {msg!r}"
    bare = HINT.sub("", msg)
    names = bare  # the message without the values it echoes ("got 'QT_0'" names no variable)
    for value in sorted((v for v in env.values() if "QT_" in v), key=len, reverse=True):
        names = names.replace(value, "<value>")
    # a file's own key spelled like a variable ("unknown config key 'QT_0'") names a key
    names = re.sub(r"config keys? '[^']*'", "config key <key>", names)
    for m in re.finditer(r"\bQT_[A-Z0-9_]+", names):  # (a set name may hold any character)
        assert any(names.startswith(v, m.start()) for v in env), (
            f"error names {m.group()}, which is not set: {msg!r} (env {env})")
    if m := UNKNOWN_VARS.match(bare):
        listed = m.group(1)
        for var in env:
            if not ours(var):
                assert var in listed, f"unknown {var} not named: {msg!r}"
            else:
                assert not re.search(rf"(^|, ){re.escape(var)}(,|$| \()", listed), (
                    f"refused {var}, which is ours: {msg!r}")
    assert ((path is not None and str(path) in msg) or re.search(r"config keys? '", msg)
            or any(v in msg for v in env)), f"error names no input: {msg!r}"


def check(path: Path | None, env: dict[str, str]) -> None:
    try:
        startup_checks(path, env)
    except (ConfigError, VenueError) as exc:
        msg = str(exc)
        assert msg and "Traceback" not in msg
        assert_names_input(msg, path, env)
        return
    strangers = [v for v in env if v.startswith("QT_") and not ours(v)]
    assert not strangers, f"started with unknown variables {strangers} set"


def test_config_files(tmp_path: Path) -> None:
    path = tmp_path / "fuzz.toml"

    @given(config_tables())
    def case(doc: tuple[dict[str, Any], dict[str, dict[str, Any]]]) -> None:
        tally()
        text = toml_doc(*doc)
        path.write_text(text, encoding="utf-8")
        check(path, {})

    case()


def test_config_text(tmp_path: Path) -> None:
    """Not TOML at all, or a valid config cut and spliced: refused naming the file."""
    path = tmp_path / "fuzz.toml"
    base = (REPO / "examples" / "demo.toml").read_text()

    @given(st.text(max_size=200) | st.tuples(st.integers(0, len(base)), st.text(max_size=8),
                                             st.integers(0, 40)).map(
        lambda t: base[:t[0]] + t[1] + base[t[0] + t[2]:]))
    def case(text: str) -> None:
        tally()
        path.write_text(text, encoding="utf-8")
        check(path, {})

    case()


def test_config_bytes(tmp_path: Path) -> None:
    path = tmp_path / "fuzz.toml"

    @given(st.binary(max_size=200))
    def case(data: bytes) -> None:
        tally()
        path.write_bytes(data)
        check(path, {})

    case()


def test_environments() -> None:
    @given(environments(ENV_NAMES))
    def case(env: dict[str, str]) -> None:
        tally()
        check(None, env)

    case()


def test_seed_environment_names() -> None:
    @given(environments(sorted(SEED_ENV)))
    def case(env: dict[str, str]) -> None:
        tally()
        check(None, env)

    case()


def test_feed_times() -> None:
    times = st.text(max_size=25) | st.datetimes().map(lambda d: d.isoformat()) | st.sampled_from(
        ["2018-01-10", "2018-01-10T00:00:00Z", "2018-13-01", "yesterday", "0"])

    @given(times, times)
    def case(start: str, end: str) -> None:
        tally()
        env = {"QT_FEED_START": start, "QT_FEED_END": end}
        try:
            cfg = startup_checks(None, env)
        except (ConfigError, VenueError) as exc:
            assert "feed.start" in str(exc) or "feed.end" in str(exc), exc
            return
        try:  # what the daemon does with them later; by then it must not fail
            s = parse_time("feed.start", cfg.feed.start)
            e = parse_time("feed.end", cfg.feed.end)
        except ConfigError as exc:
            raise AssertionError(f"accepted at load, refused at run: {exc}") from exc
        assert s is None or e is None or s < e, (start, end)  # end not after start: refused

    case()


# ------------------------------------------------------------------ real start-ups
BAD_STARTS = [
    ("file", "[sizing]\nleverage = 'high'\n", {}, "sizing.leverage"),
    ("file", "[feed\nsymbols = 1\n", {}, "fuzz.toml"),
    ("file", "[nosuch]\nx = 1\n", {}, "nosuch"),
    ("file", b"\xff\xfe[feed]\n", {}, "fuzz.toml"),
    ("env", "", {"QT_RISK_MAX_LEVERAGE": "1e999"}, "QT_RISK_MAX_LEVERAGE"),
    ("env", "", {"QT_FEED_INTERVAL": "7m"}, "QT_FEED_INTERVAL"),
    ("env", "", {"QT_RISK_NOSUCH": "1"}, "QT_RISK_NOSUCH"),
]


@pytest.mark.parametrize(("kind", "text", "env", "named"), BAD_STARTS,
                         ids=["file-type", "file-toml", "file-section", "file-utf8",
                              "env-number", "env-choice", "env-unknown-key"])
def test_real_start_refuses_bad_input(tmp_path: Path, kind: str, text: str | bytes,
                                      env: dict[str, str], named: str) -> None:
    cfg = tmp_path / "fuzz.toml"
    if isinstance(text, bytes):
        cfg.write_bytes(text)
    else:
        cfg.write_text(text)
    base = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    out = subprocess.run(
        [sys.executable, "-m", "qtraderd", "run", "--state-dir", str(tmp_path / "state"),
         "--models-dir", str(tmp_path / "models"), "--no-train",
         *(["--config", str(cfg)] if kind == "file" else [])],
        env={**base, **env, "PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True,
        text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert named in out.stderr and "qtraderd: error:" in out.stderr
    assert not (tmp_path / "state").exists()  # refused before touching the state dir
