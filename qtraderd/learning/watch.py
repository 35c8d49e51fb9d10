"""Two versions of one model family judged on the same bars, as their outcomes arrive.

The learner keeps a Watch for a canary (challenger in shadow vs the champion) and for the
rollback guard after a deploy (new champion vs the previous one). Outcomes come in per
model and bar in any order; a bar counts once both versions have one, so the decision is
always on paired predictions of the same bars.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qtraderd.core.messages import Scored


@dataclass
class Watch:
    """Live comparison of two versions on the same bars (canary, or rollback guard)."""

    kind: str  # "canary" | "rollback"
    family: str
    subject: str  # the canary, or the new champion
    other: str  # the champion, or the previous champion
    since: int
    pairs: dict[tuple[str, int], dict[str, Scored]] = field(default_factory=dict)
    n_complete: int = 0  # bars with both versions' outcomes (checked every step: counted)

    def add(self, s: Scored) -> None:
        if s.model == self.family and s.version in (self.subject, self.other):
            p = self.pairs.setdefault((s.symbol, s.ts), {})
            had = self.subject in p and self.other in p
            p[s.version] = s
            if not had and self.subject in p and self.other in p:
                self.n_complete += 1

    def complete(self) -> list[tuple[Scored, Scored]]:
        return [(p[self.subject], p[self.other]) for _, p in sorted(self.pairs.items())
                if self.subject in p and self.other in p]
