"""Issue 17's alternative shape, measured: replies in Kafka transactions with the offsets.

``python -m bench.eos_shape BOOTSTRAP INBOUND OUTBOUND GROUP`` (the database from the
``SA01_*`` environment) is a prototype for the bench, not the product: it answers like
the worker's echo responder but in the shape the design card describes for the happy
path (exactly-once as Kafka Streams and Quix do it), so that the two shapes can be
compared on the same machine before either is built into the worker:

1. a batch of up to ``BATCH`` records from a ``read_committed`` consumer (no auto commit);
2. each decoded and validated as ``ConversationInbound`` (pydantic, as the worker does);
3. one ``SELECT`` of the batch's idempotency keys in PostgreSQL: a message answered
   before (a client's resend under a new offset) gets no second reply;
4. each answered (``ConversationReply``, echo) and produced in one Kafka transaction
   with the batch's consumed offsets (``send_offsets_to_transaction``);
5. the batch's idempotency records inserted in one statement in an open PostgreSQL
   transaction, which commits after the Kafka transaction did.

Not built here (what the product would need): the outbox while the producer is
unhealthy, dead letters (a record that does not decode stops the prototype), lanes and
the LLM. A crash between the Kafka commit and the
PostgreSQL commit leaves replies sent without their idempotency records: only a resend
of one of those messages (another offset) would be answered twice. It prints ``ready``
once its partitions are assigned and runs until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, Message, Producer
from psycopg import sql

from sa01.core.settings import Settings
from schemas.codec import decode_message, encode_message
from schemas.messages import ConversationInbound, ConversationReply

BATCH = 500
POLL_SECONDS = 0.05

_ANSWERED = "SELECT key FROM idempotency_record WHERE key = ANY(%s) AND expires_at > now()"
_RECORD = (
    "INSERT INTO idempotency_record (key, result, expires_at)"
    " SELECT k, NULL, now() + interval '1 day' FROM unnest(%s::text[]) AS e(k)"
    " ON CONFLICT (key) DO NOTHING"
)


def _key(message: ConversationInbound) -> str:
    """The worker's idempotency key: tenant-scoped, as docs/guarantees.md gives it."""
    return f"conversation.inbound:{message.tenant_id}:{message.message_id}"


def _reply(message: ConversationInbound) -> bytes:
    return encode_message(
        ConversationReply(
            message_id=f"reply-{message.message_id}",
            in_reply_to=message.message_id,
            tenant_id=message.tenant_id,
            session_id=message.session_id,
            text=message.text,
            model="echo",
        )
    )


def run(bootstrap: str, inbound: str, outbound: str, group: str) -> None:
    """Consume, answer and commit in transactions until SIGTERM."""
    settings = Settings.load()
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    database = psycopg.connect(settings.database_url)
    database.execute(
        sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.database_schema))
    )
    database.commit()
    said_ready: list[bool] = []

    def on_assign(_consumer: Any, _partitions: Any) -> None:
        if not said_ready:
            said_ready.append(True)
            print("ready", flush=True)

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"{group}-eos",
            "linger.ms": 1,
        }
    )
    producer.init_transactions(30)
    consumer.subscribe([inbound], on_assign=on_assign)
    try:
        while not stopping:
            records = [
                m for m in consumer.consume(BATCH, POLL_SECONDS) if m.error() is None or _fatal(m)
            ]
            if records:
                _answer(database, consumer, producer, outbound, records)
    finally:
        consumer.close()
        database.close()


def _fatal(record: Message) -> bool:
    error = record.error()
    if error is not None and error.code() != KafkaError._PARTITION_EOF:
        raise RuntimeError(f"consumer error: {error}")
    return False


def _answer(
    database: psycopg.Connection[Any],
    consumer: Consumer,
    producer: Producer,
    outbound: str,
    records: list[Message],
) -> None:
    decoded = [(r, decode_message(ConversationInbound, r.value() or b"")) for r in records]
    keys = [_key(m) for _, m in decoded]
    answered = {row[0] for row in database.execute(_ANSWERED, (keys,))}
    producer.begin_transaction()
    for record, message in decoded:
        if _key(message) not in answered:
            producer.produce(outbound, key=record.key(), value=_reply(message))
    producer.send_offsets_to_transaction(
        consumer.position(consumer.assignment()), consumer.consumer_group_metadata()
    )
    database.execute(_RECORD, ([k for k in keys if k not in answered],))
    producer.commit_transaction(30)
    database.commit()


def main(argv: list[str]) -> int:
    """Run with ``BOOTSTRAP INBOUND OUTBOUND GROUP``."""
    run(*argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
