"""freeze_startup_heap: what is alive at start leaves the collector's full collections."""

from __future__ import annotations

import gc

from sa01.core.heap import freeze_startup_heap


class Node:
    """A container the collector tracks."""

    def __init__(self) -> None:
        self.me = self


def test_what_is_alive_is_frozen_and_later_objects_are_collected_as_before() -> None:
    gc.unfreeze()
    try:
        kept = Node()
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects()), "a frozen object is still walked"

        later = Node()
        assert any(o is later for o in gc.get_objects())
        del later
        assert gc.collect() >= 1, "a cycle created after the freeze must still be collected"
    finally:
        gc.unfreeze()
