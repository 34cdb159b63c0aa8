"""``opsline serve --processes N``: several processes on one port, sharing what must be shared.

A real server over loopback: live streams held by either process hear orders
placed through the other, ``/metrics`` adds up every process's counters
whichever one answers the scrape, and a process killed outright is replaced.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from opsline.cli.main import app as cli_app
from opsline.platform.engine.processes import settings_env
from opsline.settings import Settings, SettingsError, load_settings
from tests._server import opsline_serve
from tests._sse import sse
from tests.helpers import signup

PROCESSES = 2


def test_more_than_one_process_needs_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPSLINE_REDIS_URL", raising=False)
    with pytest.raises(SettingsError) as refused:
        load_settings(server_processes=2)
    message = str(refused.value)
    assert "OPSLINE_SERVER_PROCESSES" in message and "OPSLINE_REDIS_URL" in message
    assert "rate limits" in message
    redis = load_settings(server_processes=2, redis_url="redis://127.0.0.1:6379/15")
    assert redis.server_processes == 2


def test_serve_refuses_processes_without_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before anything is opened: no database is needed."""
    monkeypatch.delenv("OPSLINE_REDIS_URL", raising=False)
    cli = CliRunner()
    result = cli.invoke(cli_app, ["serve", "--processes", "3"])
    assert result.exit_code == 2, result.output
    assert "OPSLINE_REDIS_URL" in result.output
    out_of_range = cli.invoke(cli_app, ["serve", "--processes", "0"])
    assert out_of_range.exit_code == 2 and "--processes" in out_of_range.output


def _serving_when(log: Path, processes: int) -> Callable[[str, subprocess.Popen[bytes]], bool]:
    """Whether ``processes`` server processes have started up, so that each accepts
    connections (uvicorn logs each one's start-up), and the server is ready."""

    def started(base: str, _process: subprocess.Popen[bytes]) -> bool:
        if log.read_text().count("Application startup complete") < processes:
            return False
        try:
            return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    return started


def _children(pid: int) -> list[int]:
    """The server processes uvicorn's supervisor ``pid`` started (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _held_connections(pid: int, port: int) -> int:
    """Established TCP connections that process ``pid`` accepted on ``port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    held = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "01" and inode in inodes and int(local.rsplit(":", 1)[1], 16) == port:
            held += 1
    return held


def _metric(base: str, name: str, labels: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
@pytest.mark.redis
def test_processes_share_live_streams_and_metrics(
    settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLINE_")}
    env.update(settings_env(settings))
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env.update(
        OPSLINE_REDIS_URL=redis_url,
        OPSLINE_EMBEDDED_WORKERS="1",
        OPSLINE_EMBEDDED_SCHEDULER="false",
        OPSLINE_PAYMENT_LATENCY_MIN_MS="0",
        OPSLINE_PAYMENT_LATENCY_MAX_MS="5",
        OPSLINE_PAYMENT_SUCCESS_RATE="1.0",
        OPSLINE_LIVE_MAX_STREAMS_PER_USER="20",
        OPSLINE_LIVE_HEARTBEAT_SECONDS="0.2",
        OPSLINE_LOG_LEVEL="INFO",  # each process logs its start-up (_serving_when)
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    log = tmp_path / "serve.log"
    serving = opsline_serve(
        env, log, "--processes", str(PROCESSES), started=_serving_when(log, PROCESSES)
    )
    with serving as (base, server), ExitStack() as streams:
        port = int(base.rsplit(":", 1)[1])
        with httpx.Client(base_url=base, timeout=30) as http:
            owner = signup(http)  # type: ignore[arg-type]
            product = http.post(
                "/api/v1/products",
                json={"sku": "P-1", "name": "One", "price": "2.50", "stock": 10},
                headers=owner.headers,
            )
            assert product.status_code == 201, product.text
            product_id = product.json()["id"]

            # Open streams (each its own connection) until both processes hold some.
            opened: list[Any] = []
            children = _children(server.pid)
            while not all(_held_connections(pid, port) for pid in children):
                assert len(opened) < 16, "every stream landed on one process"
                opened.append(streams.enter_context(sse(base, owner.headers)))
            # Each on a new connection: any process may place it.
            placed = [_order(base, owner.headers, product_id) for _ in range(3)]
        for events in opened:
            # Each stream hears every order, from whichever process placed it.
            heard: dict[str, list[str]] = {}
            deadline = time.monotonic() + 30
            while any("PAID" not in heard.get(o, []) for o in placed):
                event = events.get(timeout=max(0.1, deadline - time.monotonic()))
                if "event" in event or "data" not in event:
                    continue  # not a status change
                heard.setdefault(event["data"]["order_id"], []).append(event["data"]["status"])
            assert set(heard) == set(placed)
        # The counters of both processes, whichever answers the scrape.
        created = 'method="POST",route="/api/v1/orders",status="201"'
        assert {_metric(base, "opsline_http_requests_total", created) for _ in range(6)} == {3.0}
        kept_by = {int(p.stem.split("_")[-1]) for p in metrics_dir.glob("counter_*.db")}
        assert set(children) <= kept_by

        # A process killed outright is replaced; its counts stay in the sums.
        os.kill(children[0], signal.SIGKILL)
        deadline = time.monotonic() + 120
        replaced = _serving_when(log, PROCESSES + 1)
        while children[0] in _children(server.pid) or not replaced(base, server):
            assert time.monotonic() < deadline, "the killed process was not replaced"
            time.sleep(0.2)
        assert len(set(_children(server.pid)) - set(children)) == 1
        for _ in range(4):
            _order(base, owner.headers, product_id)
        assert {_metric(base, "opsline_http_requests_total", created) for _ in range(6)} == {7.0}


def _order(base: str, headers: dict[str, str], product_id: str) -> str:
    """Place an order of one unit on a connection of its own; its id."""
    order = httpx.post(
        f"{base}/api/v1/orders",
        json={"items": [{"product_id": product_id, "quantity": 1}]},
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
        timeout=30,
    )
    assert order.status_code == 201, order.text
    return str(order.json()["id"])
