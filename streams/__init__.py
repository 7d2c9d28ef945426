"""The Faust app of the resilience layer: ``faust -A streams worker``.

Guarantees: importing this package (or any module under it) builds no app, reads no
environment and opens nothing. ``streams.app``, the attribute Faust's ``-A streams``
reads, builds the app from the ``SA01_*`` environment on first access
(:func:`streams.app.app_from_environment`: a bad setting exits with code 2) and keeps
it; :func:`streams.app.create_app` builds one from explicit settings.

The attribute and the submodule ``streams/app.py`` share the name ``app``: Python's
import system sets the package attribute to the submodule whenever the submodule is
imported, which would hide a plain PEP 562 ``__getattr__``. The package's module
class therefore declares ``app`` as a property, which that assignment cannot shadow:
``streams.app`` is always the app, ``from streams.app import create_app`` the module's.
(So write ``from streams.app import ...``: ``import streams.app as m`` reads the
attribute, and gives the app.)
"""

from __future__ import annotations

import sys
import threading
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.app import StreamsApp

__all__ = ["app"]

_lock = threading.Lock()


class _StreamsPackage(types.ModuleType):
    """The ``streams`` package: ``app`` is built on first access, then kept."""

    _built: StreamsApp | None = None

    @property
    def app(self) -> StreamsApp:
        """The app built from the environment (once per process)."""
        with _lock:
            if self._built is None:
                from streams.app import app_from_environment

                self._built = app_from_environment()
            return self._built

    @app.setter
    def app(self, value: object) -> None:
        # The import system binds the submodule ``streams.app`` here once it has loaded;
        # the attribute stays the Faust app, the submodule stays in sys.modules.
        if not isinstance(value, types.ModuleType):
            raise AttributeError("streams.app is built from the settings, not assigned")


sys.modules[__name__].__class__ = _StreamsPackage
