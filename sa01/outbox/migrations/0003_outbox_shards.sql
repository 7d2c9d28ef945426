-- Sharded relays: the shard of a row is computed from its key when it is read, so the
-- writers stay as they are. A key's hash is the first 4 bytes of its SHA-256, as an
-- unsigned 32-bit number (NULL keys hash as the empty key); with N shards, shard s owns
-- the hashes h with floor(h * N / 2^32) = s, a contiguous range, which this index serves.
CREATE FUNCTION outbox_key_hash(key bytea) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT ('x' || encode(substring(sha256(coalesce(key, '\x'::bytea)) FROM 1 FOR 4),
                               'hex'))::bit(32)::bigint $$;

CREATE INDEX outbox_message_pending_shard ON outbox_message (outbox_key_hash(partition_key), id)
    WHERE status = 'pending';

-- Keys in backoff are found by their due time, not by scanning every pending row.
CREATE INDEX outbox_message_pending_due ON outbox_message (next_attempt_at)
    WHERE status = 'pending';
