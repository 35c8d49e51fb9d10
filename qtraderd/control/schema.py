"""The arguments every control command accepts, checked in one place before it runs.

Why here and not in each handler: a request's arguments travel on to actors and into the
store (a halt reason becomes a `risk_events` row and a log line; a symbol becomes a pause
that is checkpointed and re-applied after a restart). A value of the wrong type that gets
that far can fail far from the socket — a dict reason once made the store writer fail on
every resend until the daemon gave up. So nothing reaches a handler unless every argument
has the expected type, a finite value within its range, a bounded length and, for
symbols, names one the daemon trades. A refusal names the command, the argument and what
was expected; unknown argument names are refused too (a misspelt `limt=5` is not silently
ignored).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qtraderd.control.server import ControlError, Handler

MAX_TEXT = 200  # a halt reason: one line for the log, the risk event and `ctl status`
MAX_ROWS = 10_000  # `trades N`: the most rows one reply carries
_NAME = re.compile(r"[a-z0-9_]{1,32}")  # a model family
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")  # a model version: a file name


@dataclass(frozen=True)
class Arg:
    """One argument: its name, kind and bounds. Kinds: text, int, symbol, family, version."""

    name: str
    kind: str
    required: bool = False
    lo: int = 1
    hi: int = MAX_ROWS
    max_len: int = MAX_TEXT


SCHEMAS: dict[str, tuple[Arg, ...]] = {
    "status": (), "modules": (), "positions": (), "pnl": (), "models": (), "learning": (),
    "rl": (), "plugins": (), "reload": (), "resume": (), "flatten": (), "reconcile": (),
    "trades": (Arg("limit", "int", lo=1, hi=MAX_ROWS),),
    "halt": (Arg("reason", "text"),),
    "pause": (Arg("symbol", "symbol", required=True, max_len=32),),
    "resume-symbol": (Arg("symbol", "symbol", required=True, max_len=32),),
    "promote": (Arg("model", "family", required=True), Arg("version", "version",
                                                         required=True)),
    "rollback": (Arg("model", "family", required=True),),
    "retrain": (Arg("model", "family"),),
}


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__)


def _show(value: Any) -> str:
    """A value for an error message. Strings are echoed whole — only after their length
    was checked — never cut: the log masks secrets by their full text, and a cut one
    would slip through."""
    text = repr(value)
    return text if isinstance(value, str) or len(text) <= 60 else text[:57] + "..."


def _check_one(cmd: str, arg: Arg, value: Any, symbols: frozenset[str]) -> Any:
    where = f"{cmd}: argument {arg.name!r}"
    if arg.kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ControlError(f"{where} must be an integer, got {_type_name(value)}")
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise ControlError(f"{where} must be a whole finite number, got {_show(value)}")
        if not arg.lo <= value <= arg.hi:
            raise ControlError(f"{where} must be between {arg.lo} and {arg.hi}, "
                               f"got {_show(value)}")
        return int(value)
    if not isinstance(value, str):
        raise ControlError(f"{where} must be a string, got {_type_name(value)}")
    if len(value) > arg.max_len:
        raise ControlError(f"{where} is {len(value)} characters long (at most "
                           f"{arg.max_len})")
    if arg.kind == "text":
        if not value.isprintable():
            raise ControlError(f"{where} must be one line of printable text")
        return value.strip()
    if arg.kind == "symbol":
        symbol = value.strip().upper()
        if symbol not in symbols:
            known = ", ".join(sorted(symbols)) or "none"
            raise ControlError(f"{where}: unknown symbol {_show(value)} (this daemon "
                               f"trades {known})")
        return symbol
    pattern = _NAME if arg.kind == "family" else _VERSION
    if not pattern.fullmatch(value):
        what = ("a model family (lower-case letters, digits, _)" if arg.kind == "family"
                else "a model version (letters, digits, '.', '_', '-')")
        raise ControlError(f"{where} must be {what}, got {_show(value)}")
    return value


def check(cmd: str, args: Mapping[str, Any], symbols: Iterable[str]) -> dict[str, Any]:
    """`args` checked against `cmd`'s schema: the normalised arguments (symbols upper
    case, reasons stripped, whole numbers as int), or ControlError naming the bad one."""
    spec = SCHEMAS.get(cmd)
    if spec is None:
        raise ControlError(f"{cmd}: no argument schema (a bug: every command needs one)")
    known = {a.name for a in spec}
    extra = sorted(k for k in args if k not in known)
    if extra:
        takes = ", ".join(sorted(known)) if known else "no arguments"
        name = _show(extra[0]) if len(extra[0]) <= 32 else f"of {len(extra[0])} characters"
        raise ControlError(f"{cmd}: unknown argument {name} ({cmd} takes {takes})")
    syms = frozenset(symbols)
    out: dict[str, Any] = {}
    for arg in spec:
        if arg.name not in args or (args[arg.name] is None and not arg.required):
            if arg.required:
                raise ControlError(f"{cmd}: missing argument {arg.name!r}")
            continue
        out[arg.name] = _check_one(cmd, arg, args[arg.name], syms)
    return out


def validated(handlers: Mapping[str, Handler],
              symbols: Callable[[], Iterable[str]]) -> dict[str, Handler]:
    """Every handler behind `check`; a handler without a schema is a bug caught here, at
    start-up, not when an operator first calls it."""
    missing = sorted(set(handlers) - set(SCHEMAS))
    if missing:
        raise ValueError(f"control commands without an argument schema: {', '.join(missing)}")

    def wrap(cmd: str, handler: Handler) -> Handler:
        async def checked(args: dict[str, Any]) -> Any:
            return await handler(check(cmd, args, symbols()))

        return checked

    return {cmd: wrap(cmd, h) for cmd, h in handlers.items()}
