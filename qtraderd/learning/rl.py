"""Tabular Q-learning that scales the rule-based entry size (the seed's "RL" layer).

The rule (actors/sizer.py) decides *whether* to enter; this agent only decides *how much*
of the rule's size to use, as one of `rl.multipliers`. Risk applies every limit after it,
so the agent can never trade beyond them.

State: the symbol's regime, a bucket of the chosen side's probability and a bucket of the
quote account's drawdown from its running peak, as a short key ("trend_up|c2|d1"), so
the table stays small enough to learn from a few hundred trades and reads well in
`ctl rl`. Bucket edges are constants, not config: stored keys must keep their meaning.

Actions are stored by code, the multiplier in thousandths (1.25 -> 1250), not by index:
a table learned with one `multipliers` list stays correct when the list is changed;
rows for multipliers no longer configured are ignored on load.

Choice is epsilon-greedy with a `random.Random` seeded from the config, one draw per
decision, so a replay chooses the same actions. Greedy ties go to the multiplier
closest to 1.0 (then the smaller one), so an untrained agent sizes exactly like the rule.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtraderd.core.config import RLConfig
from qtraderd.core.messages import Record
from qtraderd.store.db import StoreError, connect

log = logging.getLogger("qtraderd.learning.rl")

CONF_EDGES = (0.40, 0.45, 0.50, 0.60)  # probability of the chosen side -> c0..c4
DD_EDGES = (0.01, 0.03, 0.06)  # drawdown from the running peak (fraction) -> d0..d3


def action_code(multiplier: float) -> int:
    """The stored action: the multiplier in thousandths, independent of list order."""
    return round(multiplier * 1000)


def state_key(regime: str, confidence: float, drawdown: float) -> str:
    """The discrete state; NaN confidence falls in the lowest bucket."""
    c = bisect_right(CONF_EDGES, confidence) if confidence == confidence else 0
    d = bisect_right(DD_EDGES, drawdown) if drawdown == drawdown else 0
    return f"{regime or 'none'}|c{c}|d{d}"


@dataclass(frozen=True, slots=True)
class Update:
    """One applied Q update: what `learn` changed, in the shape the store keeps."""

    state: str
    action: int  # index into the agent's multipliers
    code: int  # action_code of the multiplier (the stored action)
    multiplier: float
    reward: float
    q: float
    n: int

    def records(self, ts: int, symbol: str) -> tuple[Record, Record]:
        """The state-table upsert (no run_id: rl_q outlives runs) and the history row."""
        return (
            Record("rl_q", {"state": self.state, "action": self.code, "q": self.q,
                            "n": self.n, "updated_ts": ts}, mode="replace"),
            Record("rl_updates", {"ts": ts, "symbol": symbol, "state": self.state,
                                  "action": self.code, "multiplier": self.multiplier,
                                  "reward": self.reward, "q": self.q}),
        )


class QAgent:
    """Q table over (state, multiplier); owned by the sizer, read by `ctl rl`."""

    def __init__(self, cfg: RLConfig, seed: int) -> None:
        mults = tuple(float(m) for m in cfg.multipliers)
        if not mults or any(not m > 0 for m in mults):
            raise ValueError(f"rl.multipliers must be positive numbers, got {mults}")
        codes = tuple(action_code(m) for m in mults)
        if len(set(codes)) != len(codes):
            raise ValueError(f"rl.multipliers has duplicates (to 0.001): {mults}")
        self.cfg = cfg
        self.multipliers = mults
        self.codes = codes
        self._index = {c: i for i, c in enumerate(codes)}
        # Preference order for greedy ties: nearest to the rule's own size, then smaller.
        self._prefer = sorted(range(len(mults)), key=lambda i: (abs(mults[i] - 1.0), mults[i]))
        self.q: dict[str, list[float]] = {}
        self.n: dict[str, list[int]] = {}
        self.rng = random.Random(seed)
        self.decisions = 0
        self.explored = 0
        self.updates = 0  # applied by this process
        self.loaded = 0  # rows restored from the store

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def greedy(self, state: str) -> int:
        """Index of the best multiplier in `state` (unseen states: the one nearest 1.0)."""
        q = self.q.get(state)
        if q is None:
            return self._prefer[0]
        return max(self._prefer, key=q.__getitem__)  # max keeps the first of equals

    def choose(self, state: str) -> int:
        """Epsilon-greedy; exactly one draw per decision (two when exploring)."""
        self.decisions += 1
        if self.rng.random() < self.cfg.epsilon:
            self.explored += 1
            return self.rng.randrange(len(self.multipliers))
        return self.greedy(state)

    def value(self, state: str) -> float:
        """max_a Q(state, a); 0 for a state never updated (as initialised)."""
        q = self.q.get(state)
        return max(q) if q is not None else 0.0

    def learn(self, state: str, action: int, reward: float,
              next_state: str | None = None) -> Update:
        """Q[s,a] += alpha * (r + gamma * max_a' Q[s',a'] - Q[s,a]).

        `next_state` None means terminal (the default gamma 0 makes every trade an
        episode anyway).
        """
        q = self.q.setdefault(state, [0.0] * len(self.multipliers))
        n = self.n.setdefault(state, [0] * len(self.multipliers))
        future = self.value(next_state) if next_state is not None and self.cfg.gamma else 0.0
        q[action] += self.cfg.alpha * (reward + self.cfg.gamma * future - q[action])
        n[action] += 1
        self.updates += 1
        return Update(state, action, self.codes[action], self.multipliers[action], reward,
                      q[action], n[action])

    # -- persistence -----------------------------------------------------------------------
    def load(self, conn: sqlite3.Connection) -> int:
        """Restore the table from `rl_q` (replaces what is in memory); returns rows used.

        Rows for multipliers that are no longer configured are skipped with a warning
        rather than mapped onto a different size.
        """
        self.q.clear()
        self.n.clear()
        skipped = used = 0
        for state, code, q, n in conn.execute(
                "SELECT state, action, q, n FROM rl_q ORDER BY state, action"):
            i = self._index.get(int(code))
            if i is None:
                skipped += 1
                continue
            self.q.setdefault(state, [0.0] * len(self.multipliers))[i] = float(q)
            self.n.setdefault(state, [0] * len(self.multipliers))[i] = int(n)
            used += 1
        if skipped:
            log.warning("rl: %d stored Q values are for multipliers no longer configured "
                        "(%s); ignored", skipped, ", ".join(f"{m:g}" for m in self.multipliers))
        self.loaded = used
        log.info("rl: restored %d Q values over %d states", used, len(self.q))
        return used

    def export_state(self) -> dict[str, Any]:
        """The table, the visit counts and the random generator: what continues a run."""
        return {"q": self.q, "n": self.n, "rng": self.rng.getstate(),
                "counts": (self.decisions, self.explored, self.updates, self.loaded)}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.q, self.n = state["q"], state["n"]
        self.rng.setstate(state["rng"])
        self.decisions, self.explored, self.updates, self.loaded = state["counts"]

    def status(self) -> dict[str, Any]:
        """For `qtraderd ctl rl`: the whole table, best action first per state (JSON-safe)."""
        keys = [f"{m:g}" for m in self.multipliers]
        states = {}
        for s in sorted(self.q):
            q, n = self.q[s], self.n[s]
            states[s] = {"best": self.multipliers[self.greedy(s)],
                         "q": {k: round(v, 6) for k, v in zip(keys, q, strict=True)},
                         "n": dict(zip(keys, n, strict=True)), "visits": sum(n)}
        return {
            "enabled": self.enabled, "epsilon": self.cfg.epsilon, "alpha": self.cfg.alpha,
            "gamma": self.cfg.gamma, "multipliers": list(self.multipliers),
            "states_visited": len(states), "updates": self.updates,
            "visits_total": sum(v["visits"] for v in states.values()),
            "restored_rows": self.loaded, "decisions": self.decisions,
            "explored": self.explored, "states": states,
        }


def restore(cfg: RLConfig, seed: int, state_dir: str | Path) -> QAgent:
    """A new agent with the stored table (read-only connection; no store yet: empty)."""
    agent = QAgent(cfg, seed)
    try:
        conn = connect(state_dir, readonly=True)
    except StoreError as exc:
        log.info("rl: starting with an empty Q table (%s)", exc)
        return agent
    try:
        agent.load(conn)
    finally:
        conn.close()
    return agent
