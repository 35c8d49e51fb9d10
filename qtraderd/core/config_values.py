"""Config values: turning a TOML value or a `QT_*` string into a field's type, or an error.

Each config key is a dataclass field (qtraderd.core.config) whose metadata holds its
bounds and choices; `coerce` checks a raw value against them and raises `ConfigError`
naming the key, what was expected and what was given (and the environment variable, when
the value came from one). Kept apart from the declarations so each file reads as one
thing: what the keys are, and how a value becomes one.
"""

from __future__ import annotations

import json
import math
from typing import Any

ENV_PREFIX = "QT_"


class ConfigError(ValueError):
    """A bad config key or value; the message is meant for the operator as-is."""


def _describe(f: Any) -> str:
    meta = f.metadata
    t = f.type
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    if f.name == "speed":
        return '"max" or a number > 0'
    if f.name == "settings":
        return "a table of tables, [plugins.settings.NAME] (JSON in the environment)"
    if "dict" in str(t):
        return "a number or a table of QUOTE = number" + _bounds(meta, " ")
    if "tuple[float" in str(t):
        return "a list of numbers > 0"
    if "tuple" in str(t):
        if meta.get("items"):
            return "a non-empty list of " + ", ".join(repr(c) for c in meta["items"])
        return "a list of strings"
    if "bool" in str(t):
        return "true or false"
    kind = "an integer" if "int" in str(t) else "a number"
    return kind + _bounds(meta, " ")


def _bounds(meta: Any, sep: str) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    bounds = []
    if meta.get("positive"):
        bounds.append("> 0")
    if lo is not None:
        bounds.append(f">= {lo:g}")
    if hi is not None:
        bounds.append(f"<= {hi:g}")
    return sep + " and ".join(bounds) if bounds else ""


def _in_bounds(meta: Any, value: float) -> bool:
    return not ((meta.get("positive") and not value > 0)
                or (meta.get("lo") is not None and value < meta["lo"])
                or (meta.get("hi") is not None and value > meta["hi"]))


def coerce(key: str, f: Any, raw: Any, env: str | None) -> Any:
    """Turn a TOML value (or the string of environment variable `env`) into the field's
    type, or raise ConfigError naming the key, the variable, what was expected and what
    was given."""
    t = str(f.type)
    expected = _describe(f)
    from_env = env is not None
    where = f" (from {env})" if from_env else ""

    given = raw  # what the operator wrote, before any parsing below

    def bad() -> ConfigError:
        return ConfigError(f"config key '{key}': expected {expected}, got {given!r}{where}")

    meta = f.metadata
    if f.name == "speed":
        if isinstance(raw, str) and raw.strip().lower() == "max":
            return math.inf
        value = _number(raw, from_env)
        if value is None or not value > 0:
            raise bad()
        return value
    if t == "bool":
        if isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        raise bad()
    if t.startswith("tuple[float"):
        if from_env and isinstance(raw, str):
            raw = [p.strip() for p in raw.split(",") if p.strip()]
        nums = [_number(x, from_env) for x in raw] if isinstance(raw, list | tuple) else [None]
        if not nums or any(n is None or n <= 0 for n in nums):
            raise bad()
        return tuple(float(n) for n in nums if n is not None)
    if t.startswith("tuple"):
        if from_env and isinstance(raw, str):
            if not raw.strip(" ,"):  # set but empty: "" must not widen to "every symbol"
                raise ConfigError(
                    f"config key '{key}': environment variable {env} is set but empty "
                    f"(expected {expected}); unset it to keep the file's or the default "
                    f"value")
            raw = [p.strip() for p in raw.split(",") if p.strip()]
        if not isinstance(raw, list | tuple) or not all(isinstance(x, str) and x for x in raw):
            raise bad()
        items = meta.get("items")
        if items and (not raw or any(x not in items for x in raw)):
            raise bad()
        return tuple(raw)
    if f.name == "settings":
        return _plugin_settings(raw, from_env, bad)
    if t.startswith("dict"):
        if from_env and isinstance(raw, str):
            raw = _parse_env_table(raw)
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            raw = {"*": raw}
        if not isinstance(raw, dict):
            raise bad()
        out: dict[str, float] = {}
        for k, v in raw.items():
            num = _number(v, from_env)
            if num is None or num < 0 or not isinstance(k, str) or not _in_bounds(meta, num):
                raise bad()
            out[k.upper() if k != "*" else k] = num
        return out
    if t == "str":
        if not isinstance(raw, str):
            raise bad()
        if meta.get("choices"):
            norm = raw.upper() if f.name == "log_level" else raw
            if norm not in meta["choices"]:
                raise bad()
            return norm
        return raw
    # numbers
    value = _number(raw, from_env)
    if value is None:
        raise bad()
    if t == "int":
        if value != int(value):
            raise bad()
        value = int(value)
    if not _in_bounds(meta, value):
        raise bad()
    return value


def _plugin_settings(raw: Any, from_env: bool, bad: Any) -> dict[str, dict[str, Any]]:
    """[plugins.settings.NAME] tables: plain TOML values (no dates: the effective config is
    stored as JSON), passed to each plugin's setup as they are."""
    if from_env and isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise bad() from None

    def plain(v: Any) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return isinstance(v, str | int | float | bool)

    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and plain(v) for k, v in raw.items()):
        raise bad()
    return {k: dict(v) for k, v in raw.items()}


def _number(raw: Any, from_env: bool) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw) if math.isfinite(raw) else None
    if from_env and isinstance(raw, str):
        try:
            v = float(raw)
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return None


def _parse_env_table(raw: str) -> Any:
    raw = raw.strip()
    if "=" not in raw:
        try:
            return float(raw)  # a plain number applies to every quote currency
        except ValueError:
            return raw
    table: dict[str, str] = {}
    for part in raw.split(","):
        if "=" not in part:
            return raw
        k, v = part.split("=", 1)
        table[k.strip()] = v.strip()
    return table
