"""The venue seam moved no number: a replay of three pairs with the trained models gives
bit-identical orders, fills, trades and equity to the figures recorded before the seam
existed (data/replay_baseline.json), and its orders went through the lifecycle."""

from __future__ import annotations

import itertools
import json
import sqlite3
import tempfile
from pathlib import Path

from tests.venues.replay_baseline import digests, replay

BASELINE = Path(__file__).parent / "data" / "replay_baseline.json"


def test_replay_figures_are_bit_identical_to_before_the_seam(trained, tmp_path) -> None:
    import shutil

    shutil.copytree(trained["state"], tmp_path / "state")
    sock_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="qt"))
    try:
        figs = replay(tmp_path / "state", trained["models"], sock_dir / "s.sock")
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert digests(figs) == json.loads(BASELINE.read_text())

    conn = sqlite3.connect(tmp_path / "state" / "qtraderd.db")
    try:
        run = conn.execute("SELECT max(id) FROM runs").fetchone()[0]
        q = conn.execute
        # every allowed intent became an order with a client id; a denied one did not
        assert q("SELECT count(*) FROM orders WHERE run_id=? AND risk_action!='deny' AND "
                 "client_id IS NULL", (run,)).fetchone()[0] == 0
        assert q("SELECT count(*) FROM orders WHERE run_id=? AND risk_action='deny' AND "
                 "client_id IS NOT NULL", (run,)).fetchone()[0] == 0
        ids = [r[0] for r in q("SELECT client_id FROM orders WHERE run_id=? AND client_id "
                               "IS NOT NULL", (run,))]
        assert len(ids) == len(set(ids)) > 100
        assert all(c.startswith(f"q{run}-") for c in ids)
        # every fill belongs to an order whose last move is `filled`
        assert q("SELECT count(*) FROM fills f WHERE run_id=? AND NOT EXISTS (SELECT 1 FROM "
                 "order_events e WHERE e.run_id=f.run_id AND e.client_id=f.order_id AND "
                 "e.to_status='filled')", (run,)).fetchone()[0] == 0
        statuses = dict(q("SELECT status, count(*) FROM orders WHERE run_id=? AND client_id "
                          "IS NOT NULL GROUP BY status", (run,)).fetchall())
        assert statuses.get("filled", 0) > 100
        assert set(statuses) <= {"filled", "expired", "accepted", "new"}
        # each order's moves chain: the "from" of a move is the "to" of the one before
        chains: dict[str, list[tuple[str, str]]] = {}
        for cid, frm, to in q("SELECT client_id, from_status, to_status FROM order_events "
                              "WHERE run_id=? ORDER BY id", (run,)):
            chains.setdefault(cid, []).append((frm, to))
        for cid, moves in chains.items():
            assert moves[0][0] == "unknown" and moves[0][1] == "new", cid
            assert all(a[1] == b[0] for a, b in itertools.pairwise(moves)), cid
    finally:
        conn.close()
