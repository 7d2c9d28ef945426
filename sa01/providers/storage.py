"""Object stores and the storage chain (the seed's s3 → local/filesystem → redis/temp).

Every store speaks the same small protocol (put, get, delete, exists, check) and
translates its client's errors into the project's hierarchy: an outage is a
:class:`ServiceUnavailableError`, a missing object an :class:`ObjectNotFoundError`, a
key that would escape the store an :class:`UploadRefusedError`. The first store of the
chain is the primary; an object held by any other store is a temporary copy that the
upload agent later moves to the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis

from sa01.core.errors import (
    ConfigurationError,
    FallbackExhaustedError,
    ObjectNotFoundError,
    PermanentError,
    ServiceUnavailableError,
    UploadRefusedError,
)
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.providers.configured import storage_unconfigured
from sa01.resilience.circuit_breaker import BreakerConfig, BreakerState, CircuitBreaker
from sa01.resilience.fallback import ChainLink, FallbackChain
from schemas.messages import storage_key_problem

__all__ = [
    "STORE_NAMES",
    "LocalFileStore",
    "ObjectStore",
    "RedisTempStore",
    "S3Store",
    "StorageChain",
    "build_storage_chain",
    "build_store",
]

#: The stores a chain may name, in the seed's order.
STORE_NAMES = ("s3", "local", "redis")

T = TypeVar("T")


class ObjectStore(Protocol):
    """A place that keeps bytes under a key."""

    name: str

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (idempotent: the same key is overwritten)."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; :class:`ObjectNotFoundError` when absent."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key`` (absent is fine)."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether ``key`` is stored here."""
        ...

    async def check(self) -> None:
        """Raise :class:`ServiceUnavailableError` unless the store can take objects."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def _checked(key: str) -> str:
    problem = storage_key_problem(key)
    if problem is not None:
        raise UploadRefusedError(f"storage key {key[:80]!r} {problem}")
    return key


class S3Store:
    """An S3 bucket (AWS or any S3-compatible endpoint) through aiobotocore."""

    def __init__(
        self,
        *,
        name: str,
        bucket: str,
        region: str,
        endpoint_url: str | None,
        access_key: str | None,
        secret_key: str | None,
        timeout: float,
    ) -> None:
        self.name = name
        self.service = f"storage.{name}"
        self.bucket = bucket
        self._options: dict[str, str | None] = {
            "region_name": region,
            "endpoint_url": endpoint_url,
            "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key,
        }
        self._timeout = timeout
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None  # aiobotocore's S3 client is untyped
        self._bucket_checked = False

    async def _s3(self) -> Any:
        if self._client is None:
            # aiobotocore costs most of a second to import: only when S3 is used.
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            config = AioConfig(
                connect_timeout=self._timeout,
                read_timeout=self._timeout,
                retries={"max_attempts": 1},  # the chain and the breaker decide on retries
                s3={"addressing_style": "path"},
            )
            self._client = await self._stack.enter_async_context(
                get_session().create_client("s3", config=config, **self._options)
            )
        return self._client

    def _unavailable(self, exc: Exception) -> ServiceUnavailableError:
        return ServiceUnavailableError(self.service, f"{type(exc).__name__}: {exc}")

    async def _ensure_bucket(self, client: Any) -> None:
        if self._bucket_checked:
            return
        try:
            await client.head_bucket(Bucket=self.bucket)
        except _client_error() as exc:
            if _status(exc) != 404:
                raise
            with contextlib.suppress(_client_error()):  # created meanwhile by someone else
                await client.create_bucket(Bucket=self.bucket)
        self._bucket_checked = True

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """``PutObject`` (the bucket is created when missing)."""
        _checked(key)
        try:
            client = await self._s3()
            await self._ensure_bucket(client)
            await client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
            )
        except _any_s3_error() as exc:
            raise self._unavailable(exc) from exc

    async def get(self, key: str) -> bytes:
        """``GetObject``."""
        _checked(key)
        try:
            client = await self._s3()
            response = await client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data
        except _client_error() as exc:
            if _status(exc) == 404:
                raise ObjectNotFoundError(f"{key!r} is not in s3 bucket {self.bucket!r}") from exc
            raise self._unavailable(exc) from exc
        except _transport_error() as exc:
            raise self._unavailable(exc) from exc

    async def delete(self, key: str) -> None:
        """``DeleteObject``."""
        _checked(key)
        try:
            client = await self._s3()
            await client.delete_object(Bucket=self.bucket, Key=key)
        except _any_s3_error() as exc:
            raise self._unavailable(exc) from exc

    async def exists(self, key: str) -> bool:
        """``HeadObject``."""
        _checked(key)
        try:
            client = await self._s3()
            await client.head_object(Bucket=self.bucket, Key=key)
            return True
        except _client_error() as exc:
            if _status(exc) == 404:
                return False
            raise self._unavailable(exc) from exc
        except _transport_error() as exc:
            raise self._unavailable(exc) from exc

    async def check(self) -> None:
        """``HeadBucket`` (a missing bucket is fine: the first put creates it)."""
        try:
            client = await self._s3()
            await client.head_bucket(Bucket=self.bucket)
        except _client_error() as exc:
            if _status(exc) != 404:
                raise self._unavailable(exc) from exc
        except _transport_error() as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        """Close the client."""
        await self._stack.aclose()
        self._client = None


def _client_error() -> type[Exception]:
    from botocore.exceptions import ClientError

    return ClientError  # type: ignore[no-any-return]


def _transport_error() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError

    return (BotoCoreError, OSError)


def _any_s3_error() -> tuple[type[Exception], ...]:
    return (_client_error(), *_transport_error())


def _status(exc: Exception) -> int:
    """The HTTP status of a botocore ``ClientError`` (404 for its not-found codes)."""
    response: Mapping[str, Mapping[str, object]] = getattr(exc, "response", {})
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status is None and response.get("Error", {}).get("Code") in (
        "NoSuchKey",
        "NoSuchBucket",
        "NotFound",
        "404",
    ):
        return 404
    return int(status) if isinstance(status, int | str) else 0


class LocalFileStore:
    """Files under one root directory; no key may resolve outside it."""

    def __init__(self, *, name: str, root: str | Path) -> None:
        self.name = name
        self.service = f"storage.{name}"
        self.root = Path(root).resolve()

    def path_of(self, key: str) -> Path:
        """The file of ``key``; :class:`UploadRefusedError` if it would leave the root."""
        _checked(key)
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise UploadRefusedError(f"storage key {key[:80]!r} escapes the store's root")
        return path

    def _unavailable(self, exc: OSError) -> ServiceUnavailableError:
        return ServiceUnavailableError(self.service, f"{type(exc).__name__}: {exc}")

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write atomically (temporary file, fsync, rename)."""
        path = self.path_of(key)
        try:
            await asyncio.to_thread(self._write, path, data)
        except OSError as exc:
            raise self._unavailable(exc) from exc

    async def get(self, key: str) -> bytes:
        """Read the file."""
        path = self.path_of(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"{key!r} is not in {self.root}") from exc
        except OSError as exc:
            raise self._unavailable(exc) from exc

    async def delete(self, key: str) -> None:
        """Remove the file."""
        path = self.path_of(key)
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:
            raise self._unavailable(exc) from exc

    async def exists(self, key: str) -> bool:
        """Whether the file exists."""
        return await asyncio.to_thread(self.path_of(key).is_file)

    def _check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.root} is not writable")

    async def check(self) -> None:
        """The root exists (or can be made) and is writable."""
        try:
            await asyncio.to_thread(self._check)
        except OSError as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        """Nothing to release."""


class RedisTempStore:
    """Temporary objects in Redis, each with a TTL."""

    def __init__(self, *, name: str, url: str, namespace: str, ttl: int, timeout: float) -> None:
        self.name = name
        self.service = f"storage.{name}"
        self.namespace = namespace
        self.ttl = ttl
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )

    def _key(self, key: str) -> str:
        return f"{self.namespace}:{_checked(key)}"

    def _unavailable(self, exc: Exception) -> ServiceUnavailableError:
        return ServiceUnavailableError(self.service, f"{type(exc).__name__}: {exc}")

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """``SET key data EX ttl``."""
        try:
            await self.client.set(self._key(key), data, ex=self.ttl)
        except aioredis.RedisError as exc:
            raise self._unavailable(exc) from exc

    async def get(self, key: str) -> bytes:
        """``GET``."""
        try:
            data = await self.client.get(self._key(key))
        except aioredis.RedisError as exc:
            raise self._unavailable(exc) from exc
        if not isinstance(data, bytes):
            raise ObjectNotFoundError(f"{key!r} is not in redis (or its TTL ran out)")
        return data

    async def delete(self, key: str) -> None:
        """``DEL``."""
        try:
            await self.client.delete(self._key(key))
        except aioredis.RedisError as exc:
            raise self._unavailable(exc) from exc

    async def exists(self, key: str) -> bool:
        """``EXISTS``."""
        try:
            return bool(await self.client.exists(self._key(key)))
        except aioredis.RedisError as exc:
            raise self._unavailable(exc) from exc

    async def check(self) -> None:
        """``PING``."""
        try:
            await self.client.ping()
        except aioredis.RedisError as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        """Close the client."""
        await self.client.aclose()


def build_store(settings: Settings, kind: str, *, backup: bool = False) -> ObjectStore:
    """The store ``kind`` (``s3``, ``local``, ``redis``) as configured; ``backup`` picks
    the backup bucket or root."""
    secret = settings.aws_secret_access_key
    access = settings.aws_access_key_id
    if kind == "s3":
        return S3Store(
            name="backup-s3" if backup else "s3",
            bucket=settings.backup_s3_bucket if backup else settings.s3_bucket,
            region=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            access_key=access.get_secret_value() if access else None,
            secret_key=secret.get_secret_value() if secret else None,
            timeout=settings.storage_timeout_seconds,
        )
    if kind == "local":
        return LocalFileStore(
            name="backup-local" if backup else "local",
            root=settings.backup_local_root if backup else settings.storage_local_root,
        )
    if kind == "redis" and not backup:
        return RedisTempStore(
            name="redis",
            url=settings.redis_url,
            namespace=f"sa01:storage:{settings.app_id}:{settings.database_schema}",
            ttl=settings.storage_redis_ttl_seconds,
            timeout=settings.storage_timeout_seconds,
        )
    raise ConfigurationError(
        f"unknown {'backup ' if backup else ''}store {kind!r}: use one of "
        f"{', '.join(STORE_NAMES if not backup else ('local', 's3'))}"
    )


def provider_breaker_config(settings: Settings, *, storage: bool = False) -> BreakerConfig:
    """The breaker of each audio provider, or (``storage``) of each store.

    The wait in open grows on failed trials up to four times the configured wait, so a
    provider that is back is tried again soon whatever the length of its outage.
    """
    wait = settings.storage_breaker_wait_seconds if storage else settings.audio_breaker_wait_seconds
    failures = (
        settings.storage_breaker_consecutive_failures
        if storage
        else settings.audio_breaker_consecutive_failures
    )
    return BreakerConfig(
        window_type="count",
        window_size=20,
        minimum_calls=10,
        failure_rate_threshold=50.0,
        slow_call_duration=max(settings.audio_timeout_seconds, settings.storage_timeout_seconds)
        + 1.0,
        consecutive_failures_threshold=failures,
        permitted_calls_in_half_open=1,
        wait_in_open=wait,
        max_wait_in_open=wait * 4,
        # A refused key or a missing object says nothing about the provider's health.
        ignore_exceptions=(PermanentError,),
    )


def _refused(exc: BaseException) -> bool:
    return isinstance(exc, UploadRefusedError)


class StorageChain:
    """The stores in order, each behind its own breaker; the first is the primary."""

    def __init__(
        self, chain: FallbackChain[ObjectStore], unconfigured: dict[str, str] | None = None
    ) -> None:
        self.chain = chain
        self.primary = chain.links[0]
        #: Stores left out for want of credentials: ``storage.s3`` → what is missing.
        self.unconfigured = dict(unconfigured or {})

    @property
    def stores(self) -> tuple[ObjectStore, ...]:
        """Every store, primary first."""
        return tuple(link.provider for link in self.chain.links)

    def store(self, name: str) -> ObjectStore:
        """The store called ``name``."""
        for link in self.chain.links:
            if link.name == name:
                return link.provider
        raise ConfigurationError(f"no store {name!r} in the storage chain")

    def states(self) -> dict[str, BreakerState]:
        """Breaker state per store."""
        return self.chain.states()

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store along the chain; the name of the store that took it.

        :class:`UploadRefusedError` is raised at once; :class:`FallbackExhaustedError`
        when no store took it.
        """
        result = await self.chain.run(
            lambda store: store.put(key, data, content_type),
            should_fail_over=lambda e: not _refused(e),
        )
        return result.provider

    async def put_primary(self, key: str, data: bytes, content_type: str) -> None:
        """Store in the primary only, through its breaker."""
        await self._through(self.primary, lambda store: store.put(key, data, content_type))

    async def get(self, key: str) -> tuple[str, bytes]:
        """The first copy found, primary first: ``(store name, bytes)``.

        :class:`ObjectNotFoundError` when every store answered that it has no such
        object, :class:`FallbackExhaustedError` when some could not answer.
        """
        unreachable: list[str] = []
        for link in self.chain.links:
            try:
                data = await self._through(link, lambda store: store.get(key))
            except ObjectNotFoundError:
                continue
            except (ServiceUnavailableError, FallbackExhaustedError) as exc:
                unreachable.append(f"{link.name}: {exc}")
                continue
            return link.name, data
        if unreachable:
            raise FallbackExhaustedError(
                f"{key!r} was not found and some stores could not answer: {'; '.join(unreachable)}"
            )
        raise ObjectNotFoundError(f"no store holds {key!r}")

    async def delete_temporary(self, key: str, *, only: str | None = None) -> None:
        """Delete the copies of ``key`` outside the primary (all, or the store ``only``)."""
        for link in self.chain.links[1:]:
            if only is None or link.name == only:
                await self._through(link, lambda store: store.delete(key))

    async def _through(
        self, link: ChainLink[ObjectStore], operation: Callable[[ObjectStore], Awaitable[T]]
    ) -> T:
        single = FallbackChain([link], name=f"storage:{link.name}")
        try:
            result = await single.run(
                operation, should_fail_over=lambda e: not isinstance(e, PermanentError)
            )
        except FallbackExhaustedError as exc:
            cause = exc.__cause__
            if isinstance(cause, ServiceUnavailableError):
                raise cause from exc
            raise ServiceUnavailableError(f"storage.{link.name}", str(exc)) from exc
        return result.value

    async def close(self) -> None:
        """Close every store."""
        for store in self.stores:
            await store.close()


def build_storage_chain(
    settings: Settings, metrics: Metrics, stores: Sequence[ObjectStore] | None = None
) -> StorageChain:
    """The chain named by ``SA01_STORAGE_CHAIN``, one breaker per store."""
    unconfigured: dict[str, str] = {}
    if stores is None:
        names = [n.strip() for n in settings.storage_chain.split(",") if n.strip()]
        if not names:
            raise ConfigurationError("SA01_STORAGE_CHAIN names no store")
        unconfigured = storage_unconfigured(settings)
        stores = [build_store(settings, name) for name in names if name not in unconfigured]
    config = provider_breaker_config(settings, storage=True)

    def count_failover(from_name: str, to_name: str) -> None:
        metrics.provider_failover_count.labels(
            chain="storage", from_provider=from_name, to_provider=to_name
        ).inc()

    links = [
        ChainLink(
            store.name,
            store,
            CircuitBreaker(f"storage:{store.name}", config, metrics=metrics),
            settings.storage_timeout_seconds + 1.0,
        )
        for store in stores
    ]
    return StorageChain(
        FallbackChain(links, on_failover=count_failover, name="storage"),
        {f"storage.{name}": why for name, why in unconfigured.items()},
    )
