"""Fuzzing the control socket of a real running daemon (issue 11, B14).

Generated requests — any bytes, any JSON, any size, every command with any arguments —
go over the real Unix socket to one `qtraderd run` subprocess. For every case: each
request line gets exactly one well-formed reply line, the daemon stays alive and logs no
traceback, and every state change it accepted is in the store (checked per case for the
risk commands, so a lost row names its request). After each batch: `status` answers,
`PRAGMA integrity_check` is ok and the accepted-commands tally equals `risk_commands`.

No shrinking here: a request that kills the daemon would make every later example fail
and shrink to nonsense. The ci profile is derandomized, so a failure reproduces as is.
"""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.daemon_harness import CHANGES, MAX_REQUEST_BYTES, FuzzDaemon
from tests.fuzz.fuzz_count import tally

pytestmark = pytest.mark.fuzz

NO_SHRINK = settings(phases=[Phase.explicit, Phase.reuse, Phase.generate])
QUERIES = ("status", "modules", "positions", "pnl", "models", "learning", "rl", "plugins",
           "promote", "rollback", "retrain")
SYMBOLS = ("ETHBTC", "LTCBTC", "XMRBTC", "ethbtc", "NOPE", "")

scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.text(max_size=40) | st.sampled_from(SYMBOLS))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=16)
arg_keys = st.sampled_from(("reason", "symbol", "limit", "family", "version", "args", "cmd"))
args_dicts = st.dictionaries(arg_keys | st.text(max_size=8), json_values, max_size=4)


@pytest.fixture(scope="module")
def fuzz_daemon(trained, tmp_path_factory):
    d = FuzzDaemon(trained, tmp_path_factory.mktemp("ctlfuzz"))
    d.start()
    yield d
    d.stop()


@pytest.fixture
def daemon(fuzz_daemon):
    fuzz_daemon.ensure()  # a fresh daemon if an earlier (failed) test killed it
    return fuzz_daemon


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def expected_replies(payload: bytes) -> tuple[int, bool]:
    """(replies for the lines before any oversized one, whether one is oversized):
    blank lines are keep-alives, a line over the limit ends the connection."""
    n = 0
    for seg in payload.split(b"\n"):
        if len(seg) > MAX_REQUEST_BYTES:
            return n, True
        if seg.strip():
            n += 1
    return n, False


def test_any_bytes(daemon: FuzzDaemon) -> None:
    chunks = st.binary(max_size=64) | st.sampled_from(
        [b"\n", b"\r\n", b" ", b"{", b"}", b'"cmd"', b":", b'"status"', b"\xff", b"\x00"])

    @NO_SHRINK
    @given(st.lists(chunks, max_size=24).map(b"".join)
           | st.binary(min_size=MAX_REQUEST_BYTES - 8, max_size=MAX_REQUEST_BYTES + 8))
    def case(payload: bytes) -> None:
        tally()
        replies = daemon.case(payload)
        n, too_large = expected_replies(payload)
        if too_large:
            assert len(replies) in (n, n + 1), replies
            if len(replies) == n + 1:
                assert replies[-1] == {"ok": False, "error": "request too large"}
        else:
            assert len(replies) == n, (payload, replies)

    case()
    daemon.assert_healthy()


def test_any_json_value(daemon: FuzzDaemon) -> None:
    requests = json_values | st.fixed_dictionaries(
        {"cmd": st.sampled_from(QUERIES) | st.text(max_size=12) | json_values},
        optional={"args": json_values})

    @NO_SHRINK
    @given(requests)
    def case(value: object) -> None:
        tally()
        payload = line(value)
        replies = daemon.case(payload)
        _n, too_large = expected_replies(payload)
        assert len(replies) == 1, replies
        if too_large:
            assert replies[0] == {"ok": False, "error": "request too large"}
        elif not (isinstance(value, dict) and value.get("cmd") in QUERIES
                  and isinstance(value.get("args", {}), dict)):
            assert not replies[0]["ok"], (value, replies)

    case()
    daemon.assert_healthy()


def test_query_commands_with_any_args(daemon: FuzzDaemon) -> None:
    @NO_SHRINK
    @given(st.sampled_from(QUERIES), args_dicts)
    def case(cmd: str, args: dict) -> None:
        tally()
        replies = daemon.case(line({"cmd": cmd, "args": args}))
        assert len(replies) == 1
        reply = replies[0]
        if cmd in ("status", "positions", "pnl", "rl", "models", "learning", "modules"):
            # read-only and argument-free: answered without arguments; any argument is
            # refused naming it (the merged schema: a misspelt one is not ignored)
            if not args:
                assert reply["ok"], (cmd, reply)
            else:
                first = sorted(args)[0]
                named = repr(first) if len(first) <= 32 else f"of {len(first)} characters"
                assert not reply["ok"] and reply["error"].startswith(
                    f"{cmd}: unknown argument {named} ({cmd} takes no arguments)"), (
                    cmd, args, reply)
        elif not reply["ok"]:
            assert reply["error"], (cmd, args, reply)

    case()
    daemon.assert_healthy()


def test_trades_with_any_limit(daemon: FuzzDaemon) -> None:
    @NO_SHRINK
    @given(json_values | st.sampled_from([1e999, -1e999, 1e308, 10**30, "1e999", "nan"]))
    def case(limit: object) -> None:
        tally()
        replies = daemon.case(line({"cmd": "trades", "args": {"limit": limit}}))
        assert len(replies) == 1
        whole = (not isinstance(limit, bool) and isinstance(limit, int | float)
                 and math.isfinite(limit) and limit == int(limit))
        if not replies[0]["ok"]:
            assert "limit" in replies[0]["error"], (limit, replies)  # names the bad input
        else:  # the merged schema: null (the default) or a whole number in 1..10,000
            assert limit is None or (whole and 1 <= limit <= 10_000), (limit, replies)
            assert len(replies[0]["result"]) <= (20 if limit is None else limit)

    case()
    daemon.assert_healthy()


def test_risk_commands_with_any_args(daemon: FuzzDaemon) -> None:
    @NO_SHRINK
    @given(st.sampled_from(CHANGES), args_dicts)
    def case(cmd: str, args: dict) -> None:
        tally()
        payload = line({"cmd": cmd, "args": args})
        replies = daemon.case(payload)
        assert len(replies) == 1
        daemon.count_accepted(cmd, replies)
        if replies[0]["ok"] and cmd in ("pause", "resume-symbol"):
            # a symbol must be a symbol: not a number, a list, or one not traded
            assert isinstance(args.get("symbol"), str) and args["symbol"].upper() in (
                "ETHBTC", "LTCBTC", "XMRBTC"), (args, replies)
        # what was accepted is durable: its row reaches the store (polled, with a deadline)
        deadline = time.monotonic() + 10
        while daemon.recorded_commands() != daemon.accepted:
            daemon._check_alive(payload)
            assert time.monotonic() < deadline, (
                f"accepted {payload!r} but its risk_commands row never reached the store; "
                f"log:\n{daemon.log_tail()}")
            time.sleep(0.01)

    case()
    daemon.assert_healthy()


def test_pathological_json(daemon: FuzzDaemon) -> None:
    """Valid-looking JSON that the parser itself chokes on: deep nesting, huge numbers."""
    room = MAX_REQUEST_BYTES - 40
    nested = st.integers(1, room // 2).map(lambda d: "[" * d + "]" * d)
    nested_obj = st.integers(1, room // 6).map(lambda d: '{"a":' * d + "1" + "}" * d)
    digits = st.integers(1, room).map(lambda n: "9" * n)
    floats = st.integers(1, room - 4).map(lambda n: "1e" + "9" * n)

    @NO_SHRINK
    @given(nested | nested_obj | digits | floats, st.booleans())
    def case(value: str, wrapped: bool) -> None:
        tally()
        text = f'{{"cmd":"status","args":{{"x":{value}}}}}' if wrapped else value
        replies = daemon.case(text.encode() + b"\n")
        assert len(replies) == 1, replies

    case()
    daemon.assert_healthy()


def test_many_requests_on_one_connection(daemon: FuzzDaemon) -> None:
    """Pipelined requests, padded to around the size limit: one reply each, in order."""
    @NO_SHRINK
    @given(st.lists(st.tuples(st.sampled_from(QUERIES[:4]),
                              st.integers(0, MAX_REQUEST_BYTES + 16)), min_size=1, max_size=8))
    def case(reqs: list[tuple[str, int]]) -> None:
        tally()
        # padded with JSON whitespace (an unknown argument such as "pad" is refused)
        lines = [line({"cmd": c})[:-2] + b" " * pad + b"}\n" for c, pad in reqs]
        payload = b"".join(lines)
        replies = daemon.case(payload)
        n, too_large = expected_replies(payload)
        assert len(replies) in ((n, n + 1) if too_large else (n,)), (reqs, replies)
        for (cmd, _), reply in zip(reqs, replies[:n], strict=False):
            assert reply["ok"], (cmd, reply)

    case()
    daemon.assert_healthy()
