"""Integer ids held as runs of consecutive values, so that checking a file's ids costs memory
per break in the numbering rather than per id.

Writers number images and annotations 1, 2, 3... and embedding rows 0, 1, 2..., so a COCO-scale
pseudo-label file's ids are a handful of runs; ids in any other order cost 24 bytes each (a run
per id), which is still far below a Python set. Each run may carry an int64 payload (an image's
size): a run breaks where the payload changes, and ``lookup`` finds a value's payload.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

import numpy as np

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class Repeat(NamedTuple):
    """Values ``first``..``last`` appear more than once; ``position`` is where one occurrence of
    ``first`` stands (the later one when the ids arrive in ascending runs, as writers number)."""

    first: int
    last: int
    position: int


class IntRuns:
    """Ids in arrival order as (start, length, position of the start, payload) runs."""

    def __init__(self) -> None:
        self._starts = array("q")
        self._lengths = array("q")
        self._positions = array("q")
        self._payloads = array("q")
        self._count = 0
        self._sorted: tuple[np.ndarray, ...] | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def num_runs(self) -> int:
        return len(self._starts)

    def add(self, value: int, payload: int = 0, position: int | None = None) -> None:
        """``position``: where the value stands in its file (default: the arrival index).
        Raises OverflowError for a value outside int64."""
        self._sorted = None
        if (
            self._lengths
            and value == self._starts[-1] + self._lengths[-1]
            and payload == self._payloads[-1]
        ):
            self._lengths[-1] += 1
        else:
            self._starts.append(value)
            self._lengths.append(1)
            self._positions.append(self._count if position is None else position)
            self._payloads.append(payload)
        self._count += 1

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return tuple(
            np.frombuffer(a, dtype=np.int64) if a else np.zeros(0, np.int64)
            for a in (self._starts, self._lengths, self._positions, self._payloads)
        )

    def repeats(self) -> list[Repeat]:
        """Every range of values met more than once, in value order (a value met three times
        shows in two ranges)."""
        starts, lengths, positions, _ = self._arrays()
        order = np.lexsort((positions, starts))
        found: list[Repeat] = []
        covered_end = None
        for start, length, position in zip(
            starts[order].tolist(), lengths[order].tolist(), positions[order].tolist(), strict=True
        ):
            end = start + length
            if covered_end is not None and start < covered_end:
                found.append(Repeat(start, min(end, covered_end) - 1, position))
            covered_end = end if covered_end is None else max(covered_end, end)
        return found

    def distinct(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct values as sorted, disjoint, non-adjacent runs: (starts, ends exclusive)."""
        starts, lengths, _, _ = self._arrays()
        if not starts.size:
            return starts, starts
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], (starts + lengths)[order]
        reach = np.maximum.accumulate(ends)
        new_run = np.r_[True, starts[1:] > reach[:-1]]
        last_of_run = np.r_[new_run[1:], True]
        return starts[new_run], reach[last_of_run]

    def num_distinct(self) -> int:
        starts, ends = self.distinct()
        return int((ends - starts).sum())

    def lookup(self, value: int) -> int | None:
        """The payload of a run holding ``value`` (None when no run does); a repeated value
        answers with one of its runs."""
        if self._sorted is None:
            starts, lengths, _, payloads = self._arrays()
            order = np.argsort(starts, kind="stable")
            ends = (starts + lengths)[order]
            self._sorted = (starts[order], ends, np.maximum.accumulate(ends), payloads[order])
        starts, ends, reach, payloads = self._sorted
        if not _INT64_MIN <= value <= _INT64_MAX:
            return None
        index = int(np.searchsorted(starts, value, side="right")) - 1
        # Runs sorted by start nest only where ids repeat: look back while an earlier run reaches.
        while index >= 0 and value < reach[index]:
            if value < ends[index]:
                return int(payloads[index])
            index -= 1
        return None
