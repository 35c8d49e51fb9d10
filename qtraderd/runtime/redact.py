"""Redacting secret-looking settings before a configuration is printed or stored.

The exchange credentials never enter the config (qtraderd.runtime.secrets), but plugin
settings are free-form tables an operator fills in, and they hold secrets: a webhook's
`headers = {Authorization = "Bearer ..."}`, a Slack/Discord webhook URL (whose path *is*
the credential), an `api_key`, a `token`. The effective config is logged at start
(`config in force: ...`), stored with every run (`runs.config`, which gets copied, backed
up and attached to bug reports) and handed to learner jobs (`job-config.toml`), so it goes
through `redact` first, everywhere. One function, so every place agrees on what a secret
looks like:

* a value under a key that names a secret (secret, token, password, passphrase,
  authorization, credential, cookie, api_key / apikey, private_key, or a key word such
  as `key`, `auth`, `pwd`) is replaced by MASK, whatever its type;
* every value of a `headers` table is replaced by MASK (Authorization, X-Api-Key, ...);
* a URL keeps only its scheme and host (and port): credentials in the userinfo, tokens in
  the query and webhook secrets in the path all become `scheme://host/****`;
* a string that starts like an authorization header value (`Bearer ...`, `Basic ...`,
  `token ...`) is replaced by MASK.

Variable *names* (`url_env = "QT_WEBHOOK_URL"`) are kept: they are not secrets, and a
learner job needs them to know the variable is a plugin's (qtraderd.core.config_env).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

MASK = "****"
# Substrings of a key (lower-cased, separators dropped) that mark its value as secret.
_SECRET_PARTS = ("secret", "token", "password", "passwd", "passphrase", "authorization",
                 "credential", "cookie", "apikey", "privatekey", "accesskey", "signature")
# Whole words of a key ("api_key" -> api, key) that mark it as secret.
_SECRET_WORDS = frozenset({"key", "auth", "pwd", "pass", "pin", "sig", "dsn"})
_AUTH_VALUE = re.compile(r"^\s*(bearer|basic|token|digest)\s+\S", re.IGNORECASE)
_URL = re.compile(r"^[a-z][a-z0-9+.\-]*://", re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def secret_key(name: str) -> bool:
    """Whether a setting called `name` holds a secret (by its name alone)."""
    low = name.lower()
    if low.endswith("_env") and not any(p in low for p in ("secret", "token", "password")):
        return False  # "url_env": the *name* of a variable, which is not a secret
    squashed = re.sub(r"[^a-z0-9]", "", low)
    if any(p in squashed for p in _SECRET_PARTS):
        return True
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    return any(w in _SECRET_WORDS for w in words)


def redact_url(url: str) -> str:
    """`scheme://host[:port]` plus `/****` when anything else was there (userinfo, path,
    query, fragment): for a webhook the path is the secret, for an API the query is."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    user = f"{MASK}@" if parts.username or parts.password else ""
    rest = "/" + MASK if (parts.path.strip("/") or parts.query or parts.fragment) else ""
    return f"{parts.scheme}://{user}{host}{port}{rest}"


def redact_value(value: Any) -> Any:
    """A value with no name to judge it by: URLs and authorization strings are redacted."""
    if isinstance(value, str):
        if _URL.match(value):
            return redact_url(value)
        if _AUTH_VALUE.match(value):
            return MASK
        return value
    if isinstance(value, dict):
        return redact(value)
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def redact(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a (nested) settings table with every secret-looking value masked.

    Works on `Config.to_dict()` as a whole: no typed qtraderd key looks like a secret, so
    only free-form tables (plugins.settings) change. The input is never modified.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key)
        if secret_key(name) and value not in ("", None, {}, []):
            out[key] = MASK if not (isinstance(value, str) and _ENV_NAME.match(value)
                                    and name.lower().endswith("env")) else value
        elif name.lower() == "headers" and isinstance(value, dict):
            out[key] = {k: MASK for k in value}
        else:
            out[key] = redact_value(value)
    return out


__all__ = ["MASK", "redact", "redact_url", "redact_value", "secret_key"]
