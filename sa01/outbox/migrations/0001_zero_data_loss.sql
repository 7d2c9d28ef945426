-- The zero-data-loss tables: the seed's models plus what a relay needs.

CREATE TABLE outbox_message (
    id              bigserial PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    topic           text        NOT NULL,
    partition_key   bytea,
    payload         bytea       NOT NULL,
    headers         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'publishing', 'published', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    max_attempts    integer     NOT NULL DEFAULT 10,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    claimed_by      text,
    claim_seq       bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);
CREATE INDEX outbox_message_pending ON outbox_message (id) WHERE status = 'pending';
CREATE INDEX outbox_message_backoff ON outbox_message (topic, partition_key)
    WHERE status = 'pending';
CREATE INDEX outbox_message_publishing ON outbox_message (claimed_by, claim_seq)
    WHERE status = 'publishing';
CREATE INDEX outbox_message_published_at ON outbox_message (published_at)
    WHERE status = 'published';

CREATE TABLE pending_memory (
    id              bigserial PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    tenant_id       text        NOT NULL,
    agent_id        text        NOT NULL,
    content         text        NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    synced          boolean     NOT NULL DEFAULT false,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    synced_at       timestamptz
);
CREATE INDEX pending_memory_unsynced ON pending_memory (tenant_id, agent_id, id)
    WHERE NOT synced;

CREATE TABLE idempotency_record (
    key        text        PRIMARY KEY,
    result     jsonb,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_record_expires_at ON idempotency_record (expires_at);

CREATE TABLE dead_letter_message (
    id              bigserial PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    source          text        NOT NULL CHECK (source IN ('agent', 'relay', 'memory', 'upload')),
    topic           text        NOT NULL,
    partition       integer,
    "offset"        bigint,
    message_key     bytea,
    payload         bytea       NOT NULL,
    headers         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error_class     text        NOT NULL,
    error_message   text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    replayed_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letter_message_topic ON dead_letter_message (topic, created_at);
