"""Fuzzing plugins (issue 11, B14): modules that raise, loop, exit or return nonsense.

Each case writes one generated plugin file — misbehaving at import, in setup or
`Plugin(settings)`, in a hook (filter_signal, check_order, notify) or in teardown — next
to a well-behaved plugin, and drives the plugin host's own API in-process: load, the
sizer's and risk actor's hook calls, a notifier delivery, removal. The promise (issue
items B3, B4, B14): nothing a plugin does escapes the host; a bad module is rejected with
its reason; a failing hook is counted as its plugin's error ("no opinion": the trade
decision falls back to the built-in limits) and the good plugin keeps working.

SystemExit/KeyboardInterrupt and endless loops are contained by the plugin isolation of
B3/B4 (plugins/isolation.py: plugin code runs where the host can abandon it). Loops sleep
in small steps and are released after each case, so an abandoned one never burns the
shared CPU.
"""

from __future__ import annotations

import itertools
import sys
import threading
import types
from pathlib import Path

import pytest
import trio
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from qtraderd.plugins.host import ACTIVE, DISABLED, REJECTED, PluginHost
from tests.fuzz.fuzz_count import tally
from tests.plugins.plugin_helpers import check_call, filter_call, host, step

pytestmark = pytest.mark.fuzz

# A module the generated plugins import to find the release switch of their loops.
STOP = threading.Event()
_switch = types.ModuleType("qtraderd_fuzz_switch")
_switch.STOP = STOP  # type: ignore[attr-defined]
sys.modules["qtraderd_fuzz_switch"] = _switch
_names = itertools.count()

GOOD = """from qtraderd.plugins.api import *
PLUGIN_API = 1
NAME = "good"
VERSION = "1.0"
def filter_signal(signal):
    return None
def check_order(order, account):
    return None
"""
PLACES = ("import", "setup", "init", "filter_signal", "check_order", "notify",
          "async_notify", "teardown")
EXCEPTIONS = ("ValueError", "ZeroDivisionError", "RuntimeError", "TypeError",
              "AssertionError", "LookupError", "OSError", "MemoryError", "StopIteration",
              "ArithmeticError", "UnicodeError", "Exception", "RecursionError")
# messages and values that make the space of generated modules unbounded
messages = st.text(max_size=30).map(repr) | st.just("Evil()")  # Evil: str() raises
literals = ((st.integers() | st.text(max_size=20) | st.binary(max_size=8)
             | st.lists(st.integers(), max_size=3)).map(repr)
            | st.floats().map(lambda f: f"float({str(f)!r})"))  # repr(inf) is no literal
NONSENSE = ("1", "'x'", "float('nan')", "[veto('v')]", "object()", "(0.5,)", "b'x'", "veto",
            "Verdict(factor=float('nan'))",
            "Verdict(factor=-1.0)", "Verdict(factor=2.0)", "RiskVerdict(allowed='no', code=5)",
            "RiskVerdict(allowed=False, code=None)", "keep()", "allow()", "deny('c')",
            "scale(0.5)", "veto('no')", "True", "{}", "iter([1])", "(x for x in [])")
EVIL = ("Evil()",)  # an object whose repr, bool and comparisons raise
BASE = ("SystemExit(3)", "SystemExit(0)", "KeyboardInterrupt()", "GeneratorExit()",
        "Custom()")
LOOP = ("while not __import__('qtraderd_fuzz_switch').STOP.wait(0.005):\n        pass",)


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    return d


def plugin_source(name: str, place: str, action: str) -> str:
    """A plugin whose `place` does `action` ("raise E", "return X" or a loop)."""
    body = f"    {action}\n"
    head = (f"from qtraderd.plugins.api import *\nfrom qtraderd.plugins.api import Verdict, "
            f"RiskVerdict\nPLUGIN_API = 1\nNAME = {name!r}\nVERSION = '1.0'\n"
            "class Custom(BaseException):\n    pass\n"
            "class Evil:\n    def __repr__(self):\n        raise ValueError('repr')\n"
            "    def __bool__(self):\n        raise ValueError('bool')\n"
            "    def __eq__(self, other):\n        raise ValueError('eq')\n"
            "    __hash__ = None\n"
            "    def __le__(self, other):\n        raise ValueError('le')\n"
            "    __ge__ = __lt__ = __gt__ = __le__\n")
    if place == "import":
        return head + "def _at_import():\n" + body + "_at_import()\n" + \
            "def filter_signal(signal):\n    return None\n"
    if place == "init":
        return head + "class Plugin:\n    def __init__(self, settings):\n" + \
            body.replace("    ", "        ", 1) + \
            "    def filter_signal(self, signal):\n        return None\n"
    hooks = {
        "filter_signal": "def filter_signal(signal):\n",
        "check_order": "def check_order(order, account):\n",
        "notify": "def notify(event):\n",
        "async_notify": "async def notify(event):\n",
        "setup": "def setup(settings):\n",
        "teardown": "def teardown():\n",
    }
    src = head + hooks[place] + body
    if place in ("setup", "teardown"):
        src += "def filter_signal(signal):\n    return None\n"
    return src


async def _notify_once(h: PluginHost) -> None:
    async with trio.open_nursery() as n:
        n.start_soon(h.notifications.run)
        h.emit("trade_closed", 0, {"symbol": "ETHBTC"})
        await h.notifications.drain(10.0)
        n.cancel_scope.cancel()


def exercise(pdir: Path, place: str, action: str) -> None:
    """Load a bad plugin beside a good one and call every hook through the host."""
    for old in pdir.glob("*.py"):
        old.unlink()
    name = f"bad{next(_names)}"
    bad_path = pdir / f"{name}.py"
    bad_path.write_text(plugin_source(name, place, action))
    (pdir / "good.py").write_text(GOOD)
    # deadlines shorter than the defaults (load 10 s): a looping import or setup costs
    # each case that long; the host enforces whatever they are set to
    h = host(pdir, max_errors=3, notify_timeout_s=1.0, load_timeout_s=2.0)
    h.load_all()
    bad, good = h.states[bad_path], h.states[pdir / "good.py"]
    assert good.state == ACTIVE
    if place in ("import", "init") or (place == "setup" and not action.startswith("return")):
        assert bad.state == REJECTED and bad.last_error, bad  # rejected with its reason
        return
    assert bad.state == ACTIVE, bad
    for i in range(5):  # past max_errors: a plugin that keeps failing is disabled
        factor, reason = filter_call(h, step(seq=i + 1))
        assert 0.0 <= factor <= 1.0 and isinstance(reason, str)
        denied = check_call(h)
        assert denied is None or denied.startswith(f"plugin:{name}:")
        if place in ("notify", "async_notify"):
            trio.run(_notify_once, h)
    assert good.errors == 0 and good.calls >= 5 and good.state == ACTIVE
    if bad.errors:
        assert bad.last_error and (bad.state == DISABLED or bad.consecutive < 3)
    h.remove(bad_path)  # runs teardown
    h.remove(pdir / "good.py")


def test_plugins_that_raise(pdir: Path) -> None:
    @given(st.sampled_from(PLACES), st.sampled_from(EXCEPTIONS), messages)
    def case(place: str, exc: str, msg: str) -> None:
        tally()
        exercise(pdir, place, f"raise {exc}({msg})")

    case()


def test_plugins_that_return_nonsense(pdir: Path) -> None:
    @given(st.sampled_from(("filter_signal", "check_order", "notify", "async_notify",
                            "setup", "init")), st.sampled_from(NONSENSE) | literals)
    def case(place: str, value: str) -> None:
        tally()
        exercise(pdir, place, f"return {value}")

    case()


def test_plugins_that_return_evil_objects(pdir: Path) -> None:
    """The answer types filled with anything: checked in the plugin's lane, never in the
    caller (Verdict(factor='x') once raised TypeError in the sizer)."""
    field = literals | st.sampled_from(("Evil()", "None", "True", "0", "0.5", "1.0", "'c'",
                                        "float('nan')", "-0.0"))
    verdicts = st.tuples(field, field).map(lambda t: f"Verdict(factor={t[0]}, reason={t[1]})")
    risk = st.tuples(field, field).map(lambda t: f"RiskVerdict(allowed={t[0]}, code={t[1]})")

    @given(st.sampled_from(("filter_signal", "check_order")),
           st.sampled_from((*EVIL, "Verdict(factor=Evil())", "Verdict(factor='x')",
                            "Verdict(factor=0.5, reason=Evil())",
                            "RiskVerdict(allowed=Evil())")) | verdicts | risk)
    def case(place: str, value: str) -> None:
        tally()
        exercise(pdir, place, f"return {value}")

    case()


def test_plugins_that_exit(pdir: Path) -> None:
    @given(st.sampled_from(PLACES), st.sampled_from(BASE)
           | st.integers().map(lambda n: f"SystemExit({n})")
           | messages.map(lambda m: f"KeyboardInterrupt({m})"))
    def case(place: str, exc: str) -> None:
        tally()
        try:
            exercise(pdir, place, f"raise {exc}")
        except AssertionError:
            raise
        except BaseException as escaped:  # KeyboardInterrupt would end the whole session
            raise AssertionError(f"{type(escaped).__name__} raised in a plugin's {place} "
                                 "escaped the plugin host") from escaped

    case()


def test_plugins_that_loop(pdir: Path) -> None:
    """A hook or import that never returns: the caller gets its answer anyway. Few cases
    (each waits for the host's deadline), run in a thread so a missing deadline fails the
    test instead of hanging it."""
    @settings(max_examples=8 if settings().max_examples < 1000 else 100,
              phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking
    @given(st.sampled_from(PLACES))
    def case(place: str) -> None:
        tally()
        STOP.clear()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                exercise(pdir, place, LOOP[0])
            except BaseException as exc:  # reported below, on the test's thread
                errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(10.0)  # far above the deadlines set in exercise()
        frozen = t.is_alive()
        STOP.set()  # release the loop (the host may have abandoned it already)
        t.join(10.0)
        assert not frozen, f"a plugin looping in {place} froze the host's caller"
        if errors:
            raise errors[0]

    case()
