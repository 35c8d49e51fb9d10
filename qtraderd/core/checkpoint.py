"""Crash-only state: how an actor's state becomes bytes in a checkpoint, and back.

A checkpoint step (chosen by the execution actor: every `store.checkpoint_steps`, whenever no
next bar is waiting — every live bar — and once at the end) collects the state of every
actor after it has handled that step. The recorder commits the rows of all steps up to a
checkpoint together with these states in one transaction, so the store always holds a
consistent cut: a restart restores the states and continues with the next bar, and a
replay resumed after `kill -9` gives exactly the orders, fills and equity of one that was
never interrupted (tests/runtime/test_crash.py kills it 20 times to prove it).

The bytes are a pickle of plain Python state (dicts, dataclasses, msgspec structs, numpy
arrays, `random.Random`), stamped with FORMAT and the code version: pickled state is only
trusted from the same code. A checkpoint written by another version is refused at start
with the reason and the way out (`qtraderd run --fresh`), never half-loaded.
"""

from __future__ import annotations

import pickle
from typing import Any

from qtraderd import __version__

FORMAT = 1
EVERY_STEPS = 256  # default of store.checkpoint_steps: most steps between two checkpoints


class StateError(RuntimeError):
    """A stored checkpoint cannot be used by this code; the message says why."""


def pack(state: Any) -> bytes:
    return pickle.dumps((FORMAT, __version__, state), protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: bytes, actor: str) -> Any:
    try:
        fmt, version, state = pickle.loads(blob)
    except Exception as exc:  # a truncated or foreign blob: say which actor's
        raise StateError(f"the stored state of actor {actor!r} cannot be read: {exc}") from exc
    if fmt != FORMAT or version != __version__:
        raise StateError(f"the stored state of actor {actor!r} was written by qtraderd "
                         f"{version} (state format {fmt}); this is {__version__} (format "
                         f"{FORMAT})")
    return state


def take(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The named attributes of an actor, for `export_state`."""
    return {n: getattr(obj, n) for n in names}


def put(obj: Any, state: dict[str, Any], names: tuple[str, ...]) -> None:
    """Set the named attributes back, for `restore_state`; a missing name is an error."""
    missing = [n for n in names if n not in state]
    if missing:
        raise StateError(f"stored state of {type(obj).__name__} lacks {', '.join(missing)}")
    for n in names:
        setattr(obj, n, state[n])
