"""The worker's parts as a tree of ``mode.Service`` children, as Faust builds its own.

Guarantees: a :class:`Component` wraps a plain object's ``start``/``stop`` (or only its
``close``) without changing it, so the Faust-agnostic packages stay free of ``mode``.
A parent starts its children in the order it declares them and stops them in the
reverse order, after its own ``on_stop`` (mode's ``Service.stop``): the order of the
shutdown follows from the order of the dependencies, and one child failing to stop is
logged and does not keep the others running. Constructing a component does no I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import mode

__all__ = ["Component"]

Step = Callable[[], Awaitable[object]]


class Component(mode.Service):
    """One part of the runtime (the pool, the producer, the relay...) as a child service."""

    def __init__(self, name: str, *, start: Step | None = None, stop: Step | None = None) -> None:
        super().__init__()
        self.name = name
        self._start_step = start
        self._stop_step = stop

    @property
    def label(self) -> str:
        """The name mode logs ("[^--Component: relay]: Stopping...")."""
        return f"Component: {self.name}"

    @property
    def shortlabel(self) -> str:
        """The name alone."""
        return self.name

    async def on_start(self) -> None:
        """Run the part's start step, if it has one."""
        if self._start_step is not None:
            await self._start_step()

    async def on_stop(self) -> None:
        """Run the part's stop (or close) step, if it has one."""
        if self._stop_step is not None:
            await self._stop_step()
