"""A real local Ray head for the tests that send work to a cluster.

`ray start --head --block` in a subprocess of its own (a real head: GCS, raylet, object
store, workers as separate processes), on free ports, with 2 CPUs and no dashboard; the
test's code connects to it by address like a job would connect to a remote cluster.
Stopped by ending that process (never `ray stop`, which would stop every Ray on the
machine, the other xdist worker's included). A loopback head for tests runs without token
authentication (RAY_AUTH_MODE=disabled); a real cluster's address and token come from the
operator's environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_dirs: dict[int, Path] = {}  # port -> the head's Ray directory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_head(tmp: Path, num_cpus: int = 2, timeout_s: float = 60.0
               ) -> tuple[subprocess.Popen[bytes], str]:
    """A running head and its address ("127.0.0.1:PORT"); polls its port until it answers."""
    port = _free_port()
    # Ray's own directory holds AF_UNIX sockets (at most 107 bytes of path): a pytest
    # temp dir under xdist is too deep for them, so a short one, removed by stop_head
    short = Path(tempfile.mkdtemp(prefix="qtray", dir="/tmp"))
    _dirs[port] = short
    ray_bin = Path(sys.executable).with_name("ray")
    log = (tmp / "ray-head.log").open("wb")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONDONTWRITEBYTECODE": "",
           "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}",
         f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=false",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats",
         f"--temp-dir={short}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not _answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_head(proc)
            raise RuntimeError(f"ray head did not come up: {(tmp / 'ray-head.log').read_text()}")
        time.sleep(0.1)  # polling a port with a deadline
    return proc, f"127.0.0.1:{port}"


def stop_head(proc: subprocess.Popen[bytes]) -> None:
    """End the head and everything it started (its own process group). SIGKILL: on
    SIGTERM a head drains for up to 30 s, and a test head has nothing to keep."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for arg in proc.args:  # type: ignore[union-attr]
        if str(arg).startswith("--port="):
            shutil.rmtree(_dirs.pop(int(str(arg)[7:]), ""), ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A head for the module's tests (put the module in tests/parallel.py GROUPED)."""
    tmp = tmp_path_factory.mktemp("rayhead")
    proc, address = start_head(tmp)
    try:
        yield address
    finally:
        stop_head(proc)
