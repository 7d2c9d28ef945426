"""How inbound messages are processed: per-session lanes, in-order acks, the processor.

Faust-agnostic: the agents in ``agents/`` adapt Faust events to these pieces.
"""
