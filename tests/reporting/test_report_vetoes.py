"""Plugin filter vetoes in `qtraderd report`: text, JSON and HTML, counted per plugin and
reason from a real replay whose filters vetoed and scaled real entries.

Vetoes never reach risk, so "Denied by risk" cannot show them; before this the report
showed fewer trades and no cause.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
import trio

from qtraderd.core.config import load, with_changes
from qtraderd.reporting import html
from qtraderd.reporting.report import filter_sections
from qtraderd.runtime.daemon import Daemon
from tests.plugins.plugin_helpers import source
from tests.reporting.test_report_html import Page, text_tables
from tests.test_cli import qt

NO_ETH = source("no_eth", body="""
    def filter_signal(signal):
        if signal.symbol == "ETHBTC":
            return veto("eth_closed") if signal.side > 0 else veto("no_eth_shorts")
        return None
""")
HALF_LTC = source("half_ltc", body="""
    def filter_signal(signal):
        return scale(0.5, "ltc_half") if signal.symbol == "LTCBTC" else None
""")


@pytest.fixture(scope="module")
def vetoed(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("vetoes")
    state, pdir = root / "state", root / "plugins"
    shutil.copytree(trained["state"], state)
    pdir.mkdir()
    (pdir / "no_eth.py").write_text(NO_ETH)
    (pdir / "half_ltc.py").write_text(HALF_LTC)
    sock = Path(tempfile.mkdtemp(dir="/tmp", prefix="qtv")) / "s.sock"
    # the test models abstain up to 20 January: a day of warm-up, then four trading days
    cfg = with_changes(load(env={}), sizing={"min_edge_pct": -0.5, "min_confidence": 0.25},
                       learning={"enabled": False}, rl={"enabled": False},
                       feed={"start": "2018-01-19", "end": "2018-01-24"},
                       plugins={"settle_ms": 20.0})
    d = Daemon(cfg, state, trained["models"], socket_path=sock, progress_every_s=0,
               plugins_dir=pdir)
    assert trio.run(d.run) == 0
    shutil.rmtree(sock.parent, ignore_errors=True)
    conn = sqlite3.connect(state / "qtraderd.db")
    counts = dict(((r, a), n) for r, a, n in conn.execute(
        "SELECT reason, action, count(*) FROM signals WHERE run_id=? AND reason LIKE "
        "'plugin:%' GROUP BY 1, 2", (d.run_id,)).fetchall())
    conn.close()
    return {"state": state, "root": root, "run_id": d.run_id, "counts": counts}


def test_vetoes_per_plugin_and_reason_in_text_and_json(vetoed) -> None:
    counts = vetoed["counts"]
    eth_long = counts.get(("plugin:no_eth:eth_closed", "veto"), 0)
    eth_short = counts.get(("plugin:no_eth:no_eth_shorts", "veto"), 0)
    ltc = counts.get(("plugin:half_ltc:ltc_half", "enter"), 0)
    assert eth_long > 0 and eth_short > 0 and ltc > 0  # the replay exercised every path
    done = qt("report", "--state-dir", vetoed["state"], "--json")
    assert done.returncode == 0, done.stderr
    got = {(r["plugin"], r["reason"]): (r["vetoed"], r["scaled"])
           for r in json.loads(done.stdout)["filter_vetoes"]}
    assert got == {("no_eth", "eth_closed"): (eth_long, 0),
                   ("no_eth", "no_eth_shorts"): (eth_short, 0),
                   ("half_ltc", "ltc_half"): (0, ltc)}
    text = qt("report", "--state-dir", vetoed["state"])
    assert text.returncode == 0, text.stderr
    title = f"Plugin signal filters ({eth_long + eth_short} entries vetoed)"
    table = text_tables(text.stdout)[title]
    assert table[0] == ["plugin", "reason", "vetoed", "scaled down"]
    assert sorted(table[1:]) == sorted([["no_eth", "eth_closed", str(eth_long), "0"],
                                        ["no_eth", "no_eth_shorts", str(eth_short), "0"],
                                        ["half_ltc", "ltc_half", "0", str(ltc)]])


def test_vetoes_in_the_html_report(vetoed) -> None:
    conn = sqlite3.connect(f"file:{vetoed['state'] / 'qtraderd.db'}?mode=ro", uri=True)
    try:
        page = Page(html.render_html(html.collect(conn), vetoed["state"]))
    finally:
        conn.close()
    rows = page.table("Plugin signal filters")
    eth = vetoed["counts"][("plugin:no_eth:eth_closed", "veto")]
    assert rows[0] == ["plugin", "reason", "vetoed", "scaled down"]
    assert ["no_eth", "eth_closed", str(eth), "0"] in rows[1:]


def test_no_filter_table_when_no_filter_acted() -> None:
    assert filter_sections({"filter_vetoes": []}) == []
