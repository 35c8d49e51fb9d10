"""The learner's control-socket commands (`ctl models`, `promote`, `rollback`, `retrain`,
`learning`), kept apart from the actor's step and job logic (qtraderd/actors/learner.py).

`promote` is the operator's way past the gate — also for a file dropped in by hand that
the gate refuses for having no lineage — and it is logged as such
(`promote overrides the gate: ...`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from qtraderd.core.clock import iso
from qtraderd.learning import admission
from qtraderd.learning.triggers import HOUR_MS
from qtraderd.models.artifacts import ArtifactError, list_versions
from qtraderd.runtime.supervisor import answer

log = logging.getLogger("qtraderd.learner")


@dataclass
class Job:
    family: str
    reasons: list[str]
    priority: int
    evaluation_id: int = 0
    attempt: int = 1
    not_before: int = 0
    version: str | None = None  # evaluate an existing (dropped-in) artifact, no training


class LearnerControl:
    """Mixin of LearnerActor: answers the commands the control socket forwards (it uses
    the actor's registry, queue, watches and deploy/rollback)."""

    async def _command_loop(self) -> None:
        async for cmd in self.commands:
            try:
                result: Any = await self.command(cmd.name, cmd.args)
            except (KeyError, ValueError, ArtifactError) as exc:
                result = {"error": str(exc).strip("'\"")}
            self.changed()
            answer(cmd, result)

    async def command(self, name: str, args: dict[str, Any]) -> Any:
        ts = self.clock.now_ms()
        if name == "models":
            return {"registry": self.registry.rows(), "shadow": self.shadow,
                    "watches": [f"{w.kind} {w.family} {w.subject} vs {w.other}: "
                                f"{w.n_complete} outcomes" for w in self.watches.values()]}
        if name == "promote":
            family, version = str(args.get("model", "")), str(args.get("version", ""))
            if not self.registry.knows(family, version) and \
                    version not in list_versions(self.models_dir, family):
                raise ValueError(f"no model {family}/{version} in {self.models_dir}")
            await self._record(*admission.file_records(self.registry, family, version,
                                                       "candidate", "ctl promote", ts))
            log.warning("promote overrides the gate: %s %s (%s)", family, version,
                        admission.standing(self.registry, family, version))
            await self.deploy(family, version, "ctl promote (gate bypassed)", ts)
            return {"family": family, "champion": version}
        if name == "rollback":
            family = str(args.get("model", ""))
            to = await self.rollback(family, "ctl rollback", ts)
            return {"family": family, "champion": to}
        if name == "retrain":
            fams = [args["model"]] if args.get("model") else self.families
            unknown = [f for f in fams if f not in self.families]
            if unknown:
                raise ValueError(f"unknown model family {unknown[0]!r} "
                                 f"(known: {', '.join(self.families)})")
            for f in fams:
                if self.current is None or self.current.family != f:
                    self.queue.append(Job(f, ["manual: ctl retrain"], 0))
            self.queue.sort(key=lambda j: (j.priority, j.not_before))
            return {"queued": fams}
        if name == "learning":
            return self.status_report()
        raise ValueError(f"learner has no command {name!r}")

    def status_report(self) -> dict[str, Any]:
        nxt = self.next_eval
        return {
            "mode": self.lc.mode, "enabled": self.lc.enabled, "auto_deploy": self.lc.auto_deploy,
            "clock": iso(self.clock.now_ms()), "next_evaluation": iso(nxt),
            "evaluations": self.evaluations, "last_evaluation": self.last_eval,
            "current_job": self.current.family if self.current else None,
            "queue": [f"{j.family} (attempt {j.attempt}, {', '.join(j.reasons)})"
                      for j in self.queue],
            "jobs_done": self.jobs_done, "jobs_failed": self.jobs_failed,
            "last_deploys": {f: iso(t) for f, t in sorted(self.triggers.last_deploy.items())},
            "next_time_retrain": {f: iso(t + int(self.lc.retrain_interval_hours * HOUR_MS))
                                  for f, t in sorted(self.triggers.last_deploy.items())},
            "recent_decisions": self.decisions[-10:],
            "triggers": self.triggers.status(),
        }
