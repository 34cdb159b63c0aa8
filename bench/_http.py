"""HTTP load with wrk (as in shared/PEERS.md), servers in subprocesses, databases for benches."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psycopg
from bench._harness import host_busy_s, services_busy_since, services_usage

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get(
    "BENCH_PG_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)

WRK_SCRIPT = r"""
local counter = 0
local run_id = os.getenv("BENCH_RUN")
local bodies = {}
local headers = {}

function init(args)
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = os.getenv("BENCH_AUTH") or ""
  local file = io.open(os.getenv("BENCH_BODIES"), "r")
  for line in file:lines() do bodies[#bodies + 1] = line end
  file:close()
end

function request()
  counter = counter + 1
  headers["Idempotency-Key"] = run_id .. "-" .. counter
  return wrk.format("POST", os.getenv("BENCH_PATH"), headers, bodies[(counter % #bodies) + 1])
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("this benchmark drives load with wrk: apt-get install wrk")
    return path


class Served(NamedTuple):
    url: str
    pid: int


def process_tree(pid: int) -> list[int]:
    """``pid`` and the live processes it started, theirs too (a server's processes)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue  # ended meanwhile
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        tree.append(found := pending.pop())
        pending.extend(parents.get(found, []))
    return tree


def _usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, all threads) and context switches of a live
    process and of the processes it started (a server's several processes)."""
    cpu, switches = 0.0, 0
    for each in process_tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            tasks = list(Path(f"/proc/{each}/task").iterdir())
        except OSError:
            continue  # ended meanwhile
        cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in tasks:
            try:
                status = (task / "status").read_text()
            except OSError:
                continue  # a thread that ended meanwhile
            for line in status.splitlines():
                if "ctxt_switches:" in line:
                    switches += int(line.split()[-1])
    return cpu, switches


def wrk(
    target: Served,
    path: str,
    bodies: list[str],
    *,
    clients: int,
    seconds: float,
    auth: str = "",
    helpers: Sequence[int] = (),
) -> dict[str, float]:
    """POST ``bodies`` (cycled) to ``path`` with ``clients`` connections for ``seconds``.

    Besides rates and latencies, the server's CPU milliseconds and context
    switches per request (all its threads, from /proc): steadier than the rate
    on a noisy machine, and where a thread-pool hop shows. ``helpers`` are
    processes working for the server (a worker process): their CPU per request
    over the same window is ``helper_cpu_ms_per_request``. The databases' and
    brokers' CPU per request is ``services_cpu_ms_per_request``; how busy the
    whole machine was, every process on every core, ``host_busy_pct``.
    """
    url = target.url
    cpu_before, switches_before = _usage(target.pid)
    helpers_before = sum(_usage(pid)[0] for pid in helpers)
    started, host_before, services_before = time.monotonic(), host_busy_s(), services_usage()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        body_file = Path(tmp) / "bodies.txt"
        body_file.write_text("\n".join(bodies) + "\n")
        env = {
            **os.environ,
            "BENCH_AUTH": auth,
            "BENCH_BODIES": str(body_file),
            "BENCH_PATH": path,
            "BENCH_RUN": uuid.uuid4().hex,
        }
        out = subprocess.run(
            [
                require_wrk(),
                "-t1",
                f"-c{clients}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    cpu_after, switches_after = _usage(target.pid)
    helpers_after = sum(_usage(pid)[0] for pid in helpers)
    wall = time.monotonic() - started
    host, services = host_busy_s() - host_before, services_busy_since(services_before)
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line.removeprefix("WRKJSON "))
    seconds_run = raw["duration_us"] / 1e6
    requests = max(1, raw["requests"])
    result = {
        "requests": raw["requests"],
        "per_s": round(raw["requests"] / seconds_run, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
        "server_cpu_ms_per_request": round(1000 * (cpu_after - cpu_before) / requests, 2),
        "server_switches_per_request": round((switches_after - switches_before) / requests, 1),
        "services_cpu_ms_per_request": round(1000 * services / requests, 2),
        "host_busy_pct": round(100 * host / (wall * (os.cpu_count() or 1)), 1),
    }
    if helpers:
        result["helper_cpu_ms_per_request"] = round(
            1000 * (helpers_after - helpers_before) / requests, 2
        )
    return result


@contextmanager
def database(backend: str) -> Iterator[dict[str, str]]:
    """Environment for a fresh database of ``backend``; removed afterwards."""
    if backend == "sqlite":
        var = Path(tempfile.mkdtemp(prefix="opsline-bench-"))
        try:
            yield {"OPSLINE_VAR_DIR": str(var)}
        finally:
            shutil.rmtree(var, ignore_errors=True)
        return
    name = f"opsline_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    var = Path(tempfile.mkdtemp(prefix="opsline-bench-"))
    try:
        yield {
            "OPSLINE_VAR_DIR": str(var),
            "OPSLINE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
        }
    finally:
        shutil.rmtree(var, ignore_errors=True)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def server(command: list[str], env: Mapping[str, str], port: int, ready: str) -> Iterator[Served]:
    """Start ``command`` in its own process group; yield its URL and pid once ``ready`` answers."""
    log_file = tempfile.TemporaryFile()
    process = subprocess.Popen(
        command,
        env={**os.environ, **env},
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                log_file.seek(0)
                raise RuntimeError(
                    f"server exited: {log_file.read()[-2000:].decode(errors='replace')}"
                )
            try:
                if httpx.get(base + ready, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.1)
        yield Served(base, process.pid)
    finally:
        _stop(process)
        log_file.close()


@contextmanager
def background(command: list[str], env: Mapping[str, str]) -> Iterator[int]:
    """Run ``command`` (a worker, say) in its own process group; yield its pid once it
    has started up (gone idle: its start-up CPU is not the work measured); stop it."""
    process = subprocess.Popen(
        command,
        env={**os.environ, **env},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_idle(process)
        yield process.pid
    finally:
        _stop(process)


def _wait_idle(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.args!r} did not settle in {timeout:.0f} s")
        before = _usage(process.pid)[0]
        time.sleep(0.3)
        quiet = quiet + 1 if _usage(process.pid)[0] - before < 0.03 else 0


def _stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    os.killpg(process.pid, signal.SIGCONT)  # a group left stopped (bench.orders) must run to end
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def opsline(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("opsline")), *args]


def run_cli(args: list[str], env: Mapping[str, str]) -> str:
    return subprocess.run(
        args, env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, check=True
    ).stdout


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, sort_keys=True))
