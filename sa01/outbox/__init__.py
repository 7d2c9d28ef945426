"""Zero data loss: the PostgreSQL outbox, its exactly-once relay, idempotency records.

Nothing here knows about Faust: the worker and the commands wire these pieces up.
"""
