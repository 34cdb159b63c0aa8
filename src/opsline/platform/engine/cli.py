"""Command-line interface of the engine: ``worker``, ``scheduler``, ``jobs``, ``events``.

Operator commands act on every tenant unless ``--tenant`` narrows them.
Registered on the root app by ``register(app)``.
"""

from __future__ import annotations

import re
import signal
import threading
import uuid
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from opsline.db import BIGINT_MAX, Database
from opsline.platform.clitools import id_column, one_line, resolve_tenant, table
from opsline.platform.engine import service
from opsline.platform.engine.registry import QUEUES
from opsline.platform.engine.schemas import JobOut
from opsline.platform.engine.service import Scope
from opsline.platform.http.pagination import Page

jobs_app = typer.Typer(help="Inspect, retry, cancel and flush jobs.", no_args_is_help=True)
events_app = typer.Typer(help="Read and replay the event log.", no_args_is_help=True)

JobIdArgument = Annotated[int, typer.Argument(min=1, max=BIGINT_MAX, help="The job's id.")]
TenantOption = Annotated[
    str | None,
    typer.Option(
        "--tenant",
        metavar="TENANT",
        help="Only this tenant, by id or slug (default: all).",
        callback=one_line,
    ),
]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 30m, 12h or 7d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_since(text: str) -> datetime:
    """An ISO timestamp (UTC if naive) or a duration ago (``2h``)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return datetime.now(UTC) - parse_duration(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _tenant_id(db: Database, tenant: str | None) -> uuid.UUID | None:
    """The id of the tenant given by id or slug, None for all; an unknown one exits 1."""
    return None if tenant is None else resolve_tenant(db, tenant)


def _scope(db: Database, tenant: str | None) -> Scope:
    tenant_id = _tenant_id(db, tenant)
    return Scope.operator() if tenant_id is None else Scope(tenant_id)


def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues.", callback=one_line)
    ] = ",".join(QUEUES),
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Threads per process.")] = 8,
    processes: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    prefetch: Annotated[
        int | None,
        typer.Option(
            min=0, max=4096, help="Jobs claimed ahead of free threads (default: 3 x concurrency)."
        ),
    ] = None,
    imports: Annotated[
        list[str] | None, typer.Option("--import", help="Extra module declaring jobs.")
    ] = None,
) -> None:
    """Run jobs until SIGTERM/SIGINT (then finish running jobs within the grace period)."""
    from opsline.platform.clitools import fail
    from opsline.platform.engine.processes import run_worker, spawn_workers
    from opsline.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    names = [q for q in queues.split(",") if q]
    if unknown := [q for q in names if q not in QUEUES]:
        raise fail(f"unknown queues {unknown}; choose among {list(QUEUES)}", 2)
    if processes == 1:
        run_worker(
            settings,
            queues=names,
            concurrency=concurrency,
            imports=imports or (),
            prefetch=prefetch,
        )
        return
    group = spawn_workers(
        settings,
        processes=processes,
        queues=names,
        concurrency=concurrency,
        imports=imports or (),
        prefetch=prefetch,
    )
    _wait_for_signal()
    group.stop(timeout=settings.job_shutdown_grace_seconds + 10)


def _wait_for_signal() -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        pass


def scheduler() -> None:
    """Enqueue periodic jobs; only one scheduler is active at a time (database lease)."""
    from opsline.platform.clitools import cli_runtime
    from opsline.platform.engine.scheduler import Scheduler

    with cli_runtime() as runtime:
        service_ = Scheduler(runtime.db, runtime.settings)
        service_.start()
        try:
            _wait_for_signal()
        finally:
            service_.stop()


def _jobs_table(page: Page[JobOut]) -> Table:
    # Job ids are integers; a column of jobs without a tenant ("-") stays narrow.
    rows = table(
        id_column(min_width=None),
        "name",
        "queue",
        "state",
        "attempt",
        id_column("tenant", min_width=None),
        "run at",
        "last error",
    )
    for job in page.items:
        rows.add_row(
            str(job.id),
            Text(job.name),
            Text(job.queue),
            job.state,
            f"{job.attempt}/{job.max_attempts}",
            str(job.tenant_id or "-"),
            job.run_at.isoformat(timespec="seconds"),
            Text((job.last_error or "")[:60]),
        )
    return rows


@jobs_app.command("list")
def list_jobs(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue.", callback=one_line)] = None,
    name: Annotated[str | None, typer.Option(help="Only this job name.", callback=one_line)] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    cursor: Annotated[str | None, typer.Option(help="next cursor of the previous page")] = None,
    tenant: TenantOption = None,
) -> None:
    """List jobs, newest first."""
    from opsline.platform.clitools import cli_runtime, console

    with cli_runtime() as runtime:
        page = service.list_jobs(
            runtime.db,
            _scope(runtime.db, tenant),
            state=state,
            queue=queue,
            name=name,
            limit=limit,
            cursor=cursor,
        )
    console.print(_jobs_table(page))
    if page.next_cursor:
        console.print(f"next page: --cursor {page.next_cursor}")


@jobs_app.command("failed")
def failed(
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50, tenant: TenantOption = None
) -> None:
    """List dead jobs (attempts exhausted)."""
    list_jobs(state="dead", queue=None, name=None, limit=limit, cursor=None, tenant=tenant)


@jobs_app.command("show")
def show(job_id: JobIdArgument, tenant: TenantOption = None) -> None:
    """Show a job, its arguments and every failed attempt with its traceback."""
    from opsline.platform.clitools import cli_runtime, console

    with cli_runtime() as runtime:
        job = service.get_job(runtime.db, _scope(runtime.db, tenant), job_id)
    console.print_json(job.model_dump_json(exclude={"errors"}))
    for error in job.errors:
        console.rule(f"attempt {error.attempt}: {escape(f'{error.error_type} ({error.worker})')}")
        console.print(error.traceback or error.message, markup=False, highlight=False)


@jobs_app.command("retry")
def retry(
    job_id: Annotated[
        int | None, typer.Argument(min=1, max=BIGINT_MAX, help="The job to retry.")
    ] = None,
    all_dead: Annotated[bool, typer.Option("--all", help="Retry every dead job.")] = False,
    tenant: TenantOption = None,
) -> None:
    """Retry one job now, or every dead job with --all."""
    from opsline.platform.clitools import cli_runtime, console, fail

    if (job_id is None) == (not all_dead):
        raise fail("give a job id or --all (not both)", 2)
    with cli_runtime() as runtime:
        scope = _scope(runtime.db, tenant)
        if all_dead:
            console.print(f"{service.retry_dead(runtime.db, scope)} dead jobs retried")
        else:
            assert job_id is not None
            job = service.retry_job(runtime.db, scope, job_id)
            console.print(f"job {job.id} is {job.state}")


@jobs_app.command("cancel")
def cancel(job_id: JobIdArgument, tenant: TenantOption = None) -> None:
    """Cancel a pending job, or ask a running one to stop at its next check."""
    from opsline.platform.clitools import cli_runtime, console

    with cli_runtime() as runtime:
        job = service.cancel_job(runtime.db, _scope(runtime.db, tenant), job_id)
    note = " (cancellation requested)" if job.state == "running" else ""
    console.print(f"job {job.id} is {job.state}{note}")


@jobs_app.command("flush")
def flush(
    dead: Annotated[bool, typer.Option("--dead", help="Delete dead jobs.")] = False,
    older_than: Annotated[
        str | None, typer.Option(help="Only jobs dead for longer than this (7d, 12h).")
    ] = None,
    tenant: TenantOption = None,
) -> None:
    """Delete dead jobs and their recorded errors."""
    from opsline.platform.clitools import cli_runtime, console, fail

    if not dead:
        raise fail("say what to flush: --dead", 2)
    age = parse_duration(older_than) if older_than else None
    with cli_runtime() as runtime:
        count = service.flush_dead(runtime.db, _scope(runtime.db, tenant), older_than=age)
    console.print(f"{count} dead jobs deleted")


@events_app.command("list")
def list_events(
    event_type: Annotated[str | None, typer.Option("--type", help="Only this type.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time or a duration ago (2h).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    tenant: TenantOption = None,
) -> None:
    """List logged events, newest first."""
    from opsline.platform.clitools import cli_runtime, console

    with cli_runtime() as runtime:
        page = service.list_events(
            runtime.db,
            _scope(runtime.db, tenant),
            type=event_type,
            since=parse_since(since) if since else None,
            limit=limit,
        )
    # Two ids do not fit whole beside the rest in 80 columns: the tenant, which
    # --tenant takes, is kept whole; the event's own id folds onto a second line.
    rows = table("occurred at", "type", "v", id_column("tenant", min_width=None), "id")
    for event in page.items:
        rows.add_row(
            event.occurred_at.isoformat(timespec="seconds"),
            Text(event.type),
            str(event.version),
            str(event.tenant_id or "-"),
            str(event.id),
        )
    console.print(rows)


@events_app.command("replay")
def replay(
    listener: Annotated[
        str, typer.Option(help="The listener (job name) to run again.", callback=one_line)
    ],
    since: Annotated[str, typer.Option(help="ISO time or a duration ago (2h).")],
    until: Annotated[str | None, typer.Option(help="ISO time (exclusive).")] = None,
    tenant: TenantOption = None,
) -> None:
    """Enqueue one listener again for every logged event of its type since a time."""
    from opsline.platform.clitools import cli_runtime, console, fail
    from opsline.platform.engine.events import replay as replay_events

    with cli_runtime() as runtime:
        tenant_id = _tenant_id(runtime.db, tenant)
        try:
            count = replay_events(
                runtime.db,
                listener_name=listener,
                since=parse_since(since),
                until=parse_since(until) if until else None,
                tenant_id=tenant_id,
                all_tenants=tenant_id is None,
            )
        except LookupError as exc:
            raise fail(str(exc)) from None
    console.print(f"{count} events replayed to {listener}")


def register(app: typer.Typer) -> None:
    app.command()(worker)
    app.command()(scheduler)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(events_app, name="events")
