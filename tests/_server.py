"""A real Opsline server on a free loopback port, in this process, for concurrency tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from opsline.api import create_app
from opsline.platform.runtime import Runtime
from tests.helpers import stop_group

ROOT = Path(__file__).resolve().parents[1]


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


def opsline_command() -> str:
    """The ``opsline`` script of this interpreter's environment."""
    return str(Path(sys.executable).parent / "opsline")


def _live(base: str, _process: subprocess.Popen[bytes]) -> bool:
    try:
        return httpx.get(f"{base}/health/live", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def opsline_serve(
    env: dict[str, str],
    log: Path,
    *options: str,
    started: Callable[[str, subprocess.Popen[bytes]], bool] = _live,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real ``opsline serve`` (its own process group, output in ``log``) on a free
    loopback port; yields its base URL and process once ``started`` says so, and
    stops the group at the end."""
    port = free_port()
    command = [opsline_command(), "serve", "--host", "127.0.0.1", "--port", str(port), *options]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not started(base, process):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "opsline serve did not start:\n" + log.read_text()
            time.sleep(0.1)
        yield base, process
    finally:
        stop_group(process)
