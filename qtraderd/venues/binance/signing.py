"""Signing Binance USD-M requests (TRADE / USER_DATA endpoints), and keeping the secret and
the signatures out of every message.

Binance's rule: `signature = hex(HMAC_SHA256(secret, totalParams))`, where totalParams is
the query string exactly as sent (parameters in the query string for every method here, so
the body is empty). `timestamp` (ms, on the *exchange's* clock) and `recvWindow` go into the
signed query; the API key goes in the `X-MBX-APIKEY` header. We build the query string
ourselves, percent-encoded (`%20`, never `+`), and send that very string: what is signed is
byte for byte what the exchange receives, so encoding can never make a signature invalid
(Binance requires signing the percent-encoded payload since 2026-01-15).

Why the redaction: a signature is a one-shot credential for that exact request until the
recvWindow ends (a replay inside the window places the same order again), and httpx puts
the full URL in its log lines and some exception texts. `redact` masks `signature=...` in
any text; `install_log_redaction` adds it as a filter on httpx's logger. The secret itself
is held by `ApiCredentials`, which never prints it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlencode

API_KEY_HEADER = "X-MBX-APIKEY"
MASK = "****"
# a request's signature, and a user stream's listenKey (it reads the account's events)
_SIGNATURE = re.compile(r"((?:signature|listenKey)=)[^&\s'\"<>]*", re.IGNORECASE)

__all__ = ["API_KEY_HEADER", "ApiCredentials", "encode_params", "install_log_redaction",
           "redact", "sign"]


class _Revealable(Protocol):
    def reveal(self) -> str: ...


def _plain(value: str | _Revealable) -> str:
    return value if isinstance(value, str) else value.reveal()


def sign(secret: str, total_params: str) -> str:
    """Binance's signature: lowercase hex HMAC-SHA256 of `total_params` keyed by `secret`."""
    return hmac.new(secret.encode(), total_params.encode(), hashlib.sha256).hexdigest()


def _text(value: Any) -> str:
    if isinstance(value, bool):  # Binance wants true/false, Python says True/False
        return "true" if value else "false"
    return str(value)


def encode_params(params: Mapping[str, Any]) -> str:
    """`k=v&...` in the given order, percent-encoded; None values are left out."""
    return urlencode([(k, _text(v)) for k, v in params.items() if v is not None],
                     quote_via=quote, safe="")


class ApiCredentials:
    """The API key and secret. repr/str show only the key's last 4 characters, never the
    secret; it cannot be pickled. Build it from plain strings or from anything with
    `reveal()` (qtraderd.runtime.secrets.Secret), at the one place that loads them."""

    __slots__ = ("_key", "_secret")

    def __init__(self, api_key: str | _Revealable, api_secret: str | _Revealable) -> None:
        key, secret = _plain(api_key), _plain(api_secret)
        if not key or not secret:
            raise ValueError("API credentials need both a key and a secret (one is empty)")
        self._key, self._secret = key, secret

    @property
    def api_key(self) -> str:
        """The key is sent in a header on every signed request; it is not printed either."""
        return self._key

    def headers(self) -> dict[str, str]:
        return {API_KEY_HEADER: self._key}

    def signed_query(self, params: Mapping[str, Any], timestamp_ms: int,
                     recv_window: int) -> str:
        """The query string to send: the parameters, recvWindow, timestamp, then signature
        over everything before it."""
        total = encode_params({**params, "recvWindow": recv_window, "timestamp": timestamp_ms})
        return f"{total}&signature={sign(self._secret, total)}"

    def __repr__(self) -> str:
        return f"ApiCredentials(api_key='...{self._key[-4:]}', api_secret='{MASK}')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> Any:
        raise TypeError("ApiCredentials cannot be pickled (the secret would leave the process)")


def redact(text: str) -> str:
    """`text` with every `signature=<value>` (and `listenKey=<value>`) replaced by
    `signature=****`."""
    if "ignature=" in text or "istenkey=" in text.lower():
        return _SIGNATURE.sub(rf"\g<1>{MASK}", text)
    return text


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it as usual
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = _RedactFilter()


def install_log_redaction(names: tuple[str, ...] = ("httpx", "httpcore")) -> None:
    """Mask signatures in the records of httpx's loggers (httpx logs each request's full
    URL at INFO). Idempotent. qtraderd.runtime.logs also raises their level to WARNING;
    this holds whatever level they are set to."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
