"""Running workers in the foreground or as a group of processes.

``run_worker`` runs one worker in this process until SIGTERM/SIGINT (then
stops gracefully). ``spawn_workers`` starts P such processes
(``python -m opsline worker``) with the given settings passed through
``OPSLINE_*`` environment variables, and returns a
:class:`WorkerGroup` to stop (SIGTERM), kill or wait for them. It is the
multi-process deployment behind ``opsline worker --processes P`` and the API
the benchmark uses.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from opsline.platform.engine.registry import QUEUES
from opsline.settings import Settings

_FORWARDED = (
    "database_url",
    "sqlite_synchronous",
    "var_dir",
    "redis_url",
    "log_format",
    "log_level",
    "job_lease_seconds",
    "job_poll_seconds",
    "job_shutdown_grace_seconds",
    "job_sqlite_watch_seconds",
    "job_queue_weights",
    "job_retention_days",
    "secret_key",
)


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``OPSLINE_*`` variables that reproduce ``settings`` in a child process."""
    env: dict[str, str] = {"OPSLINE_DATABASE_URL": settings.sqlalchemy_url}
    for name in _FORWARDED[1:]:
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        text = json.dumps(value) if isinstance(value, dict) else str(value)
        env[f"OPSLINE_{name.upper()}"] = text
    return env


def run_worker(
    settings: Settings,
    *,
    queues: Sequence[str] = QUEUES,
    concurrency: int = 8,
    imports: Sequence[str] = (),
    prefetch: int | None = None,
) -> None:
    """Run one worker here until SIGTERM or SIGINT, then stop it gracefully.

    The runtime comes from the factory the command line installed
    (``opsline.platform.clitools``), so every job of every capability is known.
    """
    from opsline.platform.clitools import build_runtime
    from opsline.platform.engine.worker import Worker

    for module in imports:
        importlib.import_module(module)
    runtime = build_runtime(settings)
    worker = Worker(runtime.db, settings, queues=queues, concurrency=concurrency, prefetch=prefetch)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        worker.stop()
        runtime.close()


class WorkerGroup:
    """Worker processes started by :func:`spawn_workers`."""

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        self.processes = processes

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def kill(self, index: int) -> None:
        """SIGKILL one process (crash tests)."""
        self.processes[index].kill()
        self.processes[index].wait()

    def stop(self, timeout: float = 60.0) -> list[int | None]:
        """SIGTERM every live process and wait; SIGKILL those still alive after ``timeout``."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        codes: list[int | None] = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        return codes


def spawn_workers(
    settings: Settings,
    *,
    processes: int = 2,
    queues: Sequence[str] = QUEUES,
    concurrency: int = 8,
    imports: Sequence[str] = (),
    prefetch: int | None = None,
    cwd: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> WorkerGroup:
    """Start ``processes`` worker processes; the caller must ``stop()`` the group."""
    env = {**os.environ, **settings_env(settings), **(extra_env or {})}
    command = [
        sys.executable,
        "-m",
        "opsline",
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
    ]
    if prefetch is not None:
        command += ["--prefetch", str(prefetch)]
    for module in imports:
        command += ["--import", module]
    started = [subprocess.Popen(command, env=env, cwd=cwd) for _ in range(processes)]
    return WorkerGroup(started)
