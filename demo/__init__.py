"""``python -m demo`` (``make demo``): the seed's degradation scenarios, live, on a real stack.

The demo runs a worker and a relay as subprocesses with their own topic prefix, schema,
app id and web port, loopback LLM and SomaBrain servers, and walks through the
scenarios of the SRS (section 9), showing what users receive, the degradation events,
the failovers and the outbox backlog, then counts: nothing lost, nothing duplicated.
"""
