"""The resilience layer's own packages, under one namespace.

``streams``, ``agents``, ``tables`` and ``schemas`` are the design card's top-level
packages; everything else the worker is built from lives here: ``core`` (settings,
errors, metrics), ``resilience`` (breakers, fallback, health), ``providers``, ``outbox``,
``journeys`` and ``pipeline`` (see docs/architecture.md for the layers)."""
