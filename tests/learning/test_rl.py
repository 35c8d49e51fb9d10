"""QAgent: state keys, epsilon-greedy choice, the Q update, learning, persistence."""

from __future__ import annotations

import json
import random
from dataclasses import replace as dc_replace
from pathlib import Path

import pytest

from qtraderd.core.config import RLConfig, load
from qtraderd.core.messages import Record
from qtraderd.learning.rl import QAgent, Update, action_code, restore, state_key
from qtraderd.store.db import connect
from qtraderd.store.rows import Batch, write_batch

MULTS = (0.5, 0.75, 1.0, 1.25, 1.5)


def agent(seed: int = 7, **changes: object) -> QAgent:
    return QAgent(dc_replace(RLConfig(), **changes), seed)


def new_run(conn) -> int:
    cur = conn.execute("INSERT INTO runs (started_at, mode, source, seed, config, symbols, "
                       "interval, status) VALUES ('t','paper','replay',1,'{}','[]','5m','x')")
    return int(cur.lastrowid)


def test_defaults_are_what_these_tests_assume() -> None:
    rl = load(env={}).rl
    assert (rl.epsilon, rl.gamma, rl.multipliers) == (0.1, 0.0, MULTS)


@pytest.mark.parametrize(("regime", "conf", "dd", "key"), [
    ("trend_up", 0.30, 0.0, "trend_up|c0|d0"),
    ("range", 0.40, 0.0099, "range|c1|d0"),  # an edge belongs to the bucket above it
    ("range", 0.47, 0.01, "range|c2|d1"),
    ("high_vol", 0.55, 0.05, "high_vol|c3|d2"),
    ("trend_down", 0.90, 0.30, "trend_down|c4|d3"),
    ("", float("nan"), float("nan"), "none|c0|d0"),
])
def test_state_key(regime: str, conf: float, dd: float, key: str) -> None:
    assert state_key(regime, conf, dd) == key


def test_untrained_agent_sizes_like_the_rule() -> None:
    a = agent(epsilon=0.0)
    assert all(a.multipliers[a.choose(f"s{i}")] == 1.0 for i in range(50))


def test_greedy_ties_go_to_the_size_nearest_one_then_the_smaller() -> None:
    a = agent(multipliers=(0.5, 0.75, 1.25, 2.0))
    assert a.multipliers[a.greedy("x")] == 0.75
    a.learn("x", a.multipliers.index(0.75), -1.0)  # 0.75 now worse than untried 1.25
    assert a.multipliers[a.greedy("x")] == 1.25


def test_same_seed_same_choices_other_seed_differs() -> None:
    def run(seed: int) -> list[int]:
        a = agent(seed, epsilon=0.5)
        return [a.choose("s") for _ in range(200)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_epsilon_greedy_explores_at_about_epsilon() -> None:
    a = agent(epsilon=0.1)
    best = a.multipliers.index(1.5)
    for _ in range(3):
        a.learn("s", best, 5.0)
    picks = [a.choose("s") for _ in range(20_000)]
    assert a.explored / 20_000 == pytest.approx(0.1, abs=0.01)
    # exploration is uniform over all five actions, greedy included
    off = sum(p != best for p in picks) / 20_000
    assert off == pytest.approx(0.1 * 4 / 5, abs=0.01)
    assert a.decisions == 20_000


def test_q_update_arithmetic() -> None:
    a = agent(alpha=0.5)
    u1 = a.learn("s", 2, 2.0)
    u2 = a.learn("s", 2, 4.0)
    assert (u1.q, u2.q) == (pytest.approx(1.0), pytest.approx(2.5))  # 1 + 0.5 * (4 - 1)
    assert (u2.n, u2.code, u2.multiplier, u2.reward) == (2, 1000, 1.0, 4.0)
    assert a.q["s"] == [0.0, 0.0, 2.5, 0.0, 0.0] and a.n["s"] == [0, 0, 2, 0, 0]
    assert a.updates == 2


def test_q_update_bootstraps_from_the_next_state_only_with_gamma() -> None:
    a = agent(alpha=0.5, gamma=0.9)
    a.q["next"] = [0.0, 3.0, 1.0, 0.0, -2.0]
    a.n["next"] = [0, 1, 1, 0, 1]
    u = a.learn("s", 0, 1.0, "next")
    assert u.q == pytest.approx(0.5 * (1.0 + 0.9 * 3.0))
    assert a.learn("t", 0, 1.0, None).q == pytest.approx(0.5)  # terminal
    a0 = agent(alpha=0.5, gamma=0.0)
    a0.q["next"] = [10.0] * 5
    assert a0.learn("s", 0, 1.0, "next").q == pytest.approx(0.5)


def test_bandit_learns_the_multiplier_that_pays_in_each_state() -> None:
    """Two states, each with a different multiplier paying the most (noisy rewards)."""
    a = agent(11, epsilon=0.2, alpha=0.1)
    env = random.Random(5)
    pays = {"trend_up|c3|d0": 1.25, "high_vol|c1|d2": 0.5}
    for i in range(600):
        s = list(pays)[i % 2]
        act = a.choose(s)
        mean = 1.0 if a.multipliers[act] == pays[s] else 0.2
        a.learn(s, act, env.gauss(mean, 0.3))
    for s, m in pays.items():
        assert a.multipliers[a.greedy(s)] == m
    assert a.status()["states"]["trend_up|c3|d0"]["best"] == 1.25


def test_update_records_have_the_store_shapes() -> None:
    rq, ru = Update("s|c1|d0", 3, 1250, 1.25, 2.0, 0.2, 1).records(123, "ETHBTC")
    assert rq == Record("rl_q", {"state": "s|c1|d0", "action": 1250, "q": 0.2, "n": 1,
                                 "updated_ts": 123}, mode="replace")
    assert ru == Record("rl_updates", {"ts": 123, "symbol": "ETHBTC", "state": "s|c1|d0",
                                       "action": 1250, "multiplier": 1.25, "reward": 2.0,
                                       "q": 0.2})
    assert "run_id" not in rq.row


@pytest.mark.parametrize("mults", [(), (1.0, 0.0), (1.0, -0.5), (1.0, 1.0004)])
def test_bad_multipliers_are_rejected(mults: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="multipliers"):
        agent(multipliers=mults)


def test_action_code_is_the_multiplier_in_thousandths() -> None:
    assert [action_code(m) for m in MULTS] == [500, 750, 1000, 1250, 1500]


def trained(seed: int = 1) -> QAgent:
    a = agent(seed, alpha=0.3)
    env = random.Random(seed)
    for _ in range(300):
        s = env.choice(["range|c1|d0", "trend_up|c4|d1", "high_vol|c2|d3"])
        a.learn(s, env.randrange(5), env.gauss(0.0, 1.0))
    return a


def test_restore_from_a_real_store_gives_the_same_greedy_choices(tmp_path: Path) -> None:
    a = trained()
    conn = connect(tmp_path)
    conn.executemany("INSERT INTO rl_q (state, action, q, n, updated_ts) VALUES (?,?,?,?,?)",
                     [(s, a.codes[i], q, a.n[s][i], 1) for s, qs in a.q.items()
                      for i, q in enumerate(qs) if a.n[s][i]])
    conn.close()
    b = restore(RLConfig(), 99, tmp_path)
    assert b.q == a.q and b.n == a.n
    assert {s: b.greedy(s) for s in b.q} == {s: a.greedy(s) for s in a.q}
    assert b.loaded == sum(1 for ns in a.n.values() for n in ns if n)


def test_records_written_by_the_store_writer_restore_the_table(tmp_path: Path) -> None:
    """The Records the sizer emits, through rows.write_batch (rl_q has no run_id): the
    last upsert per (state, action) wins, rl_updates keeps the history with the run."""
    a = agent(alpha=0.5)
    records: list[Record] = []
    for i, (s, act, r) in enumerate([("x", 4, 2.0), ("x", 4, 4.0), ("y", 0, -1.0),
                                     ("x", 2, 1.0)]):
        records.extend(a.learn(s, act, r).records(1000 + i, "ETHBTC"))
    conn = connect(tmp_path)
    run = new_run(conn)
    assert write_batch(conn, run, Batch(1, [], records)) == 8
    assert conn.execute("SELECT state, action, q, n FROM rl_q ORDER BY state, action"
                        ).fetchall() == [("x", 1000, 0.5, 1), ("x", 1500, 2.5, 2),
                                         ("y", 500, -0.5, 1)]
    hist = conn.execute("SELECT run_id, symbol, action, multiplier, reward, q FROM "
                        "rl_updates ORDER BY id").fetchall()
    assert len(hist) == 4 and {h[0] for h in hist} == {run}
    assert hist[1] == (run, "ETHBTC", 1500, 1.5, 4.0, 2.5)
    b = agent()
    assert b.load(conn) == 3
    assert b.q == a.q and b.greedy("x") == a.greedy("x") == 4


def test_stored_actions_for_other_multipliers_are_ignored(tmp_path: Path) -> None:
    conn = connect(tmp_path)
    conn.executemany("INSERT INTO rl_q VALUES (?,?,?,?,?)",
                     [("s", 2000, 9.0, 5, 1), ("s", 1250, 1.0, 2, 1)])
    a = agent(multipliers=(0.5, 1.0, 1.25))
    assert a.load(conn) == 1
    assert a.q["s"] == [0.0, 0.0, 1.0] and a.multipliers[a.greedy("s")] == 1.25


def test_restore_without_a_store_starts_empty(tmp_path: Path) -> None:
    a = restore(RLConfig(), 1, tmp_path / "nothing")
    assert a.q == {} and a.loaded == 0


def test_status_for_ctl() -> None:
    a = agent(alpha=0.5)
    a.learn("range|c2|d0", 4, 2.0)
    a.learn("range|c2|d0", 1, 1.0)
    a.choose("range|c2|d0")
    st = a.status()
    json.dumps(st)
    assert st["states_visited"] == 1 and st["updates"] == 2 and st["visits_total"] == 2
    assert st["epsilon"] == 0.1 and st["multipliers"] == list(MULTS)
    assert st["decisions"] == 1
    assert st["states"]["range|c2|d0"] == {
        "best": 1.5, "q": {"0.5": 0.0, "0.75": 0.5, "1": 0.0, "1.25": 0.0, "1.5": 1.0},
        "n": {"0.5": 0, "0.75": 1, "1": 0, "1.25": 0, "1.5": 1}, "visits": 2}
