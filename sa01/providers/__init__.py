"""Adapters to external providers (LLMs first), each behind a small Protocol."""
