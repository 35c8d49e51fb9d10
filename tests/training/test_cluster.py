"""The executor seam (qtraderd.training.cluster) against a real local Ray head: the same
results as running locally, in completion order with their indexes, a shared object
shipped once, task errors and timeouts surfaced, an unreachable cluster named."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from qtraderd.training.cluster import ClusterUnavailable, open_executor

pytestmark = pytest.mark.slow

DRIVER = textwrap.dedent("""
    import json, sys, time
    from qtraderd.training.cluster import TaskTimeout, open_executor

    def scale(x, shared):
        return [v * x for v in shared]

    def boom(x):
        raise ValueError(f"bad item {x}")

    def slow(x):
        time.sleep(30)

    out = {}
    with open_executor(sys.argv[1], sys.argv[2]) as ex:
        ref = ex.share([1.0, 2.0, 3.0])
        got = dict(ex.map(scale, [1, 2, 3, 4], shared=ref))
        out["results"] = [got[i] for i in range(4)]
        out["where"] = ex.where
        try:
            list(ex.map(boom, [7]))
        except ValueError as exc:
            out["error"] = str(exc)
        if sys.argv[1] == "ray":
            t = time.monotonic()
            try:
                list(ex.map(slow, [1], timeout_s=1.0))
            except TaskTimeout as exc:
                out["timeout"] = [str(exc), time.monotonic() - t]
    print(json.dumps(out))
""")


def _drive(kind: str, address: str) -> dict:
    import json
    done = subprocess.run([sys.executable, "-c", DRIVER, kind, address],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ray_gives_the_local_results_errors_and_timeouts(ray_head: str) -> None:
    local, remote = _drive("local", ""), _drive("ray", ray_head)
    assert local["results"] == remote["results"] == [
        [1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 6.0, 9.0], [4.0, 8.0, 12.0]]
    assert local["where"] == "local" and remote["where"].startswith(f"ray:{ray_head}")
    assert "bad item 7" in local["error"] and "bad item 7" in remote["error"]
    message, seconds = remote["timeout"]
    assert "cancelled on the cluster" in message and seconds < 15


def test_an_unreachable_cluster_is_named() -> None:
    with pytest.raises(ClusterUnavailable, match=r"127\.0\.0\.1:9"):
        open_executor("ray", "127.0.0.1:9")


def test_an_unknown_executor_is_refused() -> None:
    with pytest.raises(ValueError, match="local, ray"):
        open_executor("spark")
