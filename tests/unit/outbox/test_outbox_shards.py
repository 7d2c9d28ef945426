"""Outbox shards: every key in exactly one shard, the ranges tile the hash space."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from sa01.core.settings import Settings
from sa01.outbox.relay import Shard
from sa01.outbox.store import HASH_SPACE, key_hash, shard_of, shard_range


@given(key=st.one_of(st.none(), st.binary(max_size=64)), shards=st.integers(1, 64))
def test_a_key_lies_in_the_range_of_its_shard(key: bytes | None, shards: int) -> None:
    shard = shard_of(key, shards)
    low, high = shard_range(shard, shards)
    assert 0 <= shard < shards
    assert low <= key_hash(key) < high


@given(shards=st.integers(1, 64))
def test_the_ranges_tile_the_hash_space(shards: int) -> None:
    ranges = [shard_range(s, shards) for s in range(shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == HASH_SPACE
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_keys_spread_over_the_shards() -> None:
    counts = [0] * 4
    for n in range(4000):
        counts[shard_of(f"tenant:session-{n}".encode(), 4)] += 1
    assert all(800 < c < 1200 for c in counts), counts


def test_one_shard_keeps_the_unsharded_relay_id_and_lock() -> None:
    settings = Settings(database_schema="t_1", app_id="app")
    [only] = Shard.all_of(settings)
    assert only.relay_id == settings.relay_transactional_id
    assert only.lock_key == settings.relay_lock_key


def test_each_shard_has_its_own_transactional_id_and_lock() -> None:
    settings = Settings(database_schema="t_1", app_id="app", outbox_shards=4)
    shards = Shard.all_of(settings)
    assert [s.index for s in shards] == [0, 1, 2, 3]
    assert len({s.relay_id for s in shards}) == len({s.lock_key for s in shards}) == 4
    assert shards[2].relay_id == "app-t_1-outbox-relay-2-of-4"
    assert settings.relay_lock_key not in {s.lock_key for s in shards}
