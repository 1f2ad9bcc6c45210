"""IntRuns: the validator's id bookkeeping must agree with plain sets and counters on any id
order, and stay a few runs for the numbering writers use."""

from collections import Counter

import numpy as np
import pytest

from uis_d2.data.int_runs import IntRuns


def _random_ids(seed: int) -> list[int]:
    """Ascending stretches, jumps back, repeats and negative ids, as malformed files have."""
    rng = np.random.default_rng(seed)
    ids: list[int] = []
    value = int(rng.integers(-5, 5))
    for _ in range(40):
        stretch = int(rng.integers(1, 6))
        ids += range(value, value + stretch)
        value += stretch + int(rng.choice([0, 0, 1, 3, -4, -9]))
    return ids


@pytest.mark.parametrize("seed", range(8))
def test_repeats_and_distinct_match_a_counter(seed):
    ids = _random_ids(seed)
    runs = IntRuns()
    for value in ids:
        runs.add(value)
    counts = Counter(ids)
    repeated = {v for v, n in counts.items() if n > 1}
    reported = {v for r in runs.repeats() for v in range(r.first, r.last + 1)}
    assert reported == repeated
    assert runs.num_distinct() == len(counts)
    assert len(runs) == len(ids)
    for repeat in runs.repeats():
        assert ids[repeat.position] == repeat.first


def test_distinct_runs_are_sorted_disjoint_and_merged():
    runs = IntRuns()
    for value in [5, 6, 7, 1, 2, 6, 7, 8, 3, 20]:
        runs.add(value)
    starts, ends = runs.distinct()
    assert starts.tolist() == [1, 5, 20] and ends.tolist() == [4, 9, 21]


@pytest.mark.parametrize("seed", range(4))
def test_lookup_returns_the_payload_of_a_run_holding_the_value(seed):
    rng = np.random.default_rng(seed)
    ids = _random_ids(seed)
    payloads = {}
    runs = IntRuns()
    for value in ids:
        payload = payloads.setdefault(value, int(rng.integers(0, 3)))
        runs.add(value, payload)
    for value in range(min(ids) - 2, max(ids) + 3):
        assert runs.lookup(value) == payloads.get(value)
    assert runs.lookup(2**70) is None


def test_consecutive_ids_are_one_run_and_a_payload_change_breaks_it():
    runs = IntRuns()
    for value in range(1, 100_001):
        runs.add(value, payload=0 if value <= 60_000 else 1)
    assert runs.num_runs == 2 and runs.repeats() == []
    assert runs.lookup(60_000) == 0 and runs.lookup(60_001) == 1 and runs.lookup(0) is None


def test_positions_name_where_a_repeat_stands_in_its_file():
    runs = IntRuns()
    for index, value in enumerate([10, 11, 12]):
        runs.add(value, position=index + 100)
    runs.add(11, position=103)
    assert runs.repeats()[0].position == 103


def test_ids_beyond_64_bits_are_refused():
    with pytest.raises(OverflowError):
        IntRuns().add(2**64)
