"""The job's ledger: every mechanism run on each listing's data, as it happens (the receipt's charges)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sterling.privacy.mechanisms import DpSgd, Mechanism


@dataclass
class _Run:
    template: DpSgd
    steps: int = 0


@dataclass
class Ledger:
    """Every mechanism that has run on each listing's data so far: the charge if the job ended now."""

    parts: int
    prior: tuple[Mechanism, ...] = ()
    _entries: list[tuple[Mechanism | _Run, frozenset[int]]] = field(default_factory=list)

    def released(self, m: Mechanism, who: Sequence[int] | None = None) -> None:
        self._entries.append((m, frozenset(range(self.parts) if who is None else who)))

    def run(self, template: DpSgd, who: Sequence[int] | None = None) -> _Run:
        """A DP-SGD run starting on `who`'s data; its step count grows as the run goes."""
        entry = _Run(template)
        self._entries.append((entry, frozenset(range(self.parts) if who is None else who)))
        return entry

    def mechanisms(self) -> list[list[Mechanism]]:
        out: list[list[Mechanism]] = [list(self.prior) for _ in range(self.parts)]
        for m, who in self._entries:
            item = m.template.prefix(m.steps) if isinstance(m, _Run) else m
            if isinstance(item, DpSgd) and item.steps == 0:
                continue
            for i in sorted(who):
                out[i].append(item)
        return out
