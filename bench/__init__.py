"""Benchmarks on the real local stack: ``make bench`` (``ARGS=--quick`` for a short run).

Every figure is printed next to a baseline measured in the same run, and the ratio;
results are also written to ``bench/results/<name>.json``.
"""
