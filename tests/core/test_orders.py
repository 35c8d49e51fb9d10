"""The order lifecycle table (every legal and illegal move) and deterministic client ids."""

from __future__ import annotations

import itertools
import logging

import pytest

from qtraderd.core.enums import TERMINAL, OrderStatus, RiskState, Side
from qtraderd.core.orders import CLIENT_ID, TRANSITIONS, OrderBook, client_order_id, legal

S = OrderStatus
LEGAL = {
    (S.NEW, S.ACCEPTED), (S.NEW, S.REJECTED), (S.NEW, S.CANCELLED), (S.NEW, S.EXPIRED),
    (S.NEW, S.PARTIALLY_FILLED), (S.NEW, S.FILLED),
    (S.ACCEPTED, S.PARTIALLY_FILLED), (S.ACCEPTED, S.FILLED), (S.ACCEPTED, S.CANCELLED),
    (S.ACCEPTED, S.EXPIRED),
    (S.PARTIALLY_FILLED, S.PARTIALLY_FILLED), (S.PARTIALLY_FILLED, S.FILLED),
    (S.PARTIALLY_FILLED, S.CANCELLED), (S.PARTIALLY_FILLED, S.EXPIRED),
}
PAIRS = list(itertools.product(S, S))


def test_the_table_is_exactly_the_documented_lifecycle() -> None:
    assert set(TRANSITIONS) == set(S)
    assert {(a, b) for a, bs in TRANSITIONS.items() for b in bs} == LEGAL
    assert all(not TRANSITIONS[t] for t in TERMINAL)  # nothing leaves a terminal state


def book_at(state: OrderStatus) -> OrderBook:
    """A book holding order "o" in `state` (reached by legal moves)."""
    b = OrderBook()
    path = {S.NEW: [S.NEW], S.ACCEPTED: [S.NEW, S.ACCEPTED],
            S.PARTIALLY_FILLED: [S.NEW, S.ACCEPTED, S.PARTIALLY_FILLED]}
    for st in path.get(state, [S.NEW, state]):
        assert b.apply("o", st) is not None
    return b


@pytest.mark.parametrize(("frm", "to"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_every_move_is_applied_or_refused_by_the_table(frm, to, caplog) -> None:
    if frm in TERMINAL:
        b = OrderBook()
        b.apply("o", S.NEW)
        b.apply("o", frm)  # terminal: the order leaves the book
        before = b.refused
        with caplog.at_level(logging.WARNING, "qtraderd.orders"):
            assert b.apply("o", to) is None or to is S.NEW
        if to is not S.NEW:  # only a fresh NEW may reuse a forgotten id
            assert b.refused == before + 1
            assert f"order transition refused: o unknown -> {to}" in caplog.text
        return
    b = book_at(frm)
    applied, refused = b.applied, b.refused
    with caplog.at_level(logging.WARNING, "qtraderd.orders"):
        prev = b.apply("o", to)
    if (frm, to) in LEGAL:
        assert legal(frm, to) and prev == frm and b.refused == refused
        assert b.applied == applied + 1
        assert ("o" in b.states) == (to not in TERMINAL)
    elif frm == to:  # a repeated update is idempotent, not an error
        assert prev is None and b.refused == refused and b.states["o"] == frm
    else:
        assert not legal(frm, to)
        assert prev is None and b.refused == refused + 1 and b.states["o"] == frm
        assert caplog.text.count(f"order transition refused: o {frm} -> {to}") == 1


def test_unknown_order_may_only_start_new() -> None:
    b = OrderBook()
    assert b.apply("x", S.FILLED) is None and b.refused == 1 and "x" not in b.states
    assert b.apply("x", S.NEW) == "unknown" and b.states == {"x": S.NEW}
    assert b.status() == {"open_orders": 1, "transitions": 1, "transitions_refused": 1}


def test_restore_adopts_a_venues_open_orders() -> None:
    b = OrderBook()
    b.restore([("a", "accepted"), ("b", "partially_filled")])
    assert b.apply("a", S.FILLED) == S.ACCEPTED and b.apply("b", S.ACCEPTED) is None
    assert b.refused == 1


def test_client_id_format() -> None:
    assert client_order_id(7, 1234, "ETHBTC", "entry") == "q7-1234-ETHBTC-E"
    assert client_order_id(7, 1234, "ETHBTC", "exit") == "q7-1234-ETHBTC-X"
    assert client_order_id(7, 1234, "ETHBTC", "stop_loss") == "q7-1234-ETHBTC-SL"
    assert client_order_id(7, 1234, "ETHBTC", "take_profit", 2) == "q7-1234-ETHBTC-TP2"
    # the longest realistic one still fits Binance's rule
    cid = client_order_id(999_999, 999_999_999, "BTCUSDT_220325", "take_profit")
    assert len(cid) <= 36 and CLIENT_ID.match(cid)
    with pytest.raises(ValueError, match="36"):
        client_order_id(10**9, 10**12, "1000SHIBUSDT_230630", "entry")
    with pytest.raises(ValueError, match="purpose"):
        client_order_id(1, 1, "ETHBTC", "hedge")


def test_client_ids_are_deterministic_and_unique_across_runs_and_restarts() -> None:
    def ids(run: int, seqs: range) -> list[str]:
        return [client_order_id(run, q, s, p) for q in seqs for s in ("ETHBTC", "LTCBTC")
                for p in ("entry", "exit", "stop_loss", "take_profit")]

    first = ids(1, range(1, 500))
    assert first == ids(1, range(1, 500))  # a replay gives the same ids
    resumed = ids(1, range(500, 900))  # same run id, step seq continues after a restart
    other_run = ids(2, range(1, 500))
    everything = first + resumed + other_run
    assert len(set(everything)) == len(everything)
    assert all(CLIENT_ID.match(c) for c in everything)


def test_enums_compare_and_store_as_their_old_values() -> None:
    assert Side.LONG == 1 and Side.SHORT == -1 and -Side.LONG == Side.SHORT
    assert Side.LONG.venue == "BUY" and Side.SHORT.venue == "SELL"
    assert RiskState.HALTED == "HALTED" and f"{RiskState.REDUCING}" == "REDUCING"
    assert S.PARTIALLY_FILLED == "partially_filled" and S.FILLED.terminal
