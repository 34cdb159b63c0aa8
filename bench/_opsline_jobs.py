"""The benchmark's no-op job for Opsline's engine (imported by the workers with --import)."""

from __future__ import annotations

from bench._harness import record

from opsline.platform.engine.context import JobContext
from opsline.platform.engine.registry import job


@job("bench.noop", queue="default", max_attempts=1)
def noop(ctx: JobContext, seq: int) -> None:
    record(seq)
