"""What the benchmarks share: where the repository and the shared candles are, the ten
5m alt/BTC pairs, and running a command from the repository root."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ../shared next to the clone (any clone), else the lead's checkout's.
SHARED = next((p for p in (REPO.parent / "shared" / "data" / "ohlcv",
                            Path("/work/shared/data/ohlcv")) if p.is_dir()),
              REPO.parent / "shared" / "data" / "ohlcv")
PAIRS = ["ADABTC", "DASHBTC", "ETCBTC", "ETHBTC", "LTCBTC", "NXTBTC", "TRXBTC", "XLMBTC",
         "XMRBTC", "ZECBTC"]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, cwd=REPO, **kw)
