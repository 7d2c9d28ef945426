"""Shared foundations: settings, the exception hierarchy, logging and metrics.

Nothing here knows about Faust; every other package may depend on it.
"""
