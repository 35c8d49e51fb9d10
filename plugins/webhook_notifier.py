"""Notifier: POST every event as JSON to a webhook (Slack/Discord bridges, ntfy, n8n...).

Idle unless a URL is configured. Settings ([plugins.settings.webhook_notifier]):
  url       = ""    where to POST; or
  url_env   = ""    the name of an environment variable holding the URL (keeps a URL
                    with a token in it out of the config file, the logs and the store)
  events    = []    event kinds to send (trade_opened, trade_closed, model_deployed,
                    model_rolled_back, risk_state, symbol_state); empty: all
  timeout_s = 5     HTTP timeout per request
  headers   = {}    extra request headers, e.g. {Authorization = "Bearer ..."}

Body: {"source": "qtraderd", "event": KIND, "ts": epoch ms, "time": ISO-8601,
"data": {...}} (plugins/README.md lists the data of each kind). A non-2xx answer or a
network error is an error of this plugin: counted, logged once per burst, and after
[plugins] max_errors in a row the plugin is disabled until this file changes. Errors name
the server (scheme, host and port) and the status, never the URL's path or query nor the
headers: those often carry a token. (The daemon also masks the values of `url` and
`headers` in its log, and keeps httpx's own per-request lines, which quote the full URL,
out of it.) The call is async (httpx.AsyncClient) and the host bounds it with
[plugins] notify_timeout_s as well.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx

from qtraderd.plugins.api import EVENT_KINDS, Event

PLUGIN_API = 1
NAME = "webhook_notifier"
VERSION = "1.0"

log = logging.getLogger("qtraderd.plugins.webhook_notifier")

_url = ""
_events: frozenset[str] = frozenset()
_timeout = 5.0
_headers: dict[str, str] = {}
sent = 0  # successful posts (tests and curious operators)


def setup(settings: dict[str, Any]) -> None:
    global _url, _events, _timeout, _headers
    unknown = set(settings) - {"url", "url_env", "events", "timeout_s", "headers"}
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)} "
                         "(known: url, url_env, events, timeout_s, headers)")
    url = settings.get("url", "")
    env = settings.get("url_env", "")
    if not isinstance(url, str) or not isinstance(env, str):
        raise ValueError("url and url_env must be strings")
    if env:
        url = os.environ.get(env, "")
        if not url:
            log.warning("webhook_notifier: environment variable %s is empty: idle", env)
    if url and not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https:// (got {url[:8]!r}...)")
    events = settings.get("events", [])
    if not isinstance(events, list) or any(e not in EVENT_KINDS for e in events):
        raise ValueError(f"events must be a list of {', '.join(EVENT_KINDS)}, got {events!r}")
    timeout = settings.get("timeout_s", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"timeout_s must be a number > 0, got {timeout!r}")
    headers = settings.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError("headers must be a table of strings")
    _url, _events, _timeout, _headers = url, frozenset(events), float(timeout), dict(headers)
    if not _url:
        log.info("webhook_notifier: no url configured: idle")


async def notify(event: Event) -> None:
    global sent
    if not _url or (_events and event.kind not in _events):
        return
    payload = {"source": "qtraderd", **event.to_dict()}
    try:
        async with httpx.AsyncClient(timeout=_timeout) as client:
            response = await client.post(_url, json=payload, headers=_headers)
    except httpx.HTTPError as exc:
        raise WebhookError(f"{type(exc).__name__} posting to {_origin()}") from None
    if not response.is_success:
        raise WebhookError(f"HTTPStatusError: {_origin()} answered {response.status_code} "
                           f"{response.reason_phrase}")
    sent += 1


class WebhookError(Exception):
    """A failed POST, described without the URL's path, query or the headers."""


def _origin() -> str:
    url = httpx.URL(_url)
    return f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
