"""Thin Faust agents: take an event, hand it to the pipeline, never raise."""
