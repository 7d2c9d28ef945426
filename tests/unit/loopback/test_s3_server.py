"""The loopback S3 server, driven through aiobotocore (the client the storage provider uses)."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiobotocore.session
import botocore.config
import botocore.exceptions
import pytest

from loopback.s3_server import S3Server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(s3: S3Server) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"  # moto's buckets are shared by the whole process
    s3.create_bucket(name)
    return name


@pytest.fixture
async def client(s3: S3Server) -> AsyncIterator[Any]:
    session = aiobotocore.session.get_session()
    config = botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5)
    async with session.create_client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
        config=config,
    ) as s3_client:
        yield s3_client


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_put_get_head_through_aiobotocore(s3: S3Server, bucket: str, client: Any) -> None:
    await client.head_bucket(Bucket=bucket)
    await client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello", ContentType="text/plain")

    got = await client.get_object(Bucket=bucket, Key="a/b.txt")
    async with got["Body"] as stream:
        assert await stream.read() == b"hello"
    assert got["ContentType"] == "text/plain"
    head = await client.head_object(Bucket=bucket, Key="a/b.txt")
    assert head["ContentLength"] == 5
    assert s3.objects(bucket) == {"a/b.txt": b"hello"}


async def test_missing_bucket_and_key_are_s3_errors(bucket: str, client: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        await client.head_bucket(Bucket="no-such-bucket-here")
    assert raised.value.response["Error"]["Code"] == "404"
    with pytest.raises(client.exceptions.NoSuchKey):
        await client.get_object(Bucket=bucket, Key="missing")


async def test_stop_refuses_and_start_keeps_port_and_objects(
    s3: S3Server, bucket: str, client: Any
) -> None:
    port = s3.port
    await client.put_object(Bucket=bucket, Key="kept", Body=b"before the stop")

    s3.stop()
    assert not s3.running
    assert _refused(port)
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        await client.put_object(Bucket=bucket, Key="lost", Body=b"x")

    s3.start()
    assert s3.port == port
    got = await client.get_object(Bucket=bucket, Key="kept")
    async with got["Body"] as stream:
        assert await stream.read() == b"before the stop"
    assert s3.objects(bucket) == {"kept": b"before the stop"}


def test_context_manager_fixed_port_and_idempotent_stop() -> None:
    with S3Server() as first:
        port = first.port
        assert first.endpoint_url == first.base_url == f"http://127.0.0.1:{port}"
        first.create_bucket("ctx-bucket")
        first.create_bucket("ctx-bucket")  # already there: no error
    first.stop()
    assert _refused(port)
    with S3Server(port=port) as again:
        assert again.objects("ctx-bucket") == {}


def test_port_unknown_before_start_and_taken_port_fails() -> None:
    with pytest.raises(RuntimeError):
        _ = S3Server().port
    with S3Server() as running:
        with pytest.raises(OSError):
            S3Server(port=running.port).start()
        with pytest.raises(RuntimeError):
            running.start()


def test_cli_serves_until_terminated() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "loopback.s3_server", "--port", str(port), "--bucket", "cli"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"endpoint_url=http://127.0.0.1:{port}" in banner
        s3_client = S3Server(port=port).client()  # a client needs only the port
        try:
            assert s3_client.list_objects_v2(Bucket="cli")["KeyCount"] == 0
        finally:
            s3_client.close()
    finally:
        process.terminate()
        assert process.wait(10) == 0
