"""`qtraderd report --out DIR`: the HTML report of a real replay, as an operator gets it.

The store comes from a real replay of three real pairs with the small trained models. The
learning history (a retrain that deployed a new version, one kept, one failed, and an
automatic rollback) is added through the registry's own functions and the store's batch
writer rather than by running real trainings: the report only reads those rows.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import trio

from qtraderd.core.config import load, with_changes
from qtraderd.core.messages import LABEL_LONG, LABEL_SHORT, Record
from qtraderd.learning import registry
from qtraderd.models.artifacts import ModelMeta
from qtraderd.reporting.html import is_secret_key, safe_config
from qtraderd.runtime.daemon import Daemon
from qtraderd.store.db import connect
from qtraderd.store.rows import Batch, write_batch
from tests.conftest import REPO, make_store
from tests.test_cli import qt, read_only_dir

LOOSE = {"min_edge_pct": -0.5, "min_confidence": 0.25}  # tiny models: let the chain trade
LOOSE_ENV = {"QT_SIZING_MIN_EDGE_PCT": "-0.5", "QT_SIZING_MIN_CONFIDENCE": "0.25",
             "QT_LEARNING_ENABLED": "false", "QT_RL_ENABLED": "false"}
NASTY = "<script>alert(1)</script> & \"quoted\""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def add_learning_history(state: Path, models: Path, run_id: int) -> dict[str, object]:
    """A deploy of a new lightgbm version at 3/4 of the run and its automatic rollback
    later, with the jobs and evaluation that led to them, as the learner records them."""
    conn = connect(state)
    first, last, last_batch = conn.execute(
        "SELECT first_ts, last_ts, last_batch FROM runs WHERE id=?", (run_id,)).fetchone()
    deploy_ts = first + (last - first) * 3 // 4
    deploy_ts -= deploy_ts % 300_000
    rollback_ts = deploy_ts + (last - deploy_ts) // 2
    rollback_ts -= rollback_ts % 300_000
    (old,) = conn.execute("SELECT version FROM models WHERE family='lightgbm' AND "
                          "status='champion'").fetchone()
    meta = ModelMeta.from_json((models / "lightgbm" / f"{old}.json").read_text())
    new = f"{old}-r1"
    meta = ModelMeta(**{**meta.__dict__, "version": new,
                        "metrics": {**meta.metrics, "gate_decision": "deploy"}})
    registry.register(conn, meta, models / "lightgbm" / f"{new}.onnx", "candidate",
                      "time: 24 h since the last retrain", deploy_ts)
    registry.set_status(conn, "lightgbm", new, "champion", "gate: +6.10 % equity, p=0.01",
                        deploy_ts)
    # the hot swap: the new version served from the deploy to the rollback
    conn.execute("UPDATE predictions SET version=? WHERE run_id=? AND model='lightgbm' AND "
                 "ts>=? AND ts<?", (new, run_id, deploy_ts, rollback_ts))
    registry.set_status(conn, "lightgbm", new, "retired", f"rolled back: automatic {NASTY}",
                        rollback_ts)
    registry.set_status(conn, "lightgbm", old, "champion", f"rollback: automatic {NASTY}",
                        rollback_ts)

    def job(family: str, status: str, version: str | None, detail: str) -> Record:
        return Record("retrain_jobs", {
            "evaluation_id": 1, "family": family, "reason": "time: 24 h", "priority": 3,
            "attempt": 1, "started_at": "2025-01-01T00:00:00+00:00", "clock_ts": deploy_ts,
            "finished_at": "2025-01-01T00:00:09+00:00", "wall_s": 9.0, "status": status,
            "version": version, "decision": None, "detail": detail})

    evaluation = Record("learner_evaluations", {
        "at": "2025-01-01T00:00:00+00:00", "clock_ts": deploy_ts,
        "triggers": json.dumps([{"kind": "time", "family": None}]),
        "plan": json.dumps([{"family": "lightgbm"}]), "detail": "{}"})
    write_batch(conn, run_id, Batch(last_batch + 1, [], [
        evaluation, job("lightgbm", "deploy", new, "gate: +6.10 % equity, p=0.01"),
        job("xgboost", "keep", f"{old}-x", "improvement 0.4 % below the bar"),
        job("xgboost", "failed", None, f"timed out {NASTY}")]))
    conn.close()
    return {"old": old, "new": new, "deploy_ts": deploy_ts, "rollback_ts": rollback_ts}


@pytest.fixture(scope="module")
def finished(trained, tmp_path_factory):
    """A finished replay (three real pairs, whole bundled span) plus learning history."""
    root = tmp_path_factory.mktemp("report")
    state, models = root / "state", root / "models"
    shutil.copytree(trained["state"], state)
    shutil.copytree(trained["models"], models)
    sock = Path(tempfile.mkdtemp(dir="/tmp", prefix="qtr")) / "s.sock"
    cfg = with_changes(load(env={}), sizing=LOOSE, learning={"enabled": False},
                       rl={"enabled": False})
    d = Daemon(cfg, state, models, socket_path=sock, progress_every_s=0)
    assert trio.run(d.run) == 0
    shutil.rmtree(sock.parent, ignore_errors=True)
    history = add_learning_history(state, models, d.run_id)
    out = root / "out"
    rep = qt("report", "--state-dir", state, "--out", out)
    assert rep.returncode == 0, rep.stderr[-2000:]
    text = qt("report", "--state-dir", state)
    assert text.returncode == 0, text.stderr[-2000:]
    return {"state": state, "models": models, "root": root, "run_id": d.run_id,
            "out": out, "stdout": rep.stdout, "text": text.stdout, **history}


class Page(HTMLParser):
    """Headings, tables (caption + rows of cell text) and images of a page, and a check
    that the structural tags are balanced."""

    BALANCED = ("html", "body", "table", "tr", "td", "th", "h1", "h2", "p", "details",
                "caption", "nav", "title", "style", "head")

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.h2: list[str] = []
        self.tables: list[dict[str, object]] = []
        self.imgs: list[dict[str, str]] = []
        self.depth = dict.fromkeys(self.BALANCED, 0)
        self._text: list[str] | None = None
        self._row: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.depth:
            self.depth[tag] += 1
        if tag == "img":
            self.imgs.append({k: v or "" for k, v in attrs})
        elif tag == "table":
            self.tables.append({"caption": None, "rows": []})
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th", "caption", "h2"):
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self.depth:
            self.depth[tag] -= 1
        if tag in ("td", "th") and self._row is not None and self._text is not None:
            self._row.append("".join(self._text).strip())
        elif tag == "tr" and self._row is not None:
            self.tables[-1]["rows"].append(self._row)
            self._row = None
        elif tag == "caption" and self._text is not None:
            self.tables[-1]["caption"] = "".join(self._text).strip()
        elif tag == "h2" and self._text is not None:
            self.h2.append("".join(self._text).strip())
        if tag in ("td", "th", "caption", "h2"):
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def table(self, caption_start: str) -> list[list[str]]:
        found = [t for t in self.tables if (t["caption"] or "").startswith(caption_start)]
        assert found, f"no table {caption_start!r}"
        return found[0]["rows"]


def text_tables(text: str) -> dict[str, list[list[str]]]:
    """The terminal report's titled blocks as rows of cells (columns are separated by at
    least two spaces; the dashed rule under a header is dropped)."""
    out = {}
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if lines and lines[0].startswith("== ") and lines[0].endswith(" =="):
            body = [ln for ln in lines[1:]
                    if ln.strip() and not set(ln.strip()) <= {"-", " "}]
            out[lines[0][3:-3]] = [re.split(r" {2,}", ln.strip()) for ln in body]
    return out


def page_of(finished) -> tuple[str, Page]:
    text = (finished["out"] / "report.html").read_text(encoding="utf-8")
    return text, Page(text)


def test_writes_one_self_contained_page_with_every_section_and_plot(finished):
    out = finished["out"]
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]  # no stray temp files
    assert finished["stdout"].startswith(finished["text"])  # the text summary, unchanged
    assert finished["stdout"].rstrip().endswith(f"HTML report: {out / 'report.html'}")
    raw, page = page_of(finished)
    assert all(v == 0 for v in page.depth.values()), page.depth
    assert page.h2 == ["Key numbers", "Equity and drawdown",
                       "PnL per symbol (net of fees and slippage)",
                       "Model versions and live metrics", "Retraining, deploys and rollbacks",
                       "Configuration (trading sections)"]
    alts = [i["alt"] for i in page.imgs]
    assert alts == ["equity per quote account", "drawdown per quote account",
                    "net PnL per symbol", "model versions over time",
                    "live hit rate over time"]
    for img in page.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000, img["alt"]
        width, height = (int.from_bytes(png[i:i + 4], "big") for i in (16, 20))
        assert width >= 700 and height >= 250, (img["alt"], width, height)
    assert "src=\"http" not in raw and "<script" not in raw  # nothing fetched, nothing run


def test_numbers_equal_the_text_report(finished):
    _, page = page_of(finished)
    text = text_tables(finished["text"])
    assert {"qtraderd run summary", "Totals (net of fees and slippage)", "Per symbol",
            "Models served", "Champion changes (hot swaps between two bars)"} <= set(text)
    for title, rows in text.items():
        assert page.table(title) == rows, title
    summary = text["qtraderd run summary"]
    assert any(k.startswith("breakeven win rate") for k, _ in summary)  # honest rows
    assert "buy&hold %" in page.table("Per symbol")[0]
    assert int(page.table("Totals")[1][1]) > 0  # the replay traded


def test_model_versions_and_their_live_metrics(finished):
    _, page = page_of(finished)
    rows = page.table("Versions")
    head, body = rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert {"predictions", "with outcome", "decisive", "hit rate %"} <= set(head)
    lgb = {r["version"]: r for r in body if r["model"] == "lightgbm"}
    assert set(lgb) == {finished["old"], finished["new"]}
    assert lgb[finished["new"]]["registry"] == "retired"
    assert any(r["model"] == "ensemble" for r in body)
    # independent recomputation of one version's live hit rate
    conn = sqlite3.connect(finished["state"] / "qtraderd.db")
    pairs = conn.execute(
        "SELECT p.p_long, p.p_short, s.label FROM predictions p JOIN samples s ON "
        "s.run_id=p.run_id AND s.symbol=p.symbol AND s.ts=p.ts WHERE p.run_id=? AND "
        "p.model='lightgbm' AND p.version=?", (finished["run_id"], finished["new"])).fetchall()
    n = conn.execute("SELECT count(*) FROM predictions WHERE run_id=? AND version=?",
                     (finished["run_id"], finished["new"])).fetchone()[0]
    conn.close()
    decisive = [(pl >= ps) == (lab == LABEL_LONG) for pl, ps, lab in pairs
                if lab in (LABEL_LONG, LABEL_SHORT)]
    row = lgb[finished["new"]]
    assert int(row["predictions"]) == n > 0
    assert int(row["decisive"]) == len(decisive) > 0
    assert float(row["hit rate %"]) == round(100.0 * sum(decisive) / len(decisive), 1)


def test_retrains_deploys_and_rollbacks_are_listed(finished):
    _, page = page_of(finished)
    jobs = page.table("Retrain jobs")
    assert [r[3] for r in jobs[1:]] == ["deploy", "keep", "failed"]
    events = page.table("Registry events")
    kinds = [dict(zip(events[0], r, strict=True))["event"] for r in events[1:]]
    # the direct writers follow the daemon's rules: a new champion retires the old one
    assert kinds == ["retired", "deploy", "rolled back", "rollback"]
    trig = dict(page.table("Trigger evaluations"))
    assert trig["evaluations"] == "1" and trig["fired: time"] == "1"


def test_text_from_the_store_is_escaped(finished):
    raw, page = page_of(finished)
    assert NASTY not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    events = page.table("Registry events")
    assert any(NASTY in cell for row in events for cell in row)  # shown, as text


def test_config_shows_trading_sections_but_never_secrets(finished, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(finished["state"], state)
    conn = sqlite3.connect(state / "qtraderd.db")
    cfg = json.loads(conn.execute("SELECT config FROM runs WHERE id=?",
                                  (finished["run_id"],)).fetchone()[0])
    cfg["venue"] = {"api_key": "AKIA-LEAK-1", "endpoint": "https://example.invalid"}
    cfg["feed"]["api_secret"] = "LEAK-2"
    cfg["learning"]["webhook_token"] = "LEAK-3"
    conn.execute("UPDATE runs SET config=? WHERE id=?", (json.dumps(cfg), finished["run_id"]))
    conn.commit()
    conn.close()
    rep = qt("report", "--state-dir", state, "--out", tmp_path / "o")
    assert rep.returncode == 0, rep.stderr
    raw = (tmp_path / "o" / "report.html").read_text()
    assert "LEAK" not in raw and "example.invalid" not in raw
    assert ">take_profit_pct<" in raw and ">taker_fee_pct<" in raw
    assert set(safe_config(cfg)) == {"feed", "account", "costs", "sizing", "labels",
                                     "monitor", "risk", "portfolio", "learning", "rl"}
    assert "significance" in safe_config(cfg)["learning"]  # not mistaken for a secret
    for name in ("api_key", "apiKey", "API_SECRET", "passphrase", "webhook_token",
                 "private_key", "db_password"):
        assert is_secret_key(name), name


def test_json_with_out_keeps_stdout_pure_json(finished, tmp_path):
    rep = qt("report", "--state-dir", finished["state"], "--json", "--out", tmp_path / "j")
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["run"]["id"] == finished["run_id"]
    assert f"HTML report: {tmp_path / 'j' / 'report.html'}" in rep.stderr
    assert (tmp_path / "j" / "report.html").stat().st_size > 50_000


def test_bad_inputs_are_clear_errors(finished, tmp_path):
    state = finished["state"]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (("--state-dir", tmp_path / "nothing-here", "--out", tmp_path / "o1"), "no store"),
        (("--state-dir", state, "--run", "999", "--out", tmp_path / "o2"), "no run 999"),
        (("--state-dir", state, "--out", a_file), "is not a directory"),
        (("--state-dir", state, "--out", a_file / "sub"), "cannot create report directory"),
    ]
    empty = make_store(tmp_path / "empty", symbols=("ETHBTC",), limit=50)
    cases.append((("--state-dir", empty, "--out", tmp_path / "o3"), "no runs recorded"))
    for args, needle in cases:
        rep = qt("report", *args)
        assert rep.returncode == 2, (args, rep.stderr)
        assert needle in rep.stderr and "Traceback" not in rep.stderr, (args, rep.stderr)
        assert rep.stdout == "", args  # nothing half-printed
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))
    assert a_file.read_text() == "x"
    with read_only_dir(tmp_path / "ro") as ro:
        rep = qt("report", "--state-dir", state, "--out", ro)
        assert rep.returncode == 2 and "not writable" in rep.stderr, rep.stderr
        assert not (ro / "report.html").exists()


def test_report_never_imports_the_training_or_inference_libraries(finished, tmp_path):
    code = ("import sys\nfrom qtraderd.cli import main\n"
            f"assert main(['report', '--state-dir', {str(finished['state'])!r}, '--out', "
            f"{str(tmp_path / 'x')!r}]) == 0\n"
            "print([m for m in ('torch', 'xgboost', 'lightgbm', 'onnxruntime', 'sklearn') "
            "if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_report_of_a_running_daemon(trained, tmp_path):
    """Read-only and in one snapshot: works while the store writer is committing."""
    from qtraderd.control import client as ctl
    shutil.copytree(trained["state"], tmp_path / "state")
    shutil.copytree(trained["models"], tmp_path / "models")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env.update(LOOSE_ENV, QT_FEED_SPEED="20000")  # ~15 ms per step: still running
    sock = tmp_path / "state" / "qtraderd.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qtraderd", "run", "--state-dir", str(tmp_path / "state"),
         "--models-dir", str(tmp_path / "models")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, steps = time.monotonic() + 30, 0
        while time.monotonic() < deadline and steps < 100:
            if sock.exists():
                with contextlib.suppress(ctl.CtlError):
                    steps = ctl.request(sock, "status")["result"]["steps"]
            time.sleep(0.05)
        assert steps >= 100, "daemon did not start replaying"
        rep = qt("report", "--state-dir", tmp_path / "state", "--out", tmp_path / "live")
        assert proc.poll() is None, "the daemon should still be running"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert proc.returncode == 0, err[-2000:]
    raw = (tmp_path / "live" / "report.html").read_text()
    page = Page(raw)
    assert "(running)" in raw
    assert [i["alt"] for i in page.imgs][:3] == ["equity per quote account",
                                                 "drawdown per quote account",
                                                 "net PnL per symbol"]


def test_decimation_keeps_extremes_and_bounds_the_points():
    from qtraderd.reporting.plots import decimate

    rng = np.random.default_rng(3)
    values = np.cumsum(rng.normal(size=600_000))
    ts = np.arange(len(values), dtype=np.int64) * 300_000
    t0 = time.perf_counter()
    t, v = decimate(ts, values, 2000)
    assert time.perf_counter() - t0 < 1.0
    assert len(v) <= 2002 and v.min() == values.min() and v.max() == values.max()
    assert t[0] == ts[0] and t[-1] == ts[-1] and np.all(np.diff(t) > 0)
    small = np.arange(10.0)
    assert decimate(small, small, 2000)[1] is small



def test_a_run_that_has_not_recorded_a_bar_yet(tmp_path):
    """Right after start-up: the page says what is missing instead of failing."""
    conn = connect(tmp_path / "state")
    conn.execute(
        "INSERT INTO runs (started_at, mode, source, seed, config, symbols, interval, status) "
        "VALUES (?,?,?,?,?,?,?,?)", ("2025-01-01T00:00:00", "paper", "replay", 42,
                                     json.dumps(load(env={}).to_dict()),
                                     json.dumps(["ETHBTC", "XRPUSDT"]), "5m", "running"))
    conn.close()
    rep = qt("report", "--state-dir", tmp_path / "state", "--out", tmp_path / "o")
    assert rep.returncode == 0, rep.stderr
    raw = (tmp_path / "o" / "report.html").read_text()
    page = Page(raw)
    assert "No equity recorded for this run yet" in raw and "No predictions" in raw
    assert [i["alt"] for i in page.imgs] == ["net PnL per symbol"]
    assert [r[0] for r in page.table("Per symbol")[1:]] == ["ETHBTC", "XRPUSDT"]
