"""Config reload: re-read the file, validate, apply what can change live, say what cannot.

Triggered by SIGHUP (`systemctl reload qtraderd`) or `qtraderd ctl reload`. The new file
goes through the same `config.load` as at start (environment overrides included); an
invalid one is rejected with the loader's reason and the running configuration stays in
force, untouched. A valid one is compared key by key with the configuration in force:
keys listed in `config.LIVE_KEYS` are applied at once — every actor's `reconfigure` is
called in one go between two event-loop checkpoints, so no step is ever handled half
with the old and half with the new limits — and the rest are reported as needing a
restart and keep their old values (the configuration in force is a mix until then,
which `ctl status` and the log line make explicit).

Learner jobs are separate processes that load a config file: the daemon hands them a
snapshot of the configuration in force (`job-config.toml` in the state directory,
rewritten on every applied reload), never the operator's file, so an edit that was not
(or could not be) reloaded never leaks into training.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from qtraderd.core.config import LIVE_KEYS, Config, ConfigError, load, to_toml, validate
from qtraderd.runtime.redact import redact


class Daemon(Protocol):
    """What a reload reads and changes of the daemon (qtraderd.runtime.daemon.Daemon)."""

    cfg: Config
    config_path: Path | None
    job_config: Path | None
    state_dir: Path
    service: Any  # runtime.systemd.Service: RELOADING=1 / READY=1 around the reload
    supervisor: Any  # runtime.supervisor.Supervisor: the actors that adopt live keys

    def progress_line(self, final: bool = False) -> str: ...

log = logging.getLogger("qtraderd.runtime.reload")

JOB_CONFIG_NAME = "job-config.toml"


# ------------------------------------------------------------------------- comparing


def flat(cfg: Config | dict[str, Any]) -> dict[str, Any]:
    """Every key as "section.key" (or a top-level name) -> its plain value; `cfg` may also
    be `Config.to_dict()` as stored with a run (every dict at the top is a section)."""
    out: dict[str, Any] = {}
    for name, value in (cfg if isinstance(cfg, dict) else cfg.to_dict()).items():
        if isinstance(value, dict):
            out.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            out[name] = value
    return out


def changed_keys(old: Config | dict[str, Any], new: Config | dict[str, Any]) -> list[str]:
    a, b = flat(old), flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def stored_config(cfg: Config) -> dict[str, Any]:
    """The configuration as it may be printed or stored (runs.config, the start-up line,
    job-config.toml): `Config.to_dict()` with secret-looking settings redacted."""
    return redact(cfg.to_dict())


def config_line(cfg: Config, path: Path | None) -> str:
    """The start-up log line: where the config came from and what differs from defaults
    (file and QT_* variables together), so one grep shows the settings in force.
    Secret-looking values (plugin headers, webhook URLs, tokens) are redacted."""
    now = flat(stored_config(cfg))
    diff = [f"{k}={json.dumps(now[k])}" for k in changed_keys(Config(), cfg)]
    n = len(diff)
    return (f"config in force: {path or 'defaults (no --config)'}; {n} setting"
            f"{'s differ' if n != 1 else ' differs'} from the defaults"
            + (f": {', '.join(diff)}" if diff else ""))


def is_live(key: str) -> bool:
    return key in LIVE_KEYS or key.partition(".")[0] in LIVE_KEYS


def merge_live(old: Config, new: Config, keys: list[str]) -> Config:
    """`old` with the values of `keys` taken from `new`."""
    out = old
    for key in keys:
        section, _, name = key.partition(".")
        if not name:
            out = replace(out, **{section: getattr(new, section)})
            continue
        sub = replace(getattr(out, section), **{name: getattr(getattr(new, section), name)})
        out = replace(out, **{section: sub})
    return out


# ------------------------------------------------------------------------- snapshot


def write_job_config(cfg: Config, state_dir: Path) -> Path:
    """Atomically (re)write the snapshot learner jobs read; returns its path.

    Redacted like every stored copy: a job reads the trading, training and learning keys,
    none of which is secret; plugin settings (the only place secrets live) are not its
    business, and their variable names (`url_env`) survive redaction. Owner-only (0600).
    """
    path = Path(state_dir) / JOB_CONFIG_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(to_toml(stored_config(cfg), "written by qtraderd: the configuration in "
                         "force (for learner jobs; secret-looking settings redacted)"))
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------- reloading


class ReloadRejected(Exception):
    """The reload changed nothing; the message says why (for the log and `ctl`)."""


@dataclass
class Outcome:
    applied: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.applied and not self.needs_restart:
            return "no changes"
        parts = []
        if self.applied:
            n = len(self.applied)
            parts.append(f"{n} setting{'s' if n != 1 else ''} applied live "
                         f"({', '.join(self.applied)})")
        if self.needs_restart:
            n = len(self.needs_restart)
            parts.append(f"{n} need{'s' if n == 1 else ''} a restart "
                         f"({', '.join(self.needs_restart)})")
        return "; ".join(parts)


def reload_config(daemon: Daemon) -> dict[str, Any]:
    """Re-read and apply daemon.config_path; raises ReloadRejected (already logged)."""
    service = daemon.service
    service.reloading()
    try:
        outcome = _reload(daemon)
    except Exception as exc:
        # Anything else (an unreadable file, a bug) is a refusal too: a reload must never
        # take the daemon down or leave systemd's status at "reloading".
        rejected = exc if isinstance(exc, ReloadRejected) else ReloadRejected(
            f"{type(exc).__name__}: {exc}")
        log.error("config reload rejected: %s; the running configuration stays in force",
                  rejected)
        service.reload_refused(daemon.progress_line())
        if rejected is exc:
            raise
        raise rejected from exc
    log.info("config reloaded from %s: %s", daemon.config_path, outcome.summary())
    service.reloaded(daemon.progress_line())
    return {"config": str(daemon.config_path), "applied": outcome.applied,
            "needs_restart": outcome.needs_restart, "summary": outcome.summary()}


def _reload(daemon: Daemon) -> Outcome:
    if daemon.config_path is None:
        raise ReloadRejected("the daemon was started without --config: there is no file "
                             "to re-read (defaults and QT_* variables apply until a "
                             "restart)")
    try:
        new = load(daemon.config_path)
    except ConfigError as exc:
        raise ReloadRejected(str(exc)) from exc
    old = daemon.cfg
    keys = changed_keys(old, new)
    outcome = Outcome([k for k in keys if is_live(k)], [k for k in keys if not is_live(k)])
    if not outcome.applied:
        return outcome
    merged = merge_live(old, new, outcome.applied)
    try:
        validate(merged)  # e.g. a live sizing.leverage against a restart-only limit
    except ConfigError as exc:
        raise ReloadRejected(str(exc)) from exc
    apply_live(daemon, merged)
    return outcome


def apply_live(daemon: Daemon, cfg: Config) -> None:
    """Make `cfg` the configuration in force: daemon settings, then every actor."""
    logging.getLogger().setLevel(cfg.runtime.log_level)
    sup = daemon.supervisor
    if sup is not None:
        rt = cfg.runtime
        sup.intensity, sup.period_s = rt.restart_intensity, rt.restart_period_s
        sup.backoff_s, sup.backoff_max_s = rt.restart_backoff_s, rt.restart_backoff_max_s
        sup.reconfigure(cfg)
    plugins = getattr(daemon, "plugins", None)  # a service beside the actors, not one
    if plugins is not None:
        plugins.reconfigure(cfg)
    daemon.cfg = cfg
    if daemon.job_config is not None:
        write_job_config(cfg, daemon.state_dir)
