"""A real Opsline server on a free loopback port, in this process, for concurrency tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from opsline.api import create_app
from opsline.platform.runtime import Runtime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(runtime: Runtime) -> Iterator[str]:
    """Serve ``runtime`` (with its background workers) until the block ends; yield the base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(runtime=runtime),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        limit_concurrency=1000,
        backlog=2048,
        # As ``opsline serve``: X-Forwarded-For only from the proxies configured.
        proxy_headers=bool(runtime.settings.forwarded_allow_ips),
        forwarded_allow_ips=runtime.settings.forwarded_allow_ips or None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def client(base: str, **kwargs: object) -> httpx.Client:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    return httpx.Client(base_url=base, timeout=60, limits=limits, **kwargs)  # type: ignore[arg-type]
