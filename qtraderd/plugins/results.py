"""Checking what a chain hook returned, in the plugin's lane, before the host uses it.

A filter's `Verdict` or a rule's `RiskVerdict` is a plain dataclass the plugin can fill
with anything (`Verdict(factor='x')`, an object whose comparisons, `bool()` or `repr()`
raise or never return). Reading those fields runs plugin code, so it happens here, inside
the protected call (`Lane.call` with the hook's deadline): the host only ever sees plain
values — a float and a str — or a `BadResult`, counted as the plugin's error like any
exception it raised. Fields must have exactly the documented types (a `float` subclass
could override its comparisons).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtraderd.plugins.api import RiskVerdict, Verdict
from qtraderd.plugins.isolation import safe_text


class BadResult(Exception):
    """A hook returned something other than its documented answer (message says what)."""


def checked(check: Callable[[Any], Any], fn: Callable[..., Any], *args: Any) -> Any:
    """`check(fn(*args))`: run in the lane, so both are under the hook's deadline."""
    return check(fn(*args))


def filter_result(out: Any) -> tuple[float, str] | None:
    """filter_signal's answer -> (factor in [0, 1], reason), or None to keep."""
    if out is None:
        return None
    if isinstance(out, Verdict):
        factor, reason = out.factor, out.reason
        if (type(factor) in (int, float) and 0.0 <= factor <= 1.0
                and type(reason) is str):
            return float(factor), reason
    raise BadResult(f"returned {safe_text(out, use_repr=True, limit=200)}; expected keep(), "
                    "veto(reason), scale(factor) or None")


def risk_result(out: Any) -> str | None:
    """check_order's answer -> None to allow, else the denial's code (may be "")."""
    if out is None:
        return None
    if isinstance(out, RiskVerdict):
        allowed, code = out.allowed, out.code
        if type(allowed) is bool and type(code) is str:
            return None if allowed else code
    raise BadResult(f"returned {safe_text(out, use_repr=True, limit=200)}; expected allow(), "
                    "deny(code) or None")
