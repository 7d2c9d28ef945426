"""Ledger records: the row ids of a batch as ranges, and both protocols' values."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from sa01.outbox.ledger import LedgerEntry, decode_entry, encode_entry, id_ranges


@given(st.lists(st.integers(1, 500)))
def test_ranges_name_exactly_the_ids_sorted_and_apart(ids: list[int]) -> None:
    ranges = id_ranges(ids)
    assert {i for first, last in ranges for i in range(first, last + 1)} == set(ids)
    assert all(first <= last for first, last in ranges)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ranges))


def test_a_batch_of_consecutive_ids_is_one_range() -> None:
    assert id_ranges(range(1000, 3000)) == [(1000, 2999)]


@given(st.integers(0, 2**40), st.lists(st.integers(1, 10_000)))
def test_an_entry_reads_back_as_written(seq: int, ids: list[int]) -> None:
    ranges = id_ranges(ids)
    assert decode_entry(encode_entry(seq, ranges)) == LedgerEntry(seq, tuple(ranges))


def test_a_record_of_the_earlier_protocol_reads_as_an_entry_without_rows() -> None:
    assert decode_entry(json.dumps({"seq": 41}).encode()) == LedgerEntry(41)
