"""One-for-one supervision of the actors, in the Erlang/OTP sense.

An actor that raises is restarted alone after a backoff; its channels stay open, its
in-memory state is kept, and the step it failed on has already been passed downstream
untouched (marked `degraded`), so the lockstep chain never stalls on a lost message.
More than `intensity` restarts within `period_s` seconds means something is really wrong:
the supervisor stops every actor and reports an escalation, the daemon exits non-zero,
and systemd (the root supervisor) restarts the process.

Rules from DESIGN.md: catch `Exception`, never `BaseException` (trio.Cancelled must
propagate); exception groups from an actor's own nursery are Exceptions too.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import trio

from qtraderd.core.checkpoint import pack
from qtraderd.core.messages import ActorState, Command, Step, replace

if TYPE_CHECKING:
    from qtraderd.core.config import Config

log = logging.getLogger("qtraderd.runtime.supervisor")


EMPTY: Mapping[str, Any] = MappingProxyType({})


class Actor:
    """Base class: an actor has a name, a `run()` loop and a published snapshot.

    Nothing outside an actor reads its attributes: control, the daemon's progress line,
    reload and walk-forward read `snapshot()` (through `Supervisor.snapshot(name)`) and
    change state only by commands on the actor's channels. tests/runtime/test_boundaries.py
    enforces it.
    """

    name = "actor"

    def __init__(self) -> None:
        self.processed = 0  # messages handled: the liveness signal for status and watchdog
        # Trio time until which this actor may hold up the chain on purpose (a learner job
        # that holds the replay clock); the watchdog does not call that a wedge.
        self.busy_until: float | None = None
        self._revision = 0  # bumped by changes that are not steps (commands, jobs)
        self._snap: Mapping[str, Any] = EMPTY
        self._snap_key: tuple[int, int] = (-1, -1)

    async def run(self) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """Small scalar summary: `ctl status` actors, `ctl modules`, the watchdog."""
        return {}

    def export_state(self) -> Any:
        """What a restart needs to continue exactly where this actor was (see
        qtraderd.core.checkpoint); None: the actor keeps nothing worth restoring."""
        return None

    def restore_state(self, state: Any) -> None:
        """Adopt state exported by `export_state` (before the first step)."""

    def with_state(self, step: Step) -> Step:
        """`step` with this actor's state appended, if it is a checkpoint step."""
        if not step.checkpoint:
            return step
        state = self.export_state()
        if state is None:
            return step
        return replace(step, state=(*step.state, ActorState(self.name, pack(state))))

    def publish(self) -> dict[str, Any]:
        """Everything readers may see of this actor (defaults to `status()`); built from
        the actor's own state, as fresh containers a reader cannot use to reach back in."""
        return self.status()

    def changed(self) -> None:
        """State changed outside a step (a command applied, a job finished)."""
        self._revision += 1

    def snapshot(self) -> Mapping[str, Any]:
        """The published, read-only snapshot as of the last step or command.

        Built on demand and cached per (steps processed, revision): a replay runs ~10k
        steps/s and a snapshot costs a few microseconds per actor, so publishing eagerly
        after every step would cost more than everything else the chain does per step,
        for readers that look once a second. Actors hand steps on synchronously between
        checkpoints, so whenever another task runs, every actor is between two steps and
        the snapshot is consistent.
        """
        key = (self.processed, self._revision)
        if key != self._snap_key:
            self._snap = MappingProxyType(self.publish())
            self._snap_key = key
        return self._snap

    def inboxes(self) -> list[trio.MemoryReceiveChannel[Any]]:
        """The channels this actor reads (every actor keeps them as attributes)."""
        return [v for v in vars(self).values() if isinstance(v, trio.MemoryReceiveChannel)]

    def backlog(self) -> int:
        """Messages waiting that this actor could take now: buffered, or blocked senders.

        The watchdog's notion of work (qtraderd.service): an actor with a backlog whose
        `processed` does not move is wedged; an idle one with nothing waiting is healthy.
        In the lockstep chain a step held forever by one actor shows up as the next bar
        waiting at execution, whose count then stops.
        """
        total = 0
        for ch in self.inboxes():
            st = ch.statistics()
            total += st.current_buffer_used + st.tasks_waiting_send
        return total

    def reconfigure(self, cfg: Config) -> None:
        """Adopt the live settings of a reloaded config (see config.LIVE_KEYS).

        Called by the daemon between two event-loop checkpoints, so no step is ever
        handled half with the old and half with the new settings. Only keys classified
        as live differ from what the actor was built with; the rest stay as they were.
        """


class StepActor(Actor):
    """An actor with one inbox and one outbox of Steps: `handle` each and pass it on."""

    def __init__(self, inbox: trio.MemoryReceiveChannel[Step],
                 outbox: trio.MemorySendChannel[Step]) -> None:
        super().__init__()
        self.inbox = inbox
        self.outbox = outbox

    def handle(self, step: Step) -> Step:
        raise NotImplementedError

    async def run(self) -> None:
        async for step in self.inbox:
            if step.seal:  # nothing to handle: only the state to hand in
                await pass_on(self.outbox, self.with_state(step))
                continue
            try:
                out = self.handle(step)
            except Exception:
                await self.outbox.send(self.with_state(degrade(step, self.name)))
                raise
            self.processed += 1
            await pass_on(self.outbox, self.with_state(out))
        await self.outbox.aclose()


async def pass_on(outbox: trio.MemorySendChannel[Any], msg: Any) -> None:
    """Send without the extra scheduler round trip when the channel has room.

    `MemorySendChannel.send` always yields once even when it need not wait; in a chain
    where every actor's next `receive` is a checkpoint anyway, that yield is pure cost
    (about a quarter of the per-step overhead at full replay speed). A full channel still
    blocks, so backpressure is unchanged.
    """
    try:
        outbox.send_nowait(msg)
    except trio.WouldBlock:
        await outbox.send(msg)


def offer(outbox: trio.MemorySendChannel[Any], msg: Any) -> bool:
    """Send if there is room now; False when the channel is full or gone. For side records
    (events, RL updates, learner rows) that must never hold up the bar chain."""
    try:
        outbox.send_nowait(msg)
    except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
        return False
    return True


def answer(cmd: Command, result: Any) -> None:
    """Reply to a control command; a requester that gave up is not an error."""
    if cmd.reply is None:
        return
    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError,
                             trio.ClosedResourceError):
        cmd.reply.send_nowait(result)


def describe(exc: BaseException) -> str:
    """`Type: message` of the error that actually happened.

    Trio wraps an error raised inside an actor's own nursery in an ExceptionGroup, whose
    message ("Exceptions from Trio nursery (1 sub-exception)") says nothing; the leaves
    do. Several leaves are listed, at most three.
    """
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(exc)
    text = "; ".join(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                     for e in leaves[:3])
    more = len(leaves) - 3
    return text + (f" (and {more} more)" if more > 0 else "") if leaves else repr(exc)


def degrade(step: Step, actor: str) -> Step:
    return replace(step, degraded=(*step.degraded, actor))


@dataclass
class ActorHandle:
    actor: Actor
    state: str = "starting"  # starting | running | restarting | stopped | failed
    restarts: int = 0
    last_error: str = ""
    recent: deque[float] = field(default_factory=deque)

    def summary(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "restarts": self.restarts,
            "processed": self.actor.processed,
            "last_error": self.last_error,
            **self.actor.status(),
        }


class Escalation(Exception):
    def __init__(self, actor: str, restarts: int, period_s: float, error: str) -> None:
        super().__init__(
            f"actor {actor} restarted {restarts} times within {period_s:g} s "
            f"(last error: {error}); giving up"
        )
        self.actor = actor


EventSink = Callable[[str, str, str, int], None]  # (actor, event, detail, restarts)


class Supervisor:
    def __init__(self, *, intensity: int, period_s: float, backoff_s: float,
                 backoff_max_s: float, on_event: EventSink | None = None) -> None:
        self.intensity = intensity
        self.period_s = period_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.on_event = on_event or (lambda *_: None)
        self.handles: dict[str, ActorHandle] = {}
        self.escalation: Escalation | None = None
        self._scope: trio.CancelScope | None = None
        # Set once every actor's task has entered its run(): the daemon is "up" (READY=1).
        self.started = trio.Event()
        self._entered = 0

    async def run(self, actors: list[Actor]) -> None:
        """Run every actor until all have finished, or until an escalation stops them."""
        for actor in actors:
            self.handles[actor.name] = ActorHandle(actor)
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            for handle in self.handles.values():
                nursery.start_soon(self._supervise, handle, name=f"actor:{handle.actor.name}")

    def cancel(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def _supervise(self, handle: ActorHandle) -> None:
        name = handle.actor.name
        self._entered += 1
        if self._entered == len(self.handles):
            self.started.set()
        while True:
            handle.state = "running"
            try:
                await handle.actor.run()
            except Exception as exc:
                handle.restarts += 1
                handle.last_error = describe(exc)
                now = trio.current_time()
                handle.recent.append(now)
                while handle.recent and handle.recent[0] < now - self.period_s:
                    handle.recent.popleft()
                tb = "".join(traceback.format_exception(exc)).rstrip()
                if len(handle.recent) > self.intensity:
                    handle.state = "failed"
                    self.escalation = Escalation(name, len(handle.recent), self.period_s,
                                                 handle.last_error)
                    log.error("actor %s failed: %s; escalating (restarts %d within %g s)\n%s",
                              name, handle.last_error, len(handle.recent), self.period_s, tb)
                    self.on_event(name, "escalated", handle.last_error, handle.restarts)
                    self.cancel()
                    return
                delay = min(self.backoff_max_s,
                            self.backoff_s * 2 ** (len(handle.recent) - 1))
                handle.state = "restarting"
                log.warning("actor restarted: %s after %s (restart %d, backoff %.2f s)\n%s",
                            name, handle.last_error, handle.restarts, delay, tb)
                self.on_event(name, "restarted", handle.last_error, handle.restarts)
                await trio.sleep(delay)
                continue
            handle.state = "stopped"
            log.debug("actor %s finished", name)
            return

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: h.summary() for name, h in self.handles.items()}

    def snapshot(self, name: str) -> Mapping[str, Any]:
        """Actor `name`'s published snapshot; empty when there is no such actor."""
        handle = self.handles.get(name)
        return handle.actor.snapshot() if handle is not None else EMPTY

    def reconfigure(self, cfg: Config) -> None:
        """Every actor adopts the live keys of `cfg` (runtime/reload.py), in one go."""
        for handle in self.handles.values():
            handle.actor.reconfigure(cfg)
