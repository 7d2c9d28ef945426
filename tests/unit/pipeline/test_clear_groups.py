"""ClearGroups: what the memory processor knows of pairs with nothing waiting."""

from __future__ import annotations

from sa01.pipeline.memory import ClearGroups


def test_a_reading_taken_before_a_rebalance_is_not_kept() -> None:
    groups = ClearGroups()
    generation = groups.generation
    groups.clear()  # a rebalance while has_unsynced was being read
    groups.add(("t", "a"), generation)
    assert ("t", "a") not in groups
    groups.add(("t", "a"), groups.generation)
    assert ("t", "a") in groups


def test_a_kept_memory_forgets_its_pair_only() -> None:
    groups = ClearGroups()
    groups.add(("t", "a"), groups.generation)
    groups.add(("t", "b"), groups.generation)
    groups.discard(("t", "a"))
    assert ("t", "a") not in groups and ("t", "b") in groups


def test_bounded() -> None:
    groups = ClearGroups(limit=3)
    for n in range(10):
        groups.add(("t", str(n)), groups.generation)
        assert len(groups) <= 3
    assert ("t", "9") in groups
