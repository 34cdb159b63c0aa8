"""`make run` really serves: start it on a free port, log in as the demo owner, stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import stop_group

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"make run exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


@pytest.mark.slow
def test_make_run_serves_the_demo_tenant(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "OPSLINE_PORT": str(port),
        "OPSLINE_VAR_DIR": str(tmp_path / "var"),
        "OPSLINE_ARGON2_TIME_COST": "1",
        "OPSLINE_ARGON2_MEMORY_KIB": "1024",
    }
    env.pop("OPSLINE_DATABASE_URL", None)
    log = (tmp_path / "make-run.log").open("wb")
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process)
        tokens = httpx.post(
            f"{base}/api/v1/auth/login",
            json={"email": "owner@demo.opsline.dev", "password": "opsline-demo-2026"},
        )
        assert tokens.status_code == 200, tokens.text
        me = httpx.get(
            f"{base}/api/v1/me",
            headers={"Authorization": f"Bearer {tokens.json()['access_token']}"},
        )
        assert me.status_code == 200
        assert me.json()["tenant"]["name"] == "Demo Shop"
        assert me.json()["role"] == "owner"
    finally:
        stop_group(process, timeout=20)
        log.close()
    output = (tmp_path / "make-run.log").read_text()
    assert "opsline-demo-2026" in output  # the credentials were printed once
    assert "(sqlite, asyncio event loop)" in output  # inline SQLite work: Python's own loop
    assert (tmp_path / "var" / "secret_key").exists()
