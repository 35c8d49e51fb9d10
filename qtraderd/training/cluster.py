"""Where heavy, independent work runs: here ("local") or on a Ray cluster ("ray").

Only the job and sweep processes import this module, and only `RayExecutor` imports ray
(lazily): the daemon never does. One interface for both, so the callers (training jobs,
walk-forward folds, sweep cells) are written once:

    with open_executor("ray", "ray://head:10001") as ex:
        ref = ex.share(dataset)                      # shipped once (Ray's object store)
        for i, result in ex.map(train_one, items, shared=ref, cpus=2):
            ...                                      # in completion order

`map` yields `(index, result)` as tasks finish, so callers can record each result as it
arrives (a killed sweep resumes without redoing finished cells). A task that raises
re-raises in the caller. Ray retries a task whose worker died (`max_retries`); a task past
`timeout_s` is cancelled on the cluster (`ray.cancel(force=True)`) and raises
`TaskTimeout`. A cluster that cannot be reached at `open_executor` raises
`ClusterUnavailable` with the address and the reason.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

log = logging.getLogger("qtraderd.cluster")

EXECUTORS = ("local", "ray")


class ClusterUnavailable(RuntimeError):
    """The Ray cluster could not be reached (the message names the address)."""


class TaskTimeout(RuntimeError):
    """A task ran past its timeout and was cancelled."""


class LocalExecutor:
    """Runs tasks one after another in this process (the reference: same results)."""

    kind = "local"
    where = "local"

    def share(self, obj: Any) -> Any:
        return obj

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *, shared: Any = None,
            cpus: float = 1, gpus: float = 0, max_retries: int = 2,
            timeout_s: float | None = None) -> Iterator[tuple[int, Any]]:
        for i, item in enumerate(items):
            yield i, (fn(item) if shared is None else fn(item, shared))

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RayExecutor:
    """Runs tasks on a Ray cluster; this process is the Ray driver."""

    kind = "ray"

    def __init__(self, address: str, *, num_cpus: int | None = None,
                 connect_timeout_s: float = 5.0) -> None:
        import ray  # only here: the job/sweep process, never the daemon

        self._ray = ray
        _probe(address, connect_timeout_s)
        try:
            if address == "local":  # a head of its own in this process (benchmarks)
                ray.init(num_cpus=num_cpus, include_dashboard=False,
                         logging_level=logging.ERROR, log_to_driver=False)
            else:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:  # ConnectionError, RuntimeError, auth errors, ...
            raise ClusterUnavailable(f"Ray cluster at {address!r} unreachable: "
                                     f"{type(exc).__name__}: {exc}") from None
        self.address = address
        ctx = ray.get_runtime_context()
        self.where = f"ray:{address} (node {ctx.get_node_id()[:12]})"

    def share(self, obj: Any) -> Any:
        return self._ray.put(obj)

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *, shared: Any = None,
            cpus: float = 1, gpus: float = 0, max_retries: int = 2,
            timeout_s: float | None = None) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries)(fn)
        refs = {(remote.remote(item) if shared is None else remote.remote(item, shared)): i
                for i, item in enumerate(items)}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pending = list(refs)
        try:
            while pending:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, pending = ray.wait(pending, num_returns=1, timeout=wait)
                if not done:
                    raise TaskTimeout(f"{len(pending)} task(s) still running after "
                                      f"{timeout_s} s: cancelled on the cluster")
                yield refs[done[0]], ray.get(done[0])
        finally:
            for ref in pending:  # a timeout, an error or an abandoned iterator
                ray.cancel(ref, force=True)

    def close(self) -> None:
        self._ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _probe(address: str, timeout_s: float) -> None:
    """Fail fast on a head that does not answer: ray.init itself waits about two minutes
    (GCS reconnect timeouts) before it gives up on a wrong address."""
    hostport = address.removeprefix("ray://")
    if address in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise ClusterUnavailable(f"Ray cluster at {address!r} unreachable: {exc}") from None


def open_executor(kind: str, address: str | None = None, *,
                  num_cpus: int | None = None) -> LocalExecutor | RayExecutor:
    """The executor of `kind`; for "ray", `address` (or $RAY_ADDRESS, or "auto")."""
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address or os.environ.get("RAY_ADDRESS") or "auto",
                           num_cpus=num_cpus)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
