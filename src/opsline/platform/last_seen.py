"""What this process last read of a row, for writes that check it instead of reading it again.

A hint, never a source of truth: a use case that takes a value from here must
make its write conditional on the value being still current (a guard in the
same statement), and on a failed guard read it afresh and attempt again.
Nothing is ever invalidated here, so nothing across processes needs telling.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SeenChanged(Exception):
    """A write's check found a row changed since it was last seen (nothing was
    written): read it afresh and attempt again."""


class LastSeen(Generic[K, V]):
    """A bounded map of the values last read; the oldest entries go first.

    Safe to share between threads: a lost race only loses or repeats a hint.
    """

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._size = size
        self._entries: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        entries = self._entries
        if key not in entries:
            while len(entries) >= self._size:
                try:
                    del entries[next(iter(entries))]
                except (KeyError, RuntimeError, StopIteration):
                    break  # another thread evicted or changed it meanwhile
        entries[key] = value

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
