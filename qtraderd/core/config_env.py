"""`QT_*` environment variables: which config key each one sets, and which are not ours.

`QT_<SECTION>_<KEY>` and `QT_<TOPLEVEL>` override the config file; the seed's switch names
(SEED_ENV) still work. Every other `QT_*` variable is refused, naming it and the closest
variable we know: a typo (`QT_SIZING_LEVRAGE=2`) silently ignored means trading with a
setting the operator believes is changed. The exceptions are variables that are somebody
else's — the Qt toolkit's (QT_QPA_PLATFORM, QT_SCALE_FACTOR, ... set by desktop sessions),
the exchange credentials (read by qtraderd.runtime.secrets, never config), the test suite's
data directory — and variables a plugin setting names (`url_env = "QT_WEBHOOK_URL"`).
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import fields
from typing import Any

from qtraderd.core.config_values import ENV_PREFIX, ConfigError

# The seed's switch names, kept working (they map onto [learning]).
SEED_ENV = {
    "QT_CONTINUOUS_LEARNING": "learning.enabled",
    "QT_AI_RETRAINING_ENABLED": "learning.enabled",
    "QT_AI_RETRAINING_MODE": "learning.mode",
    "QT_AI_RETRAINING_AUTO_DEPLOY": "learning.auto_deploy",
    "QT_RETRAIN_INTERVAL_HOURS": "learning.retrain_interval_hours",
}
# QT_* variables qtraderd reads outside the config (runtime.secrets; tests/conftest.py).
NOT_CONFIG = frozenset({"QT_BINANCE_API_KEY", "QT_BINANCE_API_SECRET", "QT_TEST_SHARED"})
# The Qt toolkit's variables (doc.qt.io, "Environment variables"), left alone.
QT_TOOLKIT = ("QT_QPA_", "QT_SCALE_FACTOR", "QT_SCREEN_SCALE_FACTORS",
              "QT_AUTO_SCREEN_SCALE_FACTOR", "QT_ENABLE_HIGHDPI_SCALING", "QT_FONT_DPI",
              "QT_DEVICE_PIXEL_RATIO", "QT_IM_", "QT_ACCESSIBILITY", "QT_LOGGING_",
              "QT_PLUGIN_PATH", "QT_DEBUG_", "QT_STYLE_OVERRIDE", "QT_QUICK_", "QT_WAYLAND_",
              "QT_XCB_", "QT_X11_", "QT_XKB_", "QT_OPENGL", "QT_ANGLE_", "QT_GRAPHICSSYSTEM",
              "QT_SELECT", "QT_LINUX_", "QT_MESSAGE_PATTERN", "QT_HASH_SEED", "QT_NO_",
              "QT_USE_NATIVE_WINDOWS", "QT_FATAL_", "QT_FORCE_STDERR_LOGGING",
              "QT_ASSUME_STDERR_HAS_CONSOLE", "QT_WIN_", "QT_MAC_", "QT_ANDROID_",
              "QT_QUICK_CONTROLS_", "QT_MEDIA_", "QT_FFMPEG_", "QT_SVG_", "QT_GSTREAMER_")


def env_var(key: str) -> str:
    """The variable that sets config key "section.key" (or a top-level key)."""
    return ENV_PREFIX + key.upper().replace(".", "_")


def env_overrides(env: typing.Mapping[str, str], top: set[str], sections: dict[str, type]
                  ) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """(config data from the environment, key -> the variable that set it, variables that
    are no config key). The last list is checked by `check_unknown` once the plugin
    settings (which may name variables of their own) are known.

    A variable whose second word is a section but whose key is unknown is refused here,
    naming the section's keys.
    """
    data: dict[str, Any] = {}
    used: dict[str, str] = {}
    unknown: list[str] = []
    for var, value in sorted(env.items()):
        if var in SEED_ENV:
            section, key = SEED_ENV[var].split(".")
            data.setdefault(section, {})[key] = value.upper() if key == "mode" else value
            used[SEED_ENV[var]] = var
            continue
        if not var.startswith(ENV_PREFIX) or var in NOT_CONFIG or var.startswith(QT_TOOLKIT):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        if rest in top:
            data[rest] = value
            used[rest] = var
            continue
        section, key = _split(rest, sections)
        if section is None:
            unknown.append(var)
            continue
        known = {f.name for f in fields(sections[section])}
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {env_var(f'{section}.{close[0]}')}? " if close else ""
            raise ConfigError(
                f"unknown config key '{section}.{key}' (from environment variable {var}; "
                f"{hint}known keys in [{section}]: {', '.join(sorted(known))})")
        data.setdefault(section, {})[key] = value
        used[f"{section}.{key}"] = var
    return data, used, unknown


def _split(rest: str, sections: dict[str, type]) -> tuple[str | None, str]:
    section, _, key = rest.partition("_")
    if section in sections and key:
        return section, key
    return None, ""


def known_vars(top: set[str], sections: dict[str, type]) -> list[str]:
    names = [env_var(k) for k in top] + list(SEED_ENV) + sorted(NOT_CONFIG)
    names += [env_var(f"{s}.{f.name}") for s, t in sections.items() for f in fields(t)]
    return sorted(names)


def named_by_plugins(settings: dict[str, dict[str, Any]]) -> set[str]:
    """Variables a plugin setting names (`*_env = "QT_..."`): the plugin reads them."""
    out: set[str] = set()

    def walk(table: dict[str, Any]) -> None:
        for k, v in table.items():
            if isinstance(v, dict):
                walk(v)
            elif isinstance(v, str) and k.endswith("_env"):
                out.add(v)

    walk(settings)
    return out


def check_unknown(unknown: list[str], allowed: set[str], top: set[str],
                  sections: dict[str, type]) -> None:
    """Refuse the QT_* variables that are nobody's, naming the closest known one."""
    left = [v for v in unknown if v not in allowed]
    if not left:
        return
    known = known_vars(top, sections)
    parts = []
    for var in left:
        close = difflib.get_close_matches(var, known, n=1, cutoff=0.75)
        parts.append(f"{var} (did you mean {close[0]}?)" if close else var)
    raise ConfigError(
        f"unknown environment variable{'s' if len(left) > 1 else ''} {', '.join(parts)}: "
        f"qtraderd reads QT_<SECTION>_<KEY> for the config keys (e.g. QT_FEED_SYMBOLS, "
        f"QT_SIZING_LEVERAGE; see README, Configuration); unset "
        f"{'them' if len(left) > 1 else 'it'}")
