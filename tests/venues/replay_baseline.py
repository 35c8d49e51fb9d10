"""A replay of the three demo pairs with the trained models, reduced to exact figures.

The venue seam (issue 10) must not move a single number: this module runs the daemon over
the trained store and returns its orders, fills, trades and equity rows with every float
as `float.hex` (bit-exact) and without order ids (their format changed on purpose). The
digests of the figures before the seam was built are kept in
`data/replay_baseline.json`; `python -m tests.venues.replay_baseline STATE MODELS` prints
them for a store (used once, before the change, to write that file).

Re-baselined once, for issue 11: the training job now purges a full label horizon before
its validation window and the LightGBM export nudges float32-rounded thresholds, so the
trained test models (not the serving path) changed. Checked before re-baselining: the new
serving code replaying models trained by the old training code still matched the old
digests exactly.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import trio

QUERIES = {
    "orders": "SELECT seq, ts, symbol, side, qty, ref_price, purpose, reason, tp_pct, sl_pct, "
              "risk_action, risk_reason, approved_qty FROM orders WHERE run_id=? "
              "ORDER BY seq, symbol, purpose, reason",
    "fills": "SELECT seq, ts, symbol, side, qty, price, fee, liquidity, reason FROM fills "
             "WHERE run_id=? ORDER BY seq, symbol, reason, ts",
    "trades": "SELECT id, symbol, quote, side, qty, entry_ts, entry_price, exit_ts, exit_price, "
              "gross_pnl, fees, net_pnl, return_pct, exit_reason, bars_held FROM trades "
              "WHERE run_id=? ORDER BY id",
    "equity": "SELECT seq, ts, quote, balance, equity, exposure, open_positions, risk_state "
              "FROM equity WHERE run_id=? ORDER BY seq, quote",
}
# Tiny test models rarely clear the costs; loosen the entry rule so the chain trades.
SECTIONS: dict[str, Any] = {
    "sizing": {"min_edge_pct": -0.5, "min_confidence": 0.25},
    "learning": {"enabled": False}, "rl": {"enabled": False},
}


def exact(v: Any) -> Any:
    return v.hex() if isinstance(v, float) else v


def figures(db: Path, run_id: int) -> dict[str, list[list[Any]]]:
    conn = sqlite3.connect(db)
    try:
        return {t: [[exact(v) for v in r] for r in conn.execute(q, (run_id,))]
                for t, q in QUERIES.items()}
    finally:
        conn.close()


def digests(figs: dict[str, list[list[Any]]]) -> dict[str, Any]:
    return {t: {"rows": len(rows), "sha256": hashlib.sha256(
        json.dumps(rows, separators=(",", ":")).encode()).hexdigest()}
        for t, rows in figs.items()}


def replay(state: Path, models: Path, sock: Path) -> dict[str, list[list[Any]]]:
    from qtraderd.core.config import load, with_changes
    from qtraderd.runtime.daemon import Daemon

    cfg = with_changes(load(env={}), **SECTIONS)
    d = Daemon(cfg, state, models, socket_path=sock, progress_every_s=0)
    assert trio.run(d.run) == 0
    return figures(state / "qtraderd.db", d.run_id)


if __name__ == "__main__":
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp", prefix="qtb") as tmp:
        shutil.copytree(sys.argv[1], Path(tmp) / "state")
        figs = replay(Path(tmp) / "state", Path(sys.argv[2]), Path(tmp) / "s.sock")
    if len(sys.argv) > 3:
        Path(sys.argv[3]).write_text(json.dumps(figs))
    print(json.dumps(digests(figs), indent=1))
