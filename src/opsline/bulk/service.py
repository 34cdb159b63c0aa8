"""Use cases of bulk actions; the only place that opens a unit of work.

Every function takes a :class:`Context` first. The tenant comes from the
principal only: a run, its records, its snapshots and its export are always
looked up within that tenant (another tenant's run is a 404).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opsline.bulk import _confirm, _preview, _restored, _runs, _start
from opsline.bulk._spec import (
    Spec,
    build_spec,
    check_permission,
    needs_confirmation,
    require_confirmation,
    resource_for,
)
from opsline.bulk.errors import BulkLimitExceeded, InvalidBulkRequest, RunStateConflict
from opsline.bulk.models import BulkRun, failures_table, runs_table
from opsline.bulk.schemas import (
    ACTIVE_STATUSES,
    BulkRequest,
    FailureOut,
    PreviewOut,
    RescheduleRequest,
    RunOut,
    ScheduleRequest,
)
from opsline.db import UnitOfWork, as_utc, new_id, utcnow
from opsline.platform.context import Context
from opsline.platform.engine.enqueue import enqueue
from opsline.platform.http.pagination import Page, keyset_page
from opsline.platform.http.problems import Problem
from opsline.platform.idempotency.service import Outcome, fingerprint, run_idempotent

START_SCHEDULED = "bulk.start_scheduled"
R = runs_table.c


def preview(ctx: Context, body: BulkRequest) -> PreviewOut:
    """Dry run: count, sample before/after, warnings and a confirmation token."""
    return _preview.preview(ctx, build_spec(ctx, body))


def _count(ctx: Context, spec: Spec) -> int:
    from opsline.bulk._selection import selection_clause

    clause = selection_clause(spec.resource, ctx.tenant_id, spec.where, spec.ids)
    with ctx.db.read() as session:
        table = spec.resource.table
        return int(session.scalar(select(func.count()).select_from(table).where(clause)) or 0)


def _guard(ctx: Context, spec: Spec, token: str | None) -> str | None:
    """Confirmation (409) and size limit (429) before anything is written.

    Returns the digest of ``token`` when it confirms this very request (the run
    uses it up, needed or not), else None.
    """
    count = _count(ctx, spec)
    if count > ctx.settings.bulk_max_records:
        raise BulkLimitExceeded(
            f"the selection has {count} records; at most {ctx.settings.bulk_max_records} "
            "per run: narrow it down or split it"
        )
    if needs_confirmation(ctx, spec, count):
        require_confirmation(ctx, spec, token)
    if token and _confirm.verify(ctx.settings, token, spec.fingerprint(ctx.principal)) is None:
        return _confirm.digest(token)
    return None


def _check_concurrency(ctx: Context, session: Any) -> None:
    limit = ctx.settings.bulk_max_concurrent_runs
    if _runs.count_active(session, ctx.tenant_id) >= limit:
        raise BulkLimitExceeded(
            f"this tenant already has {limit} bulk runs in progress; wait for one to finish",
            headers={"Retry-After": "5"},
        )


def _start_now(uow: UnitOfWork, ctx: Context, body: BulkRequest) -> BulkRun:
    """Create the run and start it in ``uow``: the selection resolved, its chunk jobs queued."""
    spec = build_spec(ctx, body)
    _confirm.check_unused(uow, ctx.tenant_id, body.confirmation_token)
    digest = _guard(ctx, spec, body.confirmation_token)
    _check_concurrency(ctx, uow.session)
    now = utcnow()
    run = _runs.new_run(ctx, spec, status="running", now=now)
    run.started_at, run.confirmation_digest = now, digest
    _confirm.add_run(uow, run)
    _start.start_run(uow, run, spec.resource, ctx.settings)
    return run


def execute(ctx: Context, body: BulkRequest) -> RunOut:
    """Start a run now: the selection is resolved and its chunk jobs queued in one transaction.

    A confirmation token that confirms this request is used up by the run, in
    that transaction: another run with it is a 409 naming this one.
    """
    with ctx.db.unit_of_work() as uow:
        run = _start_now(uow, ctx, body)
    return _runs.to_out(run)


class _Unstored(Exception):
    """A refusal that must not become the Idempotency-Key's stored answer (a
    limit's 429: the same request may succeed later), carried past
    :func:`run_idempotent`, which stores every :class:`Problem`."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.problem = problem


RequestT = TypeVar("RequestT", bound=BulkRequest)


def _once(
    ctx: Context,
    body: RequestT,
    *,
    path: str,
    status: int,
    idempotency_key: str | None,
    create: Callable[[UnitOfWork, Context, RequestT], BulkRun],
) -> Outcome:
    """``create`` once per Idempotency-Key (see opsline.platform.idempotency).

    The key and the run commit together. The same key and body replay the
    first answer (even once its token expired or was used, by that very run);
    another body is a 422; the same key while its first request is still in
    flight a 409. Limits (429) are not kept: a retry after ``Retry-After``
    runs afresh.
    """

    def action(uow: UnitOfWork) -> dict[str, Any]:
        try:
            run = create(uow, ctx, body)
        except BulkLimitExceeded as exc:
            raise _Unstored(exc) from None
        return _runs.to_out(run).model_dump(mode="json")

    # The body as canonical text: the stdlib's JSON writes any integer (orjson's
    # stops at 64 bits, and a too large number must be the 422 of validation).
    sent = json.dumps(body.model_dump(mode="json"), sort_keys=True) if idempotency_key else ""
    try:
        return run_idempotent(
            ctx,
            key=idempotency_key,
            request_fingerprint=fingerprint("POST", path, sent),
            status=status,
            action=action,
        )
    except _Unstored as exc:
        raise exc.problem from None


def execute_once(ctx: Context, body: BulkRequest, *, idempotency_key: str | None) -> Outcome:
    """``POST /runs``: :func:`execute`, once per ``Idempotency-Key`` (202)."""
    return _once(
        ctx,
        body,
        path="/api/v1/bulk/runs",
        status=202,
        idempotency_key=idempotency_key,
        create=_start_now,
    )


def _as_utc_time(run_at: datetime, timezone: str | None) -> datetime:
    if timezone is not None:
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidBulkRequest(
                f"unknown time zone {timezone!r}; use an IANA name like Europe/Paris",
                errors=[{"loc": ["body", "timezone"], "msg": "unknown time zone"}],
            ) from None
        if run_at.tzinfo is None:
            run_at = run_at.replace(tzinfo=zone)
    if run_at.tzinfo is None:
        raise InvalidBulkRequest(
            "run_at needs an offset or a timezone",
            errors=[{"loc": ["body", "run_at"], "msg": "naive time without timezone"}],
        )
    try:
        at = as_utc(run_at)
    except OverflowError:
        raise InvalidBulkRequest(
            "run_at is out of range",
            errors=[{"loc": ["body", "run_at"], "msg": "out of range"}],
        ) from None
    if at <= utcnow():
        raise InvalidBulkRequest(
            "run_at must be in the future",
            errors=[{"loc": ["body", "run_at"], "msg": "in the past"}],
        )
    return at


def _plan_later(uow: UnitOfWork, ctx: Context, body: ScheduleRequest) -> BulkRun:
    """Create a scheduled run and its start job in ``uow``; its token is used up now."""
    spec = build_spec(ctx, body)
    at = _as_utc_time(body.run_at, body.timezone)
    _confirm.check_unused(uow, ctx.tenant_id, body.confirmation_token)
    digest = _guard(ctx, spec, body.confirmation_token)
    run = _runs.new_run(ctx, spec, status="scheduled", now=utcnow())
    run.scheduled_at, run.timezone, run.confirmation_digest = at, body.timezone, digest
    _confirm.add_run(uow, run)
    enqueue(uow, START_SCHEDULED, {"run_id": run.id, "at": at}, tenant_id=ctx.tenant_id, run_at=at)
    return run


def schedule(ctx: Context, body: ScheduleRequest) -> RunOut:
    """Schedule a run; its selection is resolved when it starts. Confirmation is checked now.

    When it is due, its author must still hold the action's permission (see
    ``bulk.start_scheduled``); otherwise it fails, having changed nothing.
    """
    with ctx.db.unit_of_work() as uow:
        run = _plan_later(uow, ctx, body)
    return _runs.to_out(run)


def schedule_once(ctx: Context, body: ScheduleRequest, *, idempotency_key: str | None) -> Outcome:
    """``POST /schedules``: :func:`schedule`, once per ``Idempotency-Key`` (201)."""
    return _once(
        ctx,
        body,
        path="/api/v1/bulk/schedules",
        status=201,
        idempotency_key=idempotency_key,
        create=_plan_later,
    )


def reschedule(ctx: Context, run_id: uuid.UUID, body: RescheduleRequest) -> RunOut:
    """Move a scheduled run; needs the permission its action needs (403), as undo does."""
    at = _as_utc_time(body.run_at, body.timezone)
    with ctx.db.unit_of_work() as uow:
        run = _runs.get_run(uow.session, ctx.tenant_id, run_id)
        check_permission(ctx.principal, resource_for(run.resource), run.action)
        if run.status != "scheduled":
            raise RunStateConflict(f"run {run_id} is {run.status}; only scheduled runs move")
        run.scheduled_at, run.timezone, run.updated_at = at, body.timezone, utcnow()
        enqueue(
            uow, START_SCHEDULED, {"run_id": run.id, "at": at}, tenant_id=ctx.tenant_id, run_at=at
        )
    return _runs.to_out(run)


def get_run(ctx: Context, run_id: uuid.UUID) -> RunOut:
    with ctx.db.read() as session:
        return _runs.to_out(_runs.get_run(session, ctx.tenant_id, run_id))


def list_runs(
    ctx: Context,
    *,
    cursor: str | None,
    limit: int,
    status: str | None = None,
    action: str | None = None,
    resource: str | None = None,
    kind: str | None = None,
) -> Page[RunOut]:
    """Newest first; the audit log of bulk actions and undos."""
    stmt = select(BulkRun).where(
        *_runs.run_filters(
            ctx.tenant_id, status=status, action=action, resource=resource, kind=kind
        )
    )
    with ctx.db.read() as session:
        rows, next_cursor = keyset_page(
            stmt,
            columns=[BulkRun.created_at, BulkRun.id],
            cursor=cursor,
            limit=limit,
            fetch=lambda s: session.scalars(s).all(),
            key=lambda r: (r.created_at, r.id),
            kinds=[datetime, uuid.UUID],
        )
        return Page(items=[_runs.to_out(r) for r in rows], next_cursor=next_cursor)


def list_failures(
    ctx: Context, run_id: uuid.UUID, *, cursor: str | None, limit: int
) -> Page[FailureOut]:
    F = failures_table.c
    with ctx.db.read() as session:
        _runs.get_run(session, ctx.tenant_id, run_id)
        stmt = select(F.id, F.record_id, F.reason).where(
            F.run_id == run_id, F.tenant_id == ctx.tenant_id
        )
        rows, next_cursor = keyset_page(
            stmt,
            columns=[F.id],
            cursor=cursor,
            limit=limit,
            descending=False,
            fetch=lambda s: session.execute(s).all(),
            key=lambda r: (r.id,),
            kinds=[int],
        )
    items = [FailureOut(record_id=r.record_id, reason=r.reason) for r in rows]
    return Page(items=items, next_cursor=next_cursor)


def cancel_run(ctx: Context, run_id: uuid.UUID) -> RunOut:
    """Pending chunks never start; a chunk committing later rolls back; status stays cancelled.

    Needs the permission the run's action needs (403), as undo does. Idempotent
    on a cancelled run; 409 on a finished one.
    """
    with ctx.db.unit_of_work() as uow:
        run = _runs.get_run(uow.session, ctx.tenant_id, run_id)
        check_permission(ctx.principal, resource_for(run.resource), run.action)
        run = _runs.lock_run(uow.session, run_id) or run
        if run.status == "cancelled":
            return _runs.to_out(run)
        if run.status not in ("scheduled", "running"):
            raise RunStateConflict(f"run {run_id} already finished ({run.status})")
        _runs.cancel(uow, run)
    return _runs.to_out(run)


def undo_run(ctx: Context, run_id: uuid.UUID, *, force: bool = False) -> RunOut:
    """Start the undo of a run as its own run (a batch of one job per changed chunk).

    A run whose undo was cancelled, failed or completed with errors may be undone
    again: the new undo
    restores only the records no earlier undo restored (those refused or skipped
    are tried again, with this ``force``); its ``total`` counts only those, and
    a chunk with none left is not queued. 409 while an undo of it is running,
    once it was undone, or when its undo data expired.
    """
    with ctx.db.unit_of_work() as uow:
        run = _runs.get_run(uow.session, ctx.tenant_id, run_id)
        run = _runs.lock_run(uow.session, run_id) or run
        _check_undoable(ctx, uow.session, run)
        _check_concurrency(ctx, uow.session)
        chunks = _restored.chunks_to_undo(uow.session, ctx.tenant_id, run.id)
        undo = _undo_row(ctx, run, force)
        uow.session.add(undo)
        run.undone_by = undo.id
        _start.start_undo(uow, undo, chunks)
    return _runs.to_out(undo)


def _check_undoable(ctx: Context, session: Session, run: BulkRun) -> None:
    check_permission(ctx.principal, resource_for(run.resource), run.action)
    if run.kind == "undo":
        raise RunStateConflict("an undo cannot be undone")
    if run.undo_days is None:
        raise RunStateConflict(f"{run.action} runs keep no undo data")
    if run.started_at is None:
        raise RunStateConflict(f"run {run.id} never started: there is nothing to undo")
    if run.undo_expires_at is None or as_utc(run.undo_expires_at) <= utcnow():
        raise RunStateConflict(f"the undo data of run {run.id} expired and was purged")
    if run.status in ("scheduled", "running"):
        raise RunStateConflict(f"run {run.id} is {run.status}; cancel it or wait for it to end")
    if run.undone_by is not None:
        _check_earlier_undo(session, run, run.undone_by)


def _check_earlier_undo(session: Session, run: BulkRun, undo_id: uuid.UUID) -> None:
    """409 unless the last undo of ``run`` ended with records left (``ENDED_UNDO``)."""
    status = session.scalar(select(R.status).where(R.id == undo_id))
    if status in _restored.ENDED_UNDO:
        return
    if status in ACTIVE_STATUSES:
        raise RunStateConflict(
            f"run {run.id} is being undone by run {undo_id}, which is still {status}: "
            "wait for it to end, or cancel it and undo again"
        )
    raise RunStateConflict(f"run {run.id} was already undone by run {undo_id} ({status})")


def _undo_row(ctx: Context, run: BulkRun, force: bool) -> BulkRun:
    now = utcnow()
    return BulkRun(
        id=new_id(),
        tenant_id=ctx.tenant_id,
        kind="undo",
        resource=run.resource,
        action=run.action,
        status="running",
        filters=run.filters,
        record_ids=None,
        params={"force": force},
        batch_size=run.batch_size,
        undo_of=run.id,
        force=force,
        actor=ctx.principal.subject,
        actor_role=ctx.principal.role.value,
        user_id=ctx.principal.user_id,
        ip=ctx.request.ip,
        user_agent=(ctx.request.user_agent or "")[:400] or None,
        total=0,
        processed=0,
        failed=0,
        created_at=now,
        started_at=now,
        updated_at=now,
    )


def get_undo(ctx: Context, run_id: uuid.UUID) -> RunOut:
    """The undo run of ``run_id`` (404 when it was not undone)."""
    with ctx.db.read() as session:
        run = _runs.get_run(session, ctx.tenant_id, run_id)
        if run.undone_by is None:
            from opsline.bulk.errors import RunNotFound

            raise RunNotFound(f"run {run_id} was not undone")
        return _runs.to_out(_runs.get_run(session, ctx.tenant_id, run.undone_by))


MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}


def export_run(ctx: Context, run_id: uuid.UUID, fmt: str) -> tuple[str, Iterator[bytes]]:
    """The run's affected records (selected, not failed) as a stream in ``fmt``.

    Returns the file name and the byte stream; rows are read in pages while
    streaming, always within the caller's tenant.
    """
    from opsline.bulk import _export

    with ctx.db.read() as session:
        run = _runs.get_run(session, ctx.tenant_id, run_id)
        resource = resource_for(run.resource)
        check_permission(ctx.principal, resource, "export")
    header = [f.name for f in resource.fields]
    rows = _export_rows(ctx, run, [f.column_name for f in resource.fields])
    name = f"bulk-{run.resource}-{run.id}.{fmt}"
    title = f"{run.resource} - {run.action} run {run.id}"
    return name, _export.stream(fmt, title, header, rows)


def export_audit(
    ctx: Context,
    fmt: str,
    *,
    status: str | None = None,
    action: str | None = None,
    resource: str | None = None,
    kind: str | None = None,
) -> tuple[str, Iterator[bytes]]:
    """The tenant's audit log of runs and undos (filtered like :func:`list_runs`) as a stream."""
    from opsline.bulk import _audit

    filters = {"status": status, "action": action, "resource": resource, "kind": kind}
    return _audit.export_audit(ctx, fmt, filters)


def _export_rows(ctx: Context, run: BulkRun, columns: list[str]) -> Iterator[tuple[Any, ...]]:
    from opsline.bulk import _export
    from opsline.bulk.models import items_table

    table = resource_for(run.resource).table
    items, fails = items_table.c, failures_table.c
    chosen = select(items.record_id).where(items.run_id == run.id)
    failed = select(fails.record_id).where(fails.run_id == run.id)
    after: Any = None
    while True:
        stmt = select(table.c.id, *[table.c[c] for c in columns]).where(
            table.c.tenant_id == ctx.tenant_id,
            table.c.id.in_(chosen),
            table.c.id.not_in(failed),
        )
        if after is not None:
            stmt = stmt.where(table.c.id > after)
        with ctx.db.read() as session:
            page = session.execute(stmt.order_by(table.c.id).limit(_export.PAGE)).all()
        for row in page:
            yield tuple(row[1:])
        if len(page) < _export.PAGE:
            return
        after = page[-1][0]
