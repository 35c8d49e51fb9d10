"""A stand-in for systemd's notify socket: a real AF_UNIX datagram socket, read by a task.

Shared by the service and reload tests. Waiting is always for a message (or a deadline),
never a sleep.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from qtraderd.runtime.systemd import Notifier, notify_address


@dataclass
class Message:
    at: float  # trio.current_time() when read
    fields: dict[str, str]


def parse(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in data.decode().split("\n"):
        key, _, value = line.partition("=")
        out[key] = value
    return out


@dataclass
class Listener:
    env_value: str  # what $NOTIFY_SOCKET would say: a path or "@abstract"
    raw: socket.socket  # for synchronous tests
    messages: list[Message] = field(default_factory=list)
    _arrived: trio.Event = field(default_factory=trio.Event)
    _dir: str | None = None

    @classmethod
    def bind(cls, abstract: bool = False) -> Listener:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"qtraderd-test-{os.getpid()}-{id(raw)}"
            raw.bind(b"\0" + name.encode())
            return cls("@" + name, raw)
        d = tempfile.mkdtemp(prefix="qtn", dir="/tmp")  # sun_path is 108 bytes at most
        path = str(Path(d) / "notify")
        raw.bind(path)
        return cls(path, raw, _dir=d)

    async def collect(self) -> None:
        sock = trio.socket.from_stdlib_socket(self.raw)
        while True:
            data = await sock.recv(65536)
            self.messages.append(Message(trio.current_time(), parse(data)))
            self._arrived.set()
            self._arrived = trio.Event()

    @asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """Collect messages while the block runs."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.collect)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    def notifier(self, watchdog_s: float | None = None) -> Notifier:
        """A Notifier aimed at this socket, as `$NOTIFY_SOCKET` would make it."""
        return Notifier(notify_address(self.env_value), watchdog_s)

    def with_key(self, key: str, value: str | None = None) -> list[Message]:
        return [m for m in self.messages if key in m.fields
                and (value is None or m.fields[key] == value)]

    async def wait_for(self, pred: Callable[[list[Message]], bool],
                       timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while not pred(self.messages):
                await self._arrived.wait()

    async def wait_key(self, key: str, value: str | None = None, count: int = 1,
                       timeout: float = 30.0) -> Message:
        await self.wait_for(lambda _: len(self.with_key(key, value)) >= count, timeout)
        return self.with_key(key, value)[count - 1]

    def close(self) -> None:
        self.raw.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
