"""What the benchmarks share: where the repository and the shared candles are, the ten
5m alt/BTC pairs, running a command from the repository root, and the live benchmarks'
set-up: the store and models they serve and trade, `qtraderd exchange-sim` as a
subprocess, the daemon in an instrumented child process, and the child's frame-read and
inference hooks (live_feed.py, live.py)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ../shared next to the clone (any clone), else the lead's checkout's.
SHARED = next((p for p in (REPO.parent / "shared" / "data" / "ohlcv",
                            Path("/work/shared/data/ohlcv")) if p.is_dir()),
              REPO.parent / "shared" / "data" / "ohlcv")
PAIRS = ["ADABTC", "DASHBTC", "ETCBTC", "ETHBTC", "LTCBTC", "NXTBTC", "TRXBTC", "XLMBTC",
         "XMRBTC", "ZECBTC"]
START = "2018-01-16T00:00Z"  # inside a run of 2,047 bars complete for all ten pairs
BAR_MS = 300_000


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, cwd=REPO, **kw)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


def start_ms() -> int:
    return int(datetime.strptime(START, "%Y-%m-%dT%H:%MZ").replace(
        tzinfo=UTC).timestamp() * 1000)


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def write_config(path: Path, url: str, speed: float, end_ms: int, *, mode: str = "paper",
                 extra: str = "") -> Path:
    """The daemon's config against the simulator at `url`, as a user writes it: the
    Binance feed at the simulator's speed up to `end_ms`, 1.5 days of warm-up over REST
    (more than the 400 bars the predictor warms up on), learning and plugins off;
    `extra`: more sections (TOML)."""
    path.write_text(textwrap.dedent(f"""\
        mode = "{mode}"
        [feed]
        source = "binance"
        symbols = {json.dumps(PAIRS)}
        interval = "5m"
        speed = {speed:g}
        end = "{iso(end_ms)}"
        [exchange]
        environment = "custom"
        base_url = "{url}"
        ws_url = "{url.replace('http://', 'ws://')}"
        warmup_days = 1.5
        close_deadline_s = 0.5
        [learning]
        enabled = false
        [plugins]
        enabled = false
        """) + extra)
    return path


def work_dir(keep: Path | None) -> Path:
    """The benchmark's work directory: `keep` (--keep) or a fresh temporary one; its
    path goes to stderr (the figures go to stdout)."""
    work = keep or Path(tempfile.mkdtemp(prefix="qtlive"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}", file=sys.stderr)
    return work


def prepare(work: Path) -> tuple[Path, Path]:
    """The ten pairs imported into a fresh store (what the simulator serves) and XGBoost +
    LightGBM trained on the shared 1m series of Nov 2017: every 5m bar of January 2018 is
    out of sample, so the daemon runs real ONNX inference on every live step.
    Returns (market state dir, models dir)."""
    market, models = work / "market", work / "models"
    py = sys.executable
    run([py, "-m", "qtraderd", "import", *(str(SHARED / f"{p}-5m.csv") for p in PAIRS),
         "--state-dir", str(market)])
    run([py, "-m", "qtraderd", "import", str(SHARED / "UNITTESTBTC-1m.csv"),
         "--state-dir", str(market)])
    cfg = work / "train.toml"
    cfg.write_text('[feed]\ninterval = "1m"\n[train]\ntrain_fraction = 0.95\n')
    # one OpenMP thread: on a busy 2-core machine the tree libraries' spinning threads
    # made this 2 s step take a minute (model quality is irrelevant here)
    run([py, "-m", "qtraderd.training", "train", "--state-dir", str(market), "--models-dir",
         str(models), "--config", str(cfg), "--symbols", "UNITTESTBTC"],
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    return market, models


@contextlib.contextmanager
def simulator(work: Path, name: str, args: list[str]) -> Iterator[str]:
    """`qtraderd exchange-sim ARGS` (a real subprocess, loopback TCP, its log in
    WORK/sim-NAME.log) while the block runs; yields its URL, SIGTERMs it after."""
    url_file = work / f"sim-{name}.url"
    url_file.unlink(missing_ok=True)  # a kept work dir: never read an old simulator's URL
    sim_log = (work / f"sim-{name}.log").open("w")
    sim = subprocess.Popen(
        [sys.executable, "-m", "qtraderd", "exchange-sim", *args, "--port", "0",
         "--url-file", str(url_file)], cwd=REPO, stdout=sim_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not url_file.exists():  # written before the listening line, atomically
            if sim.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"exchange-sim did not start; see {work}/sim-{name}.log")
            time.sleep(0.02)
        yield url_file.read_text().strip()
    finally:
        if sim.poll() is None:
            sim.send_signal(signal.SIGTERM)  # exit 0 on SIGTERM
            try:
                sim.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
        sim_log.close()


def run_child(code: str, work: Path, name: str, args: list[str],
              env: dict[str, str] | None = None) -> dict:
    """Run the daemon child `python -c CODE CFG-ARGS... SOCKET ...` (its stderr in
    WORK/daemon-NAME.log); `args` go before a fresh control-socket path (appended as
    argument 4 after the first three); returns the JSON it prints."""
    sock = Path(tempfile.mkdtemp(prefix="qtlf", dir="/tmp")) / "s.sock"
    argv = [*args[:3], str(sock), *args[3:]]
    with (work / f"daemon-{name}.log").open("w") as log:
        child = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=log, text=True, check=False,
                               env=env)
    shutil.rmtree(sock.parent, ignore_errors=True)
    if child.returncode != 0:
        tail = (work / f"daemon-{name}.log").read_text()[-3000:]
        raise SystemExit(f"daemon child failed (exit {child.returncode}):\n{tail}")
    out = json.loads(child.stdout)
    if out["code"] != 0:
        raise SystemExit(f"daemon exited {out['code']}; see {work}/daemon-{name}.log")
    return out


# The child's hooks, installed in the daemon's process only (the product code is
# unchanged). They need `perf` and `tcpu` (time.perf_counter, time.thread_time) defined.
#
# FRAME_HOOKS: the socket read. websockets' reader task feeds each chunk read from the
# socket to receive_data; every complete data message parsed out of it gets that time, in
# order, and recv() (a stream client's read) hands it on with the message as `last`
# (wall, thread CPU); `frame_at[(symbol, open_time)]`: the read that delivered that
# closed kline (the kline stream client, right after parsing).
FRAME_HOOKS = textwrap.dedent("""
    import collections
    from websockets.frames import DATA_OPCODES
    from websockets.protocol import Protocol
    from websockets.trio.client import ClientConnection
    from qtraderd.venues.binance.stream import KlineStream
    last = [0.0, 0.0]
    orig_receive_data = Protocol.receive_data
    def receive_data(self, data):
        self._bench_read = (perf(), tcpu())
        return orig_receive_data(self, data)
    Protocol.receive_data = receive_data
    orig_process_event = ClientConnection.process_event
    def process_event(self, event):
        if getattr(event, "opcode", None) in DATA_OPCODES and event.fin:
            q = self.__dict__.setdefault("_bench_q", collections.deque())
            q.append(self.protocol._bench_read)
        return orig_process_event(self, event)
    ClientConnection.process_event = process_event
    orig_recv = ClientConnection.recv
    async def recv(self, decode=None):
        msg = await orig_recv(self, decode)
        last[:] = self._bench_q.popleft()
        return msg
    ClientConnection.recv = recv
    frame_at = {}
    orig_seen = KlineStream._seen
    def seen(self, k):
        dup = orig_seen(self, k)
        if not dup:
            frame_at.setdefault((k.symbol, k.open_time), tuple(last))
        return dup
    KlineStream._seen = seen
""")

# INFER_HOOKS: inference per step, `infer[ts] = [wall, thread CPU]` of every
# LoadedModel.predict call while the predictor handles step ts; `marks[ts]` gets the
# predictor's start and end ("predictor", "predicted"), `marks_cpu[ts]` the event-loop
# thread's CPU time then.
INFER_HOOKS = textwrap.dedent("""
    import collections
    from qtraderd.actors.predictor import PredictorActor
    from qtraderd.models.onnx_model import LoadedModel
    infer = collections.defaultdict(lambda: [0.0, 0.0])
    cur = [0]
    marks = collections.defaultdict(dict)
    marks_cpu = collections.defaultdict(dict)
    orig_pred = PredictorActor.handle
    def pred_handle(self, step):
        cur[0] = step.ts
        marks[step.ts]["predictor"], marks_cpu[step.ts]["predictor"] = perf(), tcpu()
        out = orig_pred(self, step)
        marks[step.ts]["predicted"], marks_cpu[step.ts]["predicted"] = perf(), tcpu()
        return out
    PredictorActor.handle = pred_handle
    orig_predict = LoadedModel.predict
    def predict(self, x):
        t0, c0 = perf(), tcpu()
        out = orig_predict(self, x)
        acc = infer[cur[0]]
        acc[0] += perf() - t0
        acc[1] += tcpu() - c0
        return out
    LoadedModel.predict = predict
""")
