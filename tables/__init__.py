"""Faust table declarations and their folds (``service_health`` arrives with the monitor)."""
