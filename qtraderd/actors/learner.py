"""Learner actor: trade -> outcome -> retrain -> gate -> swap, unattended.

It sits in the chain right after the predictor, so every step brings it the outcomes of
earlier predictions matched with each model (`Step.scored`), the bar's features and the
global regime — the same information in every replay, in the same order.

* Every `eval_every_hours` of clock time it evaluates the triggers (learn/triggers.py),
  records the evaluation and its plan, and queues one job per family to retrain.
* Jobs run one at a time in a separate process (`python -m qtraderd.training job`, niced,
  with a timeout) — the only place torch/xgboost/lightgbm are imported. In replay the job
  holds the clock (`learning.replay_holds_clock`): this actor keeps the step until the job
  is done, so the new model arrives at the same bar in every run. Live, bars keep flowing
  and the result is applied whenever it arrives. A failed job is logged, recorded and
  retried with backoff; the current model keeps serving.
* The job trains the challenger and scores it and the champion on the same most recent
  held-out window; learn/gate.py decides deploy / canary / keep / reject.
* Deploy: registry + atomic `champion` pointer + `set_models` to the predictor, which
  swaps between two bars; the previous champion stays in shadow for `rollback_outcomes`
  outcomes and the new one is rolled back if it does worse by `rollback_margin_pct`.
* Canary: runs in shadow until `canary_outcomes` live outcomes, then promoted if it still
  beats the champion on the same bars, retired if not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from qtraderd.actors.learner_control import Job, LearnerControl
from qtraderd.core.clock import Clock, iso, wall_iso
from qtraderd.core.config import Config, per_quote
from qtraderd.core.instruments import quote_asset
from qtraderd.core.messages import Command, Record, Scored, Step
from qtraderd.learning import admission, gate
from qtraderd.learning.registry import RegistryView
from qtraderd.learning.triggers import (  # retrain_banner: the daemon's start-up line
    HOUR_MS,
    Trigger,
    TriggerState,
    plan,
    retrain_banner,
)
from qtraderd.learning.watch import Watch
from qtraderd.models.artifacts import (
    ArtifactError,
    ModelMeta,
    families,
    list_versions,
)
from qtraderd.runtime.supervisor import StepActor, pass_on

log = logging.getLogger("qtraderd.learner")

DAY_MS = 24 * HOUR_MS
MAX_ATTEMPTS = 3


class LearnerActor(LearnerControl, StepActor):
    name = "learner"

    def __init__(self, cfg: Config, config_path: Path | None, state_dir: Path,
                 models_dir: Path, clock: Clock, registry: RegistryView,
                 inbox: trio.MemoryReceiveChannel[Step], outbox: trio.MemorySendChannel[Step],
                 predictor: trio.MemorySendChannel[Command],
                 records: trio.MemorySendChannel[Record],
                 commands: trio.MemoryReceiveChannel[Command], hold_clock: bool,
                 run_id: int = 0, data_start: int | None = None,
                 events: Callable[[str, int, dict[str, Any]], None] | None = None) -> None:
        """`events(kind, ts, data)`: told about deploys and rollbacks (the plugin host's
        notifier queue; it never blocks)."""
        super().__init__(inbox, outbox)
        self.events = events
        self.cfg = cfg
        self.lc = cfg.learning
        self.config_path = config_path
        self.state_dir = Path(state_dir)
        self.models_dir = Path(models_dir)
        self.clock = clock
        self.registry = registry
        self.predictor = predictor
        self.records = records
        self.commands = commands
        self.hold_clock = hold_clock
        self.run_id = run_id
        self.families = [f for f in self.lc.families]
        self.triggers = TriggerState(self.lc)
        self.queue: list[Job] = []
        self.current: Job | None = None
        self.watches: dict[str, Watch] = {}
        self.shadow: dict[str, list[str]] = {}  # family -> versions in shadow
        self.first_ts: int | None = None
        self.data_start = data_start  # first stored bar: how much history jobs can use
        self.next_eval: int | None = None
        self.last_eval: dict[str, Any] = {}
        self.evaluations = 0
        self.jobs_done = 0
        self.jobs_failed = 0
        self.decisions: list[dict[str, Any]] = []
        self._nursery: trio.Nursery | None = None
        # model sets for the predictor, in order (live: sent by `_pusher`, off the chain)
        self._pushes_tx, self._pushes_rx = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._seen_files: set[tuple[str, str]] = set(registry.entries)
        for family in self.families:
            champ = registry.champion(family)
            if champ:
                self._seen_files.add((family, champ))

    # -- the actor -------------------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._command_loop)
            nursery.start_soon(self._pusher)
            try:
                async for step in self.inbox:
                    if step.seal:
                        await pass_on(self.outbox, self.with_state(step))
                        continue
                    try:
                        await self.on_step(step)
                    except Exception:
                        await self.outbox.send(self.with_state(step))
                        raise
                    self.processed += 1
                    await pass_on(self.outbox, self.with_state(step))
                await self.outbox.aclose()
            finally:
                nursery.cancel_scope.cancel()

    def reconfigure(self, cfg: Config) -> None:
        """Modes, trigger and gate thresholds, windows; `families` and `enabled` need a
        restart. Jobs read the daemon's snapshot of the config in force, not the file."""
        self.cfg = cfg
        self.lc = cfg.learning
        self.triggers.cfg = cfg.learning

    def handle(self, step: Step) -> Step:  # pragma: no cover - run() is overridden
        raise NotImplementedError

    async def on_step(self, step: Step) -> None:
        ts = step.close_ts
        if self.first_ts is None:
            self.first_ts = step.ts
            self.next_eval = ts + int(self.lc.eval_every_hours * HOUR_MS)
            self._init_deploy_times()
        for s in step.scored:
            self.triggers.observe_scored(s)
            for w in self.watches.values():
                w.add(s)
        for i, sample in enumerate(step.samples):
            if (step.seq + i) % 4 == 0:  # a quarter of the rows is plenty for drift
                self.triggers.observe_features(sample.features, ts)
        self.triggers.observe_regime(ts, step.global_regime)
        await self._check_watches(ts)
        assert self.next_eval is not None
        if ts >= self.next_eval:
            while self.next_eval <= ts:
                self.next_eval += int(self.lc.eval_every_hours * HOUR_MS)
            await self.evaluate(ts)
        await self._maybe_start_job(ts)

    def _init_deploy_times(self) -> None:
        for family in self.families:
            champ = self.registry.champion(family)
            entry = self.registry.entries.get((family, champ)) if champ else None
            data_end = entry.row.get("data_end") if entry else None
            if data_end:
                self.triggers.last_deploy[family] = int(data_end)

    # -- evaluation --------------------------------------------------------------------
    def _data_ready(self, ts: int) -> bool:
        """Is there a full training + evaluation window of history before `ts`?"""
        need = (self.lc.train_window_days + self.lc.eval_window_days) * DAY_MS
        start = self.data_start if self.data_start is not None else self.first_ts
        return start is not None and ts - start >= need

    async def evaluate(self, ts: int, manual: list[Trigger] | None = None) -> None:
        triggers, detail = self.triggers.evaluate(ts, self.families)
        triggers = (manual or []) + triggers
        for family in self.families:
            if self.registry.champion(family) is None and not any(
                    t.family == family for t in triggers):
                triggers.append(Trigger("initial", family, "no champion yet"))
        await self._adopt_pointers(ts)
        new_files = self._new_files()
        ready = self._data_ready(ts)
        busy = {j.family for j in self.queue} | ({self.current.family} if self.current else set())
        todo = [p for p in plan(triggers, self.families, self.triggers.resting(ts))
                if p["family"] not in busy] if ready else []
        self.evaluations += 1
        self.last_eval = {"clock": iso(ts), "triggers": [f"{t.kind}:{t.family or '*'}"
                                                         for t in triggers],
                          "plan": todo, "data_ready": ready, "new_files": new_files}
        cur_id = self.evaluations
        await self._record(Record("learner_evaluations", {
            "at": wall_iso(), "clock_ts": ts,
            "triggers": json.dumps([t.__dict__ for t in triggers]),
            "plan": json.dumps(todo), "detail": json.dumps(detail, default=str)}))
        if todo or new_files:
            log.info("retrain evaluation at %s: triggers %s; plan %s%s", iso(ts),
                     ", ".join(self.last_eval["triggers"]) or "none",
                     ", ".join(p["family"] for p in todo) or "nothing",
                     "" if ready else " (waiting for enough data)")
        for p in todo:
            self.queue.append(Job(p["family"], p["reasons"], p["priority"], cur_id))
        for family, version in new_files:
            self.queue.append(Job(family, [f"new_file: {version} dropped in {self.models_dir}"],
                                  5, cur_id, version=version))
        self.queue.sort(key=lambda j: (j.priority, j.not_before))
        if todo:
            self.triggers.note_retrained(ts)

    def _new_files(self) -> list[tuple[str, str]]:
        """Complete artifacts of our families the registry has never seen.

        Families outside `learning.families` are not ours to judge (or train); a version
        a champion pointer names is the operator's choice, adopted by `_adopt_pointers`.
        """
        out = []
        for family in self.families:
            pointer = admission.pointer(self.registry, family)
            for version in list_versions(self.models_dir, family):
                if (family, version) not in self._seen_files and version != pointer:
                    self._seen_files.add((family, version))
                    out.append((family, version))
        return out

    async def _adopt_pointers(self, ts: int) -> None:
        """A champion pointer switched by hand serves at once (the predictor follows the
        pointers); the registry follows it too (learning/admission.py)."""
        for family in self.families:
            recs, was, now = admission.adopt_pointer(self.registry, family, ts)
            if now is None:
                continue
            await self._record(*recs)
            self._seen_files.add((family, now))
            self.triggers.note_deploy(family, ts)
            log.warning("registry repaired: %s champion %s -> %s (the pointer file wins: "
                        "switched by hand)", family, was or "none", now)

    # -- jobs --------------------------------------------------------------------------
    async def _maybe_start_job(self, ts: int) -> None:
        if self.current is not None or not self.queue:
            return
        ready = [j for j in self.queue if j.not_before <= ts]
        if not ready:
            return
        job = ready[0]
        self.queue.remove(job)
        if job.version is not None and await self._refuse_unverified(job, ts):
            return
        self.current = job
        self.changed()
        if self.hold_clock:
            # The whole chain waits for this job by design: tell the watchdog how long.
            self.busy_until = trio.current_time() + self.lc.job_timeout_s + 180.0
            try:
                await self._run_job(job, ts)
            finally:
                self.busy_until = None
        else:
            assert self._nursery is not None
            self._nursery.start_soon(self._run_job, job, ts)

    def _job_cmd(self, job: Job, ts: int) -> list[str]:
        champ = self.registry.champion(job.family)
        cmd = [sys.executable, "-m", "qtraderd.training", "job", "--family", job.family,
               "--state-dir", str(self.state_dir), "--models-dir", str(self.models_dir),
               "--now", str(ts), "--notional-fraction", str(self._notional_fraction())]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        if champ and champ != job.version:
            cmd += ["--champion", champ]
        if job.version:
            cmd += ["--evaluate", job.version]
        return cmd

    def _notional_fraction(self) -> float:
        syms = self.cfg.feed.symbols
        quote = quote_asset(syms[0]) if syms else "BTC"
        bal = per_quote(self.cfg.account.balances, quote, 0.0)
        margin = per_quote(self.cfg.sizing.margin, quote, 0.0)
        return margin * self.cfg.sizing.leverage / bal if bal > 0 else 0.05

    async def _run_job(self, job: Job, ts: int) -> None:
        started = wall_iso()
        t0 = trio.current_time()
        log.info("retrain started: %s (attempt %d; %s)", job.family, job.attempt,
                 "; ".join(job.reasons))
        status, result, detail = "failed", None, ""
        # Jobs compete with the event loop for the two cores: OpenMP threads that spin
        # while waiting steal cycles from bars; passive waiting gives them back.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        try:
            with trio.fail_after(self.lc.job_timeout_s):
                proc = await trio.run_process(
                    self._job_cmd(job, ts), capture_stdout=True, check=False,
                    preexec_fn=_nice, env=env,  # stderr: the job's progress goes to our log
                    deliver_cancel=_kill)  # a cancelled job has nothing worth saving
            lines = proc.stdout.decode(errors="replace").strip().splitlines()
            result = json.loads(lines[-1]) if lines else None
            if proc.returncode == 0 and result and result.get("ok"):
                status = "trained"
            else:
                detail = (result or {}).get("error") or f"exit code {proc.returncode}"
        except trio.TooSlowError:
            detail = f"timed out after {self.lc.job_timeout_s:.0f} s"
        except (OSError, ValueError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        wall = trio.current_time() - t0
        decision: dict[str, Any] = {}
        if status == "trained" and result is not None:
            self.jobs_done += 1
            self.triggers.note_job_done(job.family, self.clock.now_ms())
            try:
                decision = await self._decide(job, result, self.clock.now_ms())
                status = decision["action"]
            except (ArtifactError, KeyError, ValueError) as exc:
                status, detail = "failed", f"could not apply the result: {exc}"
        if status == "failed":
            self.jobs_failed += 1
            log.error("retrain failed: %s (attempt %d): %s; the current model keeps serving",
                      job.family, job.attempt, detail)
            if job.attempt < MAX_ATTEMPTS:
                backoff = self.lc.retry_backoff_s * 2 ** (job.attempt - 1)
                self.queue.append(Job(job.family, job.reasons, job.priority,
                                      job.evaluation_id, job.attempt + 1,
                                      self.clock.now_ms() + int(backoff * 1000), job.version))
        await self._record(Record("retrain_jobs", {
            "evaluation_id": job.evaluation_id, "family": job.family,
            "reason": "; ".join(job.reasons), "priority": job.priority,
            "attempt": job.attempt, "started_at": started, "clock_ts": ts,
            "finished_at": wall_iso(), "wall_s": round(wall, 3), "status": status,
            "version": (result or {}).get("version"),
            "decision": json.dumps(decision, default=str) if decision else None,
            "detail": detail or decision.get("reason", "")}))
        self.current = None
        self.changed()

    # -- what the gate refuses (learning/admission.py) ---------------------------------
    async def _refuse_unverified(self, job: Job, ts: int) -> bool:
        """Refuse a dropped-in artifact before any job scores it. True when refused."""
        assert job.version is not None
        meta, reason = admission.read_meta(self.registry, job.family, job.version)
        if meta is not None:
            reason = admission.unverified(meta, self.registry, self.cfg, ts) or ""
        if not reason:
            return False
        decision = await self._refuse(job.family, job.version, meta, reason, ts)
        await self._record(Record("retrain_jobs", {
            "evaluation_id": job.evaluation_id, "family": job.family,
            "reason": "; ".join(job.reasons), "priority": job.priority,
            "attempt": job.attempt, "started_at": wall_iso(), "clock_ts": ts,
            "finished_at": wall_iso(), "wall_s": 0.0, "status": "refused",
            "version": job.version, "decision": json.dumps(decision),
            "detail": decision["reason"]}))
        return True

    async def _refuse(self, family: str, version: str, meta: ModelMeta | None, reason: str,
                      ts: int, action: str = "refused") -> dict[str, Any]:
        """A refusal or a leakage alarm: rejected in the registry with the reason, one
        log line (stable wording), never served, never a canary."""
        reason = admission.refusal_reason(reason)
        if action == "alarm":
            log.error("leakage alarm: %s %s %s", family, version,
                      reason.removeprefix("leakage alarm: "))
        else:
            log.warning("gate refused: %s %s: %s", family, version,
                        reason.removeprefix("refused: "))
        self._seen_files.add((family, version))
        await self._record(*admission.refusal_records(self.registry, family, version, meta,
                                                      reason, action, ts))
        out = {"family": family, "version": version, "action": action, "applied": action,
               "reason": reason, "clock": iso(ts)}
        self.decisions = [*self.decisions, out][-50:]
        return out

    async def _decide(self, job: Job, result: dict[str, Any], ts: int) -> dict[str, Any]:
        family, version = job.family, result["version"]
        meta = ModelMeta.from_json(Path(result["meta_path"]).read_text())
        g = result.get("gate") or {}
        refused = g.get("refused")
        if refused is None and not result.get("evaluated_only"):
            refused = admission.lineage_mismatch(meta, result.get("lineage"))
        elif refused is None:  # re-checked here, whatever the job said
            refused = admission.unverified(meta, self.registry, self.cfg, ts)
        if refused is not None:
            return await self._refuse(family, version, meta, refused, ts)
        challenger = gate.GateScores(**g["challenger"])
        cmp = gate.Comparison(**g["comparison"]) if g.get("comparison") else None
        has_champion = self.registry.champion(family) is not None
        d = gate.decide(cmp if has_champion else None, challenger, self.lc)
        action, reason = d.action, d.reason
        if action == "alarm":
            return await self._refuse(family, version, meta, reason, ts, action="alarm")
        meta_metrics = {**meta.metrics, "gate_decision": action, "gate_reason": reason}
        meta = ModelMeta(**{**meta.__dict__, "metrics": meta_metrics})
        if not self.registry.knows(family, version):
            await self._record(*self.registry.register(meta, Path(result["path"]), "candidate",
                                                 "; ".join(job.reasons), ts))
        self._seen_files.add((family, version))
        applied = action
        if action in ("deploy", "canary") and self.lc.mode == "ADVISORY":
            applied = "advised-" + action
        elif action == "deploy" and not self.lc.auto_deploy:
            applied = "awaiting-promote"
        log.info("gate decision: %s %s -> %s (%s)%s", family, version, action, reason,
                 "" if applied == action else f"; {applied}")
        if applied == "deploy":
            await self.deploy(family, version, f"gate: {reason}", ts)
        elif applied == "canary":
            await self._record(*self.registry.set_status(family, version, "canary", reason, ts))
            champ = self.registry.champion(family)
            if champ:
                self.watches[f"canary:{family}"] = Watch("canary", family, version, champ, ts)
            self.shadow.setdefault(family, []).append(version)
            await self._push_models()
        elif applied in ("keep", "reject"):
            await self._record(*self.registry.set_status(
                family, version, "rejected" if applied == "reject" else "retired", reason, ts))
        out = {"family": family, "version": version, "action": action, "applied": applied,
               "reason": reason, "clock": iso(ts)}
        self.decisions = [*self.decisions, out][-50:]
        return out

    # -- deploy, canary, rollback --------------------------------------------------------
    async def deploy(self, family: str, version: str, reason: str, ts: int,
                     watch: bool = True) -> None:
        previous = self.registry.champion(family)
        if previous and previous != version:  # served from a pointer only: recorded, so
            await self._record(*admission.file_records(  # `rollback` can go back to it
                self.registry, family, previous, "champion", "the champion pointer named it",
                ts))
        await self._record(*self.registry.set_status(family, version, "champion", reason, ts))
        self.triggers.note_deploy(family, ts)
        self.shadow[family] = [v for v in self.shadow.get(family, []) if v != version]
        self.watches.pop(f"canary:{family}", None)
        if previous and previous != version and watch:
            self.shadow[family].append(previous)
            self.watches[f"rollback:{family}"] = Watch("rollback", family, version, previous,
                                                       ts)
        await self._push_models()
        log.info("model deployed: %s %s (was %s): %s", family, version, previous or "none",
                 reason)
        if self.events is not None:
            self.events("model_deployed", ts, {"family": family, "version": version,
                                               "previous": previous or "", "reason": reason})

    async def _check_watches(self, ts: int) -> None:
        for key, w in list(self.watches.items()):
            need = self.lc.canary_outcomes if w.kind == "canary" else self.lc.rollback_outcomes
            if w.n_complete < need:
                continue
            pairs = w.complete()
            del self.watches[key]
            subject_v, other_v = self._live_values(pairs)
            change = 100.0 * (subject_v / other_v - 1.0) if other_v > 0 else 0.0
            fam = w.family
            self.shadow[fam] = [v for v in self.shadow.get(fam, []) if v != w.other
                                and v != w.subject]
            if w.kind == "canary":
                if change >= self.lc.canary_threshold_pct:
                    await self.deploy(fam, w.subject, f"canary won live: {change:+.2f} % over "
                                      f"{len(pairs)} outcomes", ts)
                else:
                    await self._record(*self.registry.set_status(
                        fam, w.subject, "retired", f"canary lost live: {change:+.2f} %", ts))
                    log.info("canary retired: %s %s (%+.2f %% over %d outcomes)", fam,
                             w.subject, change, len(pairs))
                    await self._push_models()
            elif change < -self.lc.rollback_margin_pct:
                await self.rollback(fam, f"automatic: {change:+.2f} % vs the previous "
                                    f"champion over its first {len(pairs)} outcomes", ts,
                                    to=w.other)
            else:
                log.info("rollback guard passed: %s %s (%+.2f %% vs %s over %d outcomes)",
                         fam, w.subject, change, w.other, len(pairs))
                await self._push_models()

    def _live_values(self, pairs: list[tuple[Scored, Scored]]) -> tuple[float, float]:
        w = self._notional_fraction()
        values = []
        for side in (0, 1):
            rows = [p[side] for p in pairs]
            r = gate.scored_returns(rows, self.cfg)
            values.append(gate.equity_value(r, w))
        return values[0], values[1]

    async def rollback(self, family: str, reason: str, ts: int, to: str | None = None) -> str:
        current = self.registry.champion(family)
        if to is None:
            to = self._previous_champion(family, current)
        if to is None:
            raise ValueError(f"{family} has no previous champion to roll back to")
        self.watches.pop(f"rollback:{family}", None)
        if current:
            await self._record(*self.registry.set_status(family, current, "retired",
                                                   f"rolled back: {reason}", ts))
        await self._record(*self.registry.set_status(family, to, "champion",
                                               f"rollback: {reason}", ts))
        self.shadow[family] = [v for v in self.shadow.get(family, []) if v not in (to,
                                                                                   current)]
        await self._push_models()
        log.warning("model rolled back: %s %s -> %s (%s)", family, current, to, reason)
        if self.events is not None:
            self.events("model_rolled_back", ts, {"family": family, "from": current or "",
                                                  "to": to, "reason": reason})
        return to

    def _previous_champion(self, family: str, current: str | None) -> str | None:
        """The rollback guard's previous champion, else the last other champion on
        record (deploys, promotes and rollbacks all write the champion history)."""
        for w in self.watches.values():
            if w.kind == "rollback" and w.family == family:
                return w.other
        return self.registry.previous_champion(family, current)

    async def _push_models(self) -> None:
        """Tell the predictor what to serve and shadow.

        In a replay that holds the clock this waits until the predictor has loaded and
        staged the set, so the swap lands at the same bar every run. Otherwise it only
        queues the request for `_pusher` and returns: the step in hand moves on while the
        predictor loads the files in a worker thread and swaps them in between two later
        steps; no bar waits on a deploy.
        """
        serving = {f: v for f in families(self.models_dir)
                   if (v := self.registry.champion(f)) is not None}
        shadow = [[f, v] for f, vs in sorted(self.shadow.items()) for v in vs]
        spec = {"serving": serving, "shadow": shadow}
        if self.hold_clock:
            await self._send_models(spec)
        else:
            self._pushes_tx.send_nowait(spec)  # unbounded: requests are rare and in order

    async def _pusher(self) -> None:
        async for spec in self._pushes_rx:
            await self._send_models(spec)

    async def _send_models(self, spec: dict[str, Any]) -> None:
        reply_tx, reply_rx = trio.open_memory_channel[Any](1)
        await self.predictor.send(Command("set_models", spec, reply_tx))
        with trio.move_on_after(120):
            result = await reply_rx.receive()
            for err in result.get("errors", []):
                log.error("predictor refused a model: %s", err)

    def status(self) -> dict[str, Any]:
        return {"evaluations": self.evaluations, "jobs_done": self.jobs_done,
                "jobs_failed": self.jobs_failed,
                "current_job": self.current.family if self.current else "",
                "queued": len(self.queue)}

    def publish(self) -> dict[str, Any]:
        return {**self.status(), "next_eval": self.next_eval, "mode": self.lc.mode}

    async def _record(self, *recs: Record) -> None:
        """Registry rows, evaluations and jobs are durable: sent with backpressure (the
        recorder drains its record channel every flush), never dropped when it is full."""
        for rec in recs:
            await self.records.send(rec)




__all__ = ["Job", "LearnerActor", "retrain_banner"]


async def _kill(proc: trio.Process) -> None:
    proc.kill()


def _nice() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(OSError):
        os.nice(10)
