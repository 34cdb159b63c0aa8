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

from pydantic import SecretStr

from opsline.platform.engine.registry import QUEUES
from opsline.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``OPSLINE_*`` variables that reproduce ``settings`` in a child process:
    the database, the data folder, and every setting that is not its default
    (secrets unwrapped, lists and mappings as JSON, as pydantic-settings reads them)."""
    env: dict[str, str] = {
        "OPSLINE_DATABASE_URL": settings.sqlalchemy_url,
        "OPSLINE_VAR_DIR": str(settings.var_dir),
    }
    for name in settings.model_dump(exclude_defaults=True):
        if name in ("database_url", "var_dir"):
            continue
        env[f"OPSLINE_{name.upper()}"] = _env_text(getattr(settings, name))
    return env


def _env_text(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list | tuple):
        return json.dumps([_env_text(v) if isinstance(v, SecretStr) else v for v in value])
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


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
