"""The worker: a dispatcher thread, ``concurrency`` job threads and a heartbeat.

Contract:

- The dispatcher alone claims and acks. Each cycle is one short write
  transaction that applies the outcomes of every job finished since the last
  cycle (grouped acks), promotes due scheduled/retryable jobs, and claims as
  many jobs as there are free slots (``concurrency + prefetch``), split across
  queues by smooth weighted round-robin so a busy ``high`` slows ``low`` but
  never starves it. No transaction is open while a handler runs.
- The heartbeat renews the leases of every held job each ``lease / 3``
  seconds (fenced: a job rescued meanwhile is dropped and its late result
  ignored), forwards cancellation requests to ``ctx.cancel_event``, and every
  ``lease / 2`` rescues jobs of dead workers, so a lost job is retried within
  twice the lease time.
- Timeout: a job past its ``timeout`` has that attempt failed with
  :class:`JobTimeout` and retried. A Python thread cannot be killed: the
  worker sets the job's cancellation flag, raises ``JobTimeout`` inside the
  thread asynchronously (effective at its next Python bytecode, not inside a
  blocking C call), abandons the thread (its late result is discarded) and
  starts a fresh thread for the slot.
- Stop (SIGTERM/SIGINT, or ``stop()``): claim nothing more, give back jobs
  not yet started, let running jobs finish for ``job_shutdown_grace_seconds``,
  then give back the rest (their attempt is not counted).
- Embedded (``on_server_loop``, started from a server's lifespan): jobs run
  their short units (``JobContext.short_unit``) on the server's event loop;
  the server stops the worker before that loop ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import queue as queue_module
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy.exc import DBAPIError

from opsline.db import Database
from opsline.platform.engine import _wake, changes, metrics
from opsline.platform.engine._autovacuum import warn_if_autovacuum_off
from opsline.platform.engine._execute import execute, failure_for
from opsline.platform.engine._planner import QueuePlanner
from opsline.platform.engine._rescue import rescue_expired
from opsline.platform.engine._store import Applied, ClaimedJob, Outcome, Store
from opsline.platform.engine.context import JobContext
from opsline.platform.engine.errors import JobTimeout
from opsline.platform.engine.registry import QUEUES, RetryPolicy, find_job
from opsline.platform.ratelimit import RateLimiter
from opsline.settings import Settings

log = structlog.get_logger("opsline.engine")
PROMOTE_SECONDS = 0.5


@dataclass(slots=True)
class _Held:
    job: ClaimedJob
    ctx: JobContext
    timeout: float | None = None
    deadline: float | None = None
    thread_id: int | None = None
    abandoned: bool = False


@dataclass
class _Slot:
    thread: threading.Thread
    retired: threading.Event = field(default_factory=threading.Event)


class Worker:
    """Runs jobs from ``queues`` with ``concurrency`` threads (a BackgroundService)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        queues: Sequence[str] = QUEUES,
        concurrency: int = 4,
        prefetch: int | None = None,
        on_server_loop: bool = False,
    ) -> None:
        unknown = [q for q in queues if q not in QUEUES]
        if unknown or not queues:
            raise ValueError(f"queues must be among {QUEUES}, got {list(queues)}")
        self.db = db
        self.settings = settings
        self.queues = list(queues)
        self.concurrency = max(1, concurrency)
        # Claiming ahead of free threads amortises each claim transaction over more
        # jobs (throughput); the default holds three jobs in reserve per thread.
        self.capacity = self.concurrency + (3 * self.concurrency if prefetch is None else prefetch)
        self.id = f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.store = Store(db, self.id, settings.job_lease_seconds)
        self._planner = QueuePlanner(self.queues, settings.job_queue_weights)
        self._limiter = RateLimiter(settings.redis_url)
        self._work: queue_module.SimpleQueue[_Held | None] = queue_module.SimpleQueue()
        self._results: queue_module.SimpleQueue[Outcome] = queue_module.SimpleQueue()
        self._held: dict[int, _Held] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._doorbell = _wake.Doorbell(self._wake)
        self._stopping = threading.Event()
        self._dispatched = threading.Event()  # the dispatcher gave every job back
        self._stopped = threading.Event()
        self._slots: list[_Slot] = []
        self._threads: list[threading.Thread] = []
        self._watchers: list[_wake.SqliteWatcher | _wake.PostgresListener] = []
        self._wake_key = _wake.url_key(db.engine)
        self._on_server_loop = on_server_loop
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self._on_server_loop:
            # Started from the server's lifespan, on its loop; started elsewhere
            # (a script driving an embedded runtime), the jobs keep their units.
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
        _wake.register(self._wake_key, self._doorbell)
        self._watchers = self._make_watchers()
        for watcher in self._watchers:
            watcher.start()
        for _ in range(self.concurrency):
            self._slots.append(self._start_slot())
        for target, name in (
            (self._dispatch_loop, "dispatch"),
            (self._heartbeat_loop, "heartbeat"),
        ):
            thread = threading.Thread(target=target, name=f"opsline-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        metrics.register_queue_collector(self.db)
        warn_if_autovacuum_off(self.db)
        log.info("worker_started", worker=self.id, queues=self.queues, concurrency=self.concurrency)

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming, finish or give back held jobs, and join every thread."""
        if self._stopped.is_set() or not self._threads:
            return
        if grace is not None:
            self._grace = grace
        self._stopping.set()
        self._wake.set()
        dispatch, heartbeat = self._threads
        dispatch.join()
        # Leases are renewed until the dispatcher has given every job back: a
        # job still running in the grace must not be rescued (and run twice).
        self._dispatched.set()
        heartbeat.join()
        for _ in self._slots:
            self._work.put(None)
        for watcher in self._watchers:
            watcher.stop()
        _wake.unregister(self._wake_key, self._doorbell)
        self._stopped.set()
        log.info("worker_stopped", worker=self.id)

    def wait(self) -> None:
        self._stopped.wait()

    @property
    def held_count(self) -> int:
        with self._lock:
            return len(self._held)

    def _make_watchers(self) -> list[_wake.SqliteWatcher | _wake.PostgresListener]:
        engine = self.db.engine
        if engine.dialect.name == "postgresql":
            return [_wake.PostgresListener(_wake.psycopg_conninfo(engine), self._doorbell)]
        path = engine.url.database
        if path and path != ":memory:":
            return [
                _wake.SqliteWatcher(path, self._doorbell, self.settings.job_sqlite_watch_seconds)
            ]
        return []

    # -- job threads ---------------------------------------------------------

    def _start_slot(self) -> _Slot:
        slot = _Slot(threading.Thread(name="opsline-job", daemon=True, target=lambda: None))
        slot.thread = threading.Thread(
            target=self._slot_loop, args=(slot,), name="opsline-job", daemon=True
        )
        slot.thread.start()
        return slot

    def _slot_loop(self, slot: _Slot) -> None:
        while not slot.retired.is_set():
            held = self._work.get()
            if held is None:
                return
            try:
                outcome = self._run_held(held)
            except JobTimeout:
                return  # the asynchronous timeout landed after the handler returned
            if outcome is None:
                continue
            self._results.put(outcome)
            self._wake.set()

    def _run_held(self, held: _Held) -> Outcome | None:
        with self._lock:
            if held.job.id not in self._held:
                return None  # given back during shutdown
            held.thread_id = threading.get_ident()
            if held.timeout:
                held.deadline = time.monotonic() + held.timeout
        outcome = execute(held.job, held.ctx, self._limiter)
        with self._lock:
            if held.abandoned:
                raise JobTimeout  # this thread was replaced; its result is void
            held.deadline = None
        return outcome

    # -- dispatcher ----------------------------------------------------------

    _grace: float | None = None

    def _dispatch_loop(self) -> None:
        idle = False
        next_promote = 0.0
        pending: list[Outcome] = []
        grace_until: float | None = None
        while True:
            self._wake.clear()
            pending += self._drain_results()
            pending += self._check_timeouts()
            stopping = self._stopping.is_set()
            if stopping and grace_until is None:
                grace_until = time.monotonic() + self._grace_seconds()
                self._give_back_unstarted()
            with self._lock:
                # Jobs whose outcome this cycle acks free their slot in the same transaction.
                free = 0 if stopping else self.capacity - len(self._held) + len(pending)
            # A full worker is woken by its own results, then claims from the database.
            self._doorbell.listen(free > 0)
            now = time.monotonic()
            promote = not stopping and now >= next_promote
            if promote:
                self._planner.empty.clear()
            plan = self._planner.plan(free) if free > 0 and (not idle or promote) else []
            claimed: list[ClaimedJob] = []
            acked = bool(pending)
            if pending or plan or promote:
                result = self._cycle(pending, plan, promote)
                if result is None:
                    self._stopping.wait(0.5)  # database unreachable: back off, keep outcomes
                    continue
                claimed, applied = result
                self._after_cycle(pending, applied, claimed)
                pending = []
                if promote:
                    next_promote = now + PROMOTE_SECONDS
                if plan:
                    self._planner.note_claimed(plan, claimed)
                    idle = self._planner.all_empty
            if stopping and (self.held_count == 0 or time.monotonic() >= (grace_until or 0)):
                self._give_back_all()
                return
            if not claimed and not acked:
                timeout = min(self.settings.job_poll_seconds, PROMOTE_SECONDS)
                self._wake.wait(timeout)
                self._planner.empty.clear()  # woken (enqueue, change) or polling: look again
                idle = False

    def _grace_seconds(self) -> float:
        return self._grace if self._grace is not None else self.settings.job_shutdown_grace_seconds

    def _cycle(
        self, pending: list[Outcome], plan: list[tuple[str, int]], promote: bool
    ) -> tuple[list[ClaimedJob], Applied] | None:
        try:
            return self.store.cycle(pending, plan, promote=promote)
        except DBAPIError:
            log.warning("worker_cycle_failed", worker=self.id, exc_info=True)
            return None
        except Exception:
            # A bug must not kill the dispatcher silently: log it and keep trying.
            log.exception("worker_cycle_crashed", worker=self.id)
            return None

    def _drain_results(self) -> list[Outcome]:
        out: list[Outcome] = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue_module.Empty:
                return out

    def _after_cycle(
        self, pending: list[Outcome], applied: Applied, claimed: list[ClaimedJob]
    ) -> None:
        with self._lock:
            # Outcomes fenced out belong to attempts that were rescued: forget them too.
            for outcome in pending:
                current = self._held.get(outcome.job.id)
                if current is not None and current.job.attempt == outcome.job.attempt:
                    del self._held[outcome.job.id]
            for job in claimed:
                definition = find_job(job.name)
                timeout = definition.timeout if definition is not None else None
                held = _Held(job, self._context(job), timeout)
                self._held[job.id] = held
                self._work.put(held)
        for outcome in applied.outcomes:
            _count(outcome)
        pubsub = changes.pubsub_for(self.db.engine)
        if pubsub is not None and applied.outcomes:
            changes.send(pubsub, changes.job_changes(applied.outcomes))
        if applied.finished_batches:
            log.info("batches_finished", batches=[str(b) for b in applied.finished_batches])

    def _context(self, job: ClaimedJob) -> JobContext:
        return JobContext(
            job_id=job.id,
            name=job.name,
            queue=job.queue,
            tenant_id=job.tenant_id,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            batch_id=job.batch_id,
            db=self.db,
            settings=self.settings,
            loop=self._loop,
        )

    def _check_timeouts(self) -> list[Outcome]:
        now = time.monotonic()
        expired: list[_Held] = []
        with self._lock:
            for held in self._held.values():
                if held.deadline is not None and now > held.deadline and not held.abandoned:
                    held.abandoned = True
                    expired.append(held)
        outcomes = []
        for held in expired:
            held.ctx.cancel_event.set()
            if held.thread_id is not None:
                _raise_in_thread(held.thread_id, JobTimeout)
            error = JobTimeout(f"job ran past its timeout of {held.timeout}s")
            failure = failure_for(held.job, error, policy=_policy(held.job.name))
            outcomes.append(Outcome(held.job, "failed", failure))
            self._slots.append(self._start_slot())
        return outcomes

    def _give_back_unstarted(self) -> None:
        unstarted: list[ClaimedJob] = []
        while True:
            try:
                held = self._work.get_nowait()
            except queue_module.Empty:
                break
            if held is not None:
                unstarted.append(held.job)
        with self._lock:
            for job in unstarted:
                self._held.pop(job.id, None)
        self._safe_release(unstarted)

    def _give_back_all(self) -> None:
        with self._lock:
            jobs = [held.job for held in self._held.values()]
            for held in self._held.values():
                held.abandoned = True
                held.ctx.cancel_event.set()
            self._held.clear()
        self._safe_release(jobs)

    def _safe_release(self, jobs: list[ClaimedJob]) -> None:
        try:
            self.store.release(jobs)
        except DBAPIError:
            log.warning("worker_release_failed", worker=self.id, exc_info=True)

    # -- heartbeat -----------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        lease = self.settings.job_lease_seconds
        next_rescue = 0.0
        while not self._dispatched.wait(lease / 3):
            try:
                self._renew()
                if not self._stopping.is_set() and time.monotonic() >= next_rescue:
                    next_rescue = time.monotonic() + lease / 2
                    if rescue_expired(self.db):
                        self._wake.set()
            except DBAPIError:
                log.warning("worker_heartbeat_failed", worker=self.id, exc_info=True)

    def _renew(self) -> None:
        with self._lock:
            held = list(self._held.values())
        owned, cancelled = self.store.heartbeat([h.job for h in held])
        with self._lock:
            for item in held:
                if item.job.id in cancelled or item.job.id not in owned:
                    item.ctx.cancel_event.set()
                if item.job.id not in owned and self._held.get(item.job.id) is item:
                    # The lease was lost (job rescued); its result will be ignored.
                    del self._held[item.job.id]


def _policy(name: str) -> RetryPolicy | None:
    definition = find_job(name)
    return definition.retry if definition is not None else None


def _count(outcome: Outcome) -> None:
    queue = outcome.job.queue
    if outcome.status == "succeeded":
        metrics.JOBS_SUCCEEDED.labels(queue).inc()
    elif outcome.status == "failed":
        metrics.JOBS_FAILED.labels(queue).inc()
        if outcome.failure is not None and outcome.failure.retry_at is None:
            metrics.JOBS_DEAD.labels(queue).inc()
    metrics.JOB_RUN_SECONDS.labels(queue).observe(outcome.seconds)


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )
