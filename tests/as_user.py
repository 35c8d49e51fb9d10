"""Run a function in a forked child under other credentials (tests of socket permissions).

A fork rather than a subprocess: the interpreter lives under /root, which another user
cannot execute, and a forked child needs nothing from the filesystem. The child drops to
the given uid/gid/supplementary groups, runs `fn`, and sends back its JSON-able result (or
the repr of what it raised) through a pipe. Only root can switch users, so callers skip
with `needs_root`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

NOBODY = 65534  # uid nobody, gid nogroup on Debian-family systems
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def run_as(uid: int, gid: int, groups: list[int], fn: Callable[[], Any]) -> Any:
    """fn() run as uid:gid with supplementary `groups`; returns its result.

    Blocking (it waits for the child): call it through trio.to_thread.run_sync when the
    server under test runs in the same process.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            payload = {"result": fn()}
        except BaseException as exc:
            payload, code = {"raised": f"{type(exc).__name__}: {exc}"}, 1
        try:
            os.write(w, json.dumps(payload).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as fh:
        while data := fh.read(65536):
            chunks.append(data)
    os.waitpid(pid, 0)
    payload = json.loads(b"".join(chunks) or b'{"raised": "child wrote nothing"}')
    if "raised" in payload:
        raise AssertionError(f"child as uid {uid} raised {payload['raised']}")
    return payload["result"]
