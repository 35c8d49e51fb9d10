"""Exchange credentials: where they come from, and keeping them out of everything else.

Sources, first complete pair wins:

1. `$CREDENTIALS_DIRECTORY/binance-api-key` and `binance-api-secret`: systemd's
   `LoadCredential=` copies them there for the service only (never in the unit's
   environment, where `systemctl show` and /proc/<pid>/environ would reveal them).
2. `QT_BINANCE_API_KEY` and `QT_BINANCE_API_SECRET` environment variables (development,
   containers).

Why so many layers: a key that reaches a log line, a `ctl` reply, a report or the SQLite
store (which gets copied, backed up and attached to bug reports) is a key that leaks. So:

* the values are wrapped in `Secret`, whose repr/str/format all print `Secret('****')` and
  which refuses to be pickled or JSON-encoded — an accidental f-string shows the mask;
* they are never part of `Config`, so the config JSON stored with each run, config dumps
  and reports cannot contain them;
* the environment variables are removed from `os.environ` once read, so subprocesses
  (training, learner jobs, the store writer) do not inherit them;
* a logging record factory masks any loaded value that still turns up in a log message or
  traceback (defence in depth: it should never fire).
"""

from __future__ import annotations

import hmac
import logging
import os
import traceback
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
KEY_FILE, SECRET_FILE = "binance-api-key", "binance-api-secret"
KEY_ENV, SECRET_ENV = "QT_BINANCE_API_KEY", "QT_BINANCE_API_SECRET"
MASK = "****"
# Values shorter than this are not masked in logs: masking "a" would mangle every line,
# and a key that short is not a real key anyway.
_MIN_MASKED_LEN = 6


class CredentialsError(ValueError):
    """Credentials are incomplete, unreadable, or missing where required; says which."""


class Secret:
    """A string that does not print itself. Use `reveal()` exactly where it is needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    __hash__ = None  # type: ignore[assignment]  # equal values must not be findable by hash

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled (it would leave the process in clear)")


@dataclass(frozen=True)
class Credentials:
    api_key: Secret
    api_secret: Secret
    source: str  # where they came from, e.g. "$CREDENTIALS_DIRECTORY (binance-api-key, ...)"


# ------------------------------------------------------------------------- loading


def _read_file(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"cannot read credential file {path}: {exc.strerror}") from exc
    return text.strip() or None


def _pair(key: str | None, secret: str | None, key_name: str, secret_name: str,
          where: str) -> tuple[str, str] | None:
    if key and secret:
        return key, secret
    if key or secret:
        have, miss = (key_name, secret_name) if key else (secret_name, key_name)
        raise CredentialsError(f"{where} has {have} but not {miss} (empty or missing): "
                               "give both or neither")
    return None


def load(env: MutableMapping[str, str] | None = None, *, scrub: bool = True
         ) -> Credentials | None:
    """The exchange credentials, or None if there are none.

    Every value found (also one from a source that lost to another) is registered for log
    masking; with `scrub`, the QT_BINANCE_* variables are removed from `env`.
    """
    env = os.environ if env is None else env
    found: Credentials | None = None
    cred_dir = env.get(CREDENTIALS_ENV, "")
    if cred_dir:
        d = Path(cred_dir)
        key, secret = _read_file(d / KEY_FILE), _read_file(d / SECRET_FILE)
        register(key, secret)
        pair = _pair(key, secret, KEY_FILE, SECRET_FILE, f"${CREDENTIALS_ENV} ({d})")
        if pair is not None:
            found = Credentials(Secret(pair[0]), Secret(pair[1]),
                                f"${CREDENTIALS_ENV} ({KEY_FILE}, {SECRET_FILE})")
    key, secret = env.get(KEY_ENV, "").strip() or None, env.get(SECRET_ENV, "").strip() or None
    register(key, secret)
    if scrub:
        env.pop(KEY_ENV, None)
        env.pop(SECRET_ENV, None)
    if found is None:
        pair = _pair(key, secret, KEY_ENV, SECRET_ENV, "the environment")
        if pair is not None:
            found = Credentials(Secret(pair[0]), Secret(pair[1]),
                                f"environment ({KEY_ENV}, {SECRET_ENV})")
    return found


def require(mode: str, creds: Credentials | None) -> None:
    """Live trading without credentials is a configuration error, raised at start."""
    if mode == "live" and creds is None:
        raise CredentialsError(
            f'mode = "live" needs Binance API credentials and none were found: missing '
            f"{KEY_FILE} and {SECRET_FILE} in ${CREDENTIALS_ENV} (systemd LoadCredential=), "
            f"or {KEY_ENV} and {SECRET_ENV} in the environment")


def describe(creds: Credentials | None, mode: str) -> str:
    """The start-up log line: which source was used, never a value."""
    if creds is None:
        return f"exchange credentials: none ({mode} mode)"
    unused = "" if mode == "live" else f"; not used in {mode} mode"
    return f"exchange credentials: from {creds.source}{unused}"


# ------------------------------------------------------------------------- log masking

_masked: set[str] = set()
_factory_installed = False


def register(*values: str | None) -> None:
    """Mask these values in every log record from now on."""
    new = {v for v in values if v and len(v) >= _MIN_MASKED_LEN}
    if new:
        _masked.update(new)
        _install_factory()


def mask(text: str) -> str:
    """`text` with every registered value replaced by ****."""
    for value in sorted(_masked, key=len, reverse=True):  # longest first: overlapping values
        if value in text:
            text = text.replace(value, MASK)
    return text


def _contains_secret(text: str) -> bool:
    return any(v in text for v in _masked)


def _mask_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it later, as usual
        return
    if _contains_secret(message):
        record.msg, record.args = mask(message), None
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if _contains_secret(text):
            record.exc_text = mask(text)  # formatters use exc_text when it is set
    if record.stack_info and _contains_secret(record.stack_info):
        record.stack_info = mask(record.stack_info)


def _install_factory() -> None:
    """Wrap the record factory: every record of every logger and handler passes through
    it, whatever handlers (stderr, journald) are set up before or after."""
    global _factory_installed
    if _factory_installed:
        return
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _masked:
            _mask_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


def forget_all() -> None:
    """Tests: drop the registered values (the factory stays, and is then a no-op)."""
    _masked.clear()


__all__ = ["Credentials", "CredentialsError", "Secret", "describe", "load",
           "mask", "register", "require"]
