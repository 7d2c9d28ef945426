"""The memory_backlog bench's drain rate once under way (20% to 80% of the backlog)."""

from __future__ import annotations

import pytest

from bench.memory_backlog import steady_rate


def test_the_rate_counts_from_a_fifth_to_four_fifths_of_the_backlog_only() -> None:
    # A slow start (nothing for 10 s, as while workers join their group), then 100/s.
    progress = [(float(t), 0) for t in range(11)]
    progress += [(10.0 + t, 100 * t) for t in range(1, 11)]
    assert steady_rate(progress, 1000) == pytest.approx(100.0)


def test_a_drain_that_never_reached_four_fifths_has_no_steady_rate() -> None:
    assert steady_rate([(0.0, 0), (1.0, 500)], 1000) is None
    assert steady_rate([], 1000) is None
