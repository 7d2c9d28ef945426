-- The shard count the outbox is published with. Two counts at once would let two relays
-- publish one key concurrently, out of order: the first relay to take a shard records its
-- count here, a relay configured with another count refuses to publish, and
-- `faust -A streams outbox-shards --set N` changes it (sa01/outbox/layout.py).
CREATE TABLE outbox_layout (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    shards      integer     NOT NULL CHECK (shards >= 1),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
