"""Keep the start-up heap out of the garbage collector's full collections.

A worker imports Faust, aiokafka, litellm (its model tables), pydantic models and the
rest at start: a heap of long-lived objects that never become garbage. CPython's full
(generation 2) collection walks every tracked object, so each one cost the worker 80 to
140 ms with the event loop stopped, and under a backlog (many objects surviving a young
collection) it ran several times a second: replies waited for it (docs/architecture.md,
"Replies first"; decision D12).

:func:`freeze_startup_heap` collects once, then moves everything alive into the
permanent generation (``gc.freeze()``), which collections skip. Objects created
afterwards are collected as usual. Call it once the process has started its parts.
"""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["freeze_startup_heap"]

logger = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect, then freeze every object alive; the number of objects now frozen."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info(
        "start-up heap frozen out of garbage collection",
        extra={"objects": frozen, "ms": round((time.perf_counter() - started) * 1000)},
    )
    return frozen
