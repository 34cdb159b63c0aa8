"""Splitting a worker's free slots across its queues.

Smooth weighted round-robin (as in nginx): each slot goes to the queue with
the highest running credit, so with weights high=6, low=1 a busy ``high``
gets six slots for each one of ``low``, and ``low`` is never starved. Queues
found empty since the last wake-up are left out, so a single busy queue costs
one claim statement per cycle, not one per queue; every other queue still
follows in the plan with no share, to take the slots an empty one leaves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol


class _HasQueue(Protocol):
    @property
    def queue(self) -> str: ...


class QueuePlanner:
    def __init__(self, queues: Sequence[str], weights: Mapping[str, int]) -> None:
        self.queues = list(queues)
        self.weights = {q: max(1, weights.get(q, 1)) for q in self.queues}
        self.credit = dict.fromkeys(self.queues, 0)
        self.empty: set[str] = set()

    @property
    def all_empty(self) -> bool:
        return self.empty.issuperset(self.queues)

    def plan(self, free: int) -> list[tuple[str, int]]:
        """(queue, slots) pairs, largest share first, then the queues left without a
        slot this time (0): they take the slots an empty queue cannot fill, so one
        free slot planned for an empty ``low`` is not left free while ``high`` waits.
        """
        queues = [q for q in self.queues if q not in self.empty] or self.queues
        counts = dict.fromkeys(queues, 0)
        total = sum(self.weights[q] for q in queues)
        for _ in range(free):
            for q in queues:
                self.credit[q] += self.weights[q]
            best = max(queues, key=lambda q: self.credit[q])
            self.credit[best] -= total
            counts[best] += 1
        return sorted(counts.items(), key=lambda item: -item[1])

    def note_claimed(self, plan: Sequence[tuple[str, int]], claimed: Sequence[_HasQueue]) -> None:
        """Remember queues that could not fill their share (empty until the next wake-up)."""
        got: dict[str, int] = {}
        for job in claimed:
            got[job.queue] = got.get(job.queue, 0) + 1
        for queue, wanted in plan:
            if got.get(queue, 0) < wanted:
                self.empty.add(queue)
