"""A real S3-compatible HTTP server on loopback, backed by moto's in-process S3.

:class:`S3Server` runs moto's :class:`~moto.server.ThreadedMotoServer` (a threaded werkzeug WSGI
server) on a background thread. Point any S3 client at :attr:`S3Server.endpoint_url` with the
credentials ``test``/``test`` and region ``us-east-1`` (see :data:`ACCESS_KEY`, :data:`REGION`).

Lifecycle: :meth:`S3Server.stop` really closes the listening socket (connections are refused;
moto's own ``stop`` only ends the serve loop and leaves the socket in the kernel's backlog, so
clients would hang instead), and :meth:`S3Server.start` re-opens the same port. The stored
buckets and objects survive a stop and start, because moto keeps them in process-wide backends,
not in the server. The flip side: every S3Server (and every ``moto.mock_aws``) in one process
shares the same buckets, and ``mock_aws`` resets them when it starts; use distinct bucket names
per test, or run ``python -m loopback.s3_server`` in its own process.

Run one in the foreground with ``python -m loopback.s3_server --port 9000``.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, Self

import botocore.config
import botocore.session
from moto.server import ThreadedMotoServer

from loopback._server import DEFAULT_HOST, http_base_url, serve_until_signalled

logger = logging.getLogger(__name__)

__all__ = ["ACCESS_KEY", "REGION", "SECRET_KEY", "S3Server"]

ACCESS_KEY: Final = "test"
"""The access key id clients use (moto accepts any)."""
SECRET_KEY: Final = "test"  # noqa: S105 - moto accepts any secret
"""The secret access key clients use (moto accepts any)."""
REGION: Final = "us-east-1"
"""The region clients use."""


class _MotoServer(ThreadedMotoServer):
    """ThreadedMotoServer that reports a failed bind and closes its socket on stop."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(ip_address=host, port=port, verbose=False)
        self.error: BaseException | None = None

    def _server_entry(self) -> None:
        try:
            super()._server_entry()
        except BaseException as exc:  # e.g. the port is taken: start() must not wait forever
            # werkzeug reports a failed bind with sys.exit(1) (after printing to stderr).
            self.error = (
                OSError(f"S3Server cannot listen on {self._ip_address}:{self._port}")
                if isinstance(exc, SystemExit)
                else exc
            )
            self._server_ready_event.set()

    def stop(self) -> None:
        super().stop()
        if self._server is not None:
            self._server.server_close()  # shutdown() alone keeps the socket listening


class S3Server:
    """A moto S3 server on a background thread; stop/start keeps the port and the data.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with S3Server() as s3:
            s3.create_bucket("attachments")
            ...  # point clients at s3.endpoint_url
            assert s3.objects("attachments") == {"a.txt": b"hi"}
    """

    def __init__(self, port: int = 0, *, host: str = DEFAULT_HOST) -> None:
        """Create a stopped server; ``port=0`` picks a free port on the first :meth:`start`."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        self._host: Final = host
        self._port = port
        self._lifecycle = threading.Lock()
        self._server: _MotoServer | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start serving; returns once the port listens (the same port after a :meth:`stop`)."""
        with self._lifecycle:
            if self._server is not None:
                raise RuntimeError("S3Server is already running")
            server = _MotoServer(self._host, self._port)
            server.start()
            if server.error is not None:
                server.stop()
                raise server.error
            self._port = server.get_host_and_port()[1]
            self._server = server
        logger.info("S3 server listening on %s", self.endpoint_url)

    def stop(self) -> None:
        """Stop serving and close the port (idempotent); the stored objects are kept."""
        with self._lifecycle:
            server, self._server = self._server, None
            if server is None:
                return
            server.stop()
        logger.info("S3 server on port %d stopped", self._port)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ public API

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    @property
    def host(self) -> str:
        """The address the server binds."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port; known after :meth:`start` when constructed with 0."""
        if self._port == 0:
            raise RuntimeError("the port is chosen on start(); start the server first")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` (a wildcard host via loopback)."""
        return http_base_url(self._host, self.port)

    @property
    def endpoint_url(self) -> str:
        """The ``endpoint_url`` for boto3/aiobotocore clients (same as :attr:`base_url`)."""
        return self.base_url

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``create_client("s3", **kwargs)`` against this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "region_name": REGION,
        }

    def client(self) -> Any:
        """A synchronous botocore S3 client (what ``boto3.client("s3", ...)`` returns)."""
        config = botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 1}
        )
        session = botocore.session.get_session()
        return session.create_client("s3", config=config, **self.client_kwargs())

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (no error if this server's moto already has it)."""
        s3 = self.client()
        try:
            s3.create_bucket(Bucket=name)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        finally:
            s3.close()

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object of ``bucket``: key to content."""
        s3 = self.client()
        try:
            found: dict[str, bytes] = {}
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    found[key] = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            return found
        finally:
            s3.close()


# ---------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run one server in the foreground until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m loopback.s3_server", description="S3-compatible server (moto)."
    )
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = S3Server(args.port, host=args.host)

    def create_buckets() -> None:
        for bucket in args.bucket:
            server.create_bucket(bucket)

    return serve_until_signalled(
        server,
        "s3",
        lambda: (
            f"s3: endpoint_url={server.endpoint_url} access_key={ACCESS_KEY} "
            f"secret_key={SECRET_KEY} region={REGION}"
        ),
        on_started=create_buckets,
    )


if __name__ == "__main__":
    raise SystemExit(main())
