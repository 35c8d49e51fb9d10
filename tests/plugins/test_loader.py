"""Loading one plugin file: what is accepted, what is rejected and why."""

from __future__ import annotations

import sys

import pytest

from qtraderd.plugins.api import deny, keep, scale, veto
from qtraderd.plugins.loader import PluginRejected, is_plugin_file, load_plugin
from tests.plugins.plugin_helpers import source


def load(pdir, text, settings=None, filename="p.py"):
    path = pdir / filename
    path.write_text(text)
    return load_plugin(path, lambda name: (settings or {}).get(name, {}))


def test_a_valid_module_plugin_loads_with_its_hooks_and_settings(pdir):
    p = load(pdir, source("good", "2.1", """
        seen = {}
        def setup(settings):
            seen.update(settings)
        def filter_signal(signal):
            return None
        def check_order(order, account):
            return None
        async def notify(event):
            pass
        def teardown():
            seen.clear()
    """), settings={"good": {"x": 1}})
    assert (p.name, p.version, p.api) == ("good", "2.1", 1)
    assert set(p.hooks) == {"filter_signal", "check_order", "notify"}
    assert p.async_notify and p.teardown is not None
    assert p.module.seen == {"x": 1}  # setup got the plugin's own table
    assert p.module.__name__ in sys.modules and p.module.__file__ == str(pdir / "p.py")
    assert len(p.sha256) == 64


def test_class_form_is_instantiated_with_settings(pdir):
    p = load(pdir, source("cls", body="""
        class Plugin:
            def __init__(self, settings):
                self.limit = settings.get("limit", 0)
            def check_order(self, order, account):
                return deny("x") if self.limit else None
    """), settings={"cls": {"limit": 2}})
    assert p.instance.limit == 2 and list(p.hooks) == ["check_order"]


def test_each_load_gets_its_own_module(pdir):
    a = load(pdir, source("same"))
    b = load(pdir, source("same"))
    assert a.module is not b.module and a.module.__name__ != b.module.__name__


@pytest.mark.parametrize("text, needle", [
    (source(api=2), "unsupported plugin API version 2"),
    (source(api="'1'"), "unsupported plugin API version '1'"),
    ("NAME = 'x'\nVERSION = '1'\ndef notify(e): pass\n", "missing PLUGIN_API"),
    (source(name="Bad Name"), "NAME must be a lower-case identifier"),
    ("PLUGIN_API = 1\nVERSION = '1'\ndef notify(e): pass\n", "NAME must be"),
    ("PLUGIN_API = 1\nNAME = 'x'\ndef notify(e): pass\n", "VERSION must be"),
    (source(body="X = 1\n"), "defines no hooks"),
    (source(body="async def filter_signal(signal):\n    return None\n"),
     "filter_signal must be a plain (not async) function"),
    (source(body="def check_order(order):\n    return None\n"),
     "check_order(order, account) has the wrong shape"),
    (source(body="def notify(a, b):\n    pass\n"), "notify(event) has the wrong shape"),
    (source(body="filter_signal = 3\n"), "filter_signal must be a function"),
    (source(body="def setup(s):\n    raise ValueError('no url')\ndef notify(e):\n    pass\n"),
     "setup failed: ValueError: no url"),
    (source(body="class Plugin:\n    def __init__(self):\n        pass\n"
                 "    def notify(self, e):\n        pass\n"), "Plugin(settings) has the wrong"),
    (source(body="def notify(e):\n    pass\ndef teardown(x):\n    pass\n"),
     "teardown() has the wrong shape"),
    ("PLUGIN_API = 1\nNAME = 'x'\nVERSION = '1'\ndef notify(e):\n  return (\n",
     "syntax error at line"),
    ("import no_such_module_anywhere\n", "import failed: ModuleNotFoundError"),
    ("raise RuntimeError('boom')\n", "import failed: RuntimeError: boom"),
])
def test_bad_plugins_are_rejected_with_a_reason(pdir, text, needle):
    before = set(sys.modules)
    with pytest.raises(PluginRejected) as err:
        load(pdir, text)
    assert needle in err.value.reason
    assert not {m for m in set(sys.modules) - before if m.startswith("qtraderd_plugin_")}


def test_rejection_names_the_plugin_when_it_got_that_far(pdir):
    with pytest.raises(PluginRejected) as err:
        load(pdir, source("named", api=7))
    assert err.value.name == "named"


@pytest.mark.parametrize("name, ok", [
    ("good.py", True), (".good.py.swp", False), ("good.py~", False), ("#good.py#", False),
    (".#good.py", False), ("_helper.py", False), ("good.py.tmp", False),
    ("good.py.part", False), ("README.md", False), ("good.pyc", False),
])
def test_only_plain_py_files_are_plugins(name, ok):
    assert is_plugin_file(name) is ok


def test_result_helpers_validate_their_arguments():
    assert keep().factor == 1.0 and veto("x").factor == 0.0 and scale(0.5).factor == 0.5
    for bad in (1.5, -0.1, True, "0.5", float("nan")):
        with pytest.raises(ValueError):
            scale(bad)  # never enlarges, never nonsense
    for code in ("", "has space", "x" * 65, "semi;colon"):
        with pytest.raises(ValueError):
            deny(code)
