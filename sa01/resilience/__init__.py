"""Circuit breakers, fallback chains, health probes and the degradation monitor.

Nothing here knows about Faust.
"""
