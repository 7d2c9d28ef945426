"""The stores against real S3-compatible and Redis servers, and the chain's failover."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis

from loopback.s3_server import S3Server
from sa01.core.errors import FallbackExhaustedError, ObjectNotFoundError, ServiceUnavailableError
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.providers.storage import (
    LocalFileStore,
    RedisTempStore,
    S3Store,
    build_storage_chain,
)
from tests.fix_services import ServiceEndpoints

pytestmark = pytest.mark.integration


def s3_store(server: S3Server) -> S3Store:
    return S3Store(
        name="s3",
        bucket=f"b-{uuid.uuid4().hex[:10]}",
        region="us-east-1",
        endpoint_url=server.endpoint_url,
        access_key="test",
        secret_key="test",
        timeout=2.0,
    )


async def test_s3_store_creates_its_bucket_round_trips_and_reports_outages(
    s3: S3Server,
) -> None:
    store = s3_store(s3)
    try:
        await store.check()  # a missing bucket is not an outage
        await store.put("t/a.txt", b"hello", "text/plain")
        assert await store.get("t/a.txt") == b"hello"
        assert await store.exists("t/a.txt")
        assert not await store.exists("t/b.txt")
        with pytest.raises(ObjectNotFoundError):
            await store.get("t/b.txt")
        await store.delete("t/a.txt")
        assert not await store.exists("t/a.txt")
        s3.stop()
        with pytest.raises(ServiceUnavailableError, match=r"storage\.s3"):
            await store.put("t/c.txt", b"x", "text/plain")
        with pytest.raises(ServiceUnavailableError):
            await store.check()
    finally:
        await store.close()


async def test_redis_temp_store_keeps_objects_with_a_ttl(services: ServiceEndpoints) -> None:
    namespace = f"test:{uuid.uuid4().hex}"
    store = RedisTempStore(
        name="redis", url=services.redis_url, namespace=namespace, ttl=120, timeout=2.0
    )
    try:
        await store.put("k/1", b"temp", "application/octet-stream")
        assert await store.get("k/1") == b"temp"
        ttl = redis.Redis.from_url(services.redis_url).ttl(f"{namespace}:k/1")
        assert 0 < ttl <= 120
        await store.delete("k/1")
        with pytest.raises(ObjectNotFoundError, match="TTL"):
            await store.get("k/1")
    finally:
        await store.close()


async def test_the_chain_fails_over_reads_any_copy_and_says_when_nothing_took_it(
    s3: S3Server, tmp_path: Path
) -> None:
    settings = Settings(storage_breaker_consecutive_failures=1, storage_timeout_seconds=2.0)
    metrics = Metrics()
    primary = s3_store(s3)
    local = LocalFileStore(name="local", root=tmp_path / "local")
    chain = build_storage_chain(settings, metrics, [primary, local])
    try:
        assert await chain.put("a", b"1", "text/plain") == "s3"
        s3.stop()
        assert await chain.put("b", b"2", "text/plain") == "local"
        # The primary's circuit is open now: it is skipped without a call.
        assert chain.states()["s3"] == "open"
        assert await chain.get("b") == ("local", b"2")
        with pytest.raises(FallbackExhaustedError, match="could not answer"):
            await chain.get("a")
        (tmp_path / "local").rename(tmp_path / "gone")
        (tmp_path / "local").write_text("now a file: the local store is down too")
        with pytest.raises(FallbackExhaustedError, match="no link of chain 'storage'"):
            await chain.put("c", b"3", "text/plain")
        failovers = metrics.registry.get_sample_value(
            "provider_failover_count_total",
            {"chain": "storage", "from_provider": "s3", "to_provider": "local"},
        )
        # put b (s3 failed) and put c (s3 skipped, open): each moved to local.
        assert failovers == 2.0
    finally:
        await chain.close()
