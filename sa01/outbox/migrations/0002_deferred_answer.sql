-- Messages answered with a degraded reply because every model was down: the real
-- answer is retried until a model answers.
CREATE TABLE deferred_answer (
    message_id      text        PRIMARY KEY,
    inbound         jsonb       NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    answered_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deferred_answer_waiting ON deferred_answer (next_attempt_at)
    WHERE answered_at IS NULL;
