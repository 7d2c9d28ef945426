"""Thin Faust agents: take an event, hand it to the pipeline, never raise.

Each module's ``register(app, name)`` declares its agent on an app that satisfies
:class:`agents.host.AgentHost`; the app builder (``streams.app.create_app``) calls them.
Agents never import ``streams``: the dependency goes from the app down to them.
"""
