"""Actors are read only through their snapshots and changed only through commands.

An AST check over the code that sits around the actors (control, the daemon's progress and
status, reload, walk-forward and the other reporting modules): none of it may reach into
an actor's attributes. The daemon builds the actors, so it may hold them (wiring, the
supervisor's list) and ask the feed to `stop()` (the lifecycle signal of a graceful
shutdown); everything it shows comes from `snapshot(name)`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import qtraderd

ACTORS = {"feed", "execution", "broker", "monitor", "predictor", "learner", "sizer", "risk",
          "recorder", "actor"}
ALLOWED = {"stop"}  # Daemon.request_stop -> feed.stop()
ROOT = Path(qtraderd.__file__).parent
CHECKED = [*sorted((ROOT / "control").glob("*.py")), *sorted((ROOT / "reporting").glob("*.py")),
           ROOT / "runtime" / "daemon.py", ROOT / "runtime" / "reload.py"]
WIRING = {ROOT / "runtime" / "daemon.py"}  # may hold actor objects (not look inside them)


def _is_config(node: ast.expr) -> bool:
    """`cfg.feed`, `self.cfg.risk`, `plan.cfg.feed`: config sections share actor names."""
    return (isinstance(node, ast.Name) and node.id in ("cfg", "config", "new", "old")) or \
        (isinstance(node, ast.Attribute) and node.attr == "cfg")


def violations(source: str, *, wiring: bool = False) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and (
                _is_config(node.value) or (isinstance(node.value, ast.Attribute)
                                           and _is_config(node.value.value))):
            continue
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                node.value.attr in ACTORS and node.attr not in ALLOWED:
            out.append(f"line {node.lineno}: .{node.value.attr}.{node.attr}")
        elif not wiring and isinstance(node, ast.Attribute) and node.attr in ACTORS and \
                isinstance(node.ctx, ast.Load):
            out.append(f"line {node.lineno}: holds .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id == "getattr" and len(node.args) >= 2 and \
                isinstance(node.args[1], ast.Constant) and node.args[1].value in ACTORS:
            out.append(f"line {node.lineno}: getattr(..., {node.args[1].value!r})")
    return out


def test_checker_catches_the_old_reads():
    assert violations("n = sum(len(s.pending) for s in self.d.predictor._symbols.values())")
    assert violations("x = daemon.risk.state")
    assert violations("f = daemon.feed\nprint(f.bars)")  # an alias, outside the daemon
    assert violations("l = getattr(daemon, 'learner', None)")
    assert violations("for h in sup.handles.values():\n    h.actor.reconfigure(cfg)")
    assert not violations("self.feed.stop()\nactors = [self.feed]", wiring=True)
    assert not violations("daemon.snapshot('feed')['bars']")
    assert not violations("print(self.d.cfg.feed.source, cfg.risk.max_open_positions)")


def test_no_code_around_the_actors_reads_their_attributes():
    found = {str(p.relative_to(ROOT)): v for p in CHECKED
             if (v := violations(p.read_text(), wiring=p in WIRING))}
    assert found == {}
