"""Starting a run: resolve the selection once into numbered items, then one batch of chunk jobs.

The selection is copied with one ``INSERT ... SELECT`` numbering records in
storage order (neighbouring rows share a chunk, see :func:`_sql.storage_order`)
into chunks of ``batch_size`` (``row_number()``), in the transaction that
creates the batch, so records created later are never touched and every
chunk job knows exactly its records.

A scheduled run starts only if its author still may run it: :func:`author_role`
reads who they are now (their membership, their API key), not who they were
when they scheduled it.
"""

from __future__ import annotations

import math
import uuid
from datetime import timedelta

from sqlalchemy import Integer, cast, func, insert, literal, select
from sqlalchemy.orm import Session

from opsline.bulk import _sql, events
from opsline.bulk._runs import announce, event_fields
from opsline.bulk._selection import selection_clause
from opsline.bulk.errors import BulkLimitExceeded
from opsline.bulk.models import BulkRun, items_table
from opsline.bulk.permissions import BULK_RUN
from opsline.db import UnitOfWork
from opsline.platform.auth.models import ApiKey, User
from opsline.platform.auth.roles import Role
from opsline.platform.context import Principal
from opsline.platform.engine.batches import create_batch
from opsline.platform.engine.enqueue import JobSpec
from opsline.platform.engine.events import publish
from opsline.platform.resources import Resource
from opsline.platform.tenancy.models import Membership
from opsline.settings import Settings

APPLY_CHUNK = "bulk.apply_chunk"
UNDO_CHUNK = "bulk.undo_chunk"
FINISH_RUN = "bulk.finish_run"


def resolve_selection(uow: UnitOfWork, run: BulkRun, resource: Resource) -> int:
    """Copy the selected ids into ``bulk_run_items``; returns how many."""
    table = resource.table
    ids = [uuid.UUID(i) for i in run.record_ids] if run.record_ids is not None else None
    clause = selection_clause(resource, run.tenant_id, run.filters, ids)
    position = _sql.storage_order(uow.session, table)
    number = func.row_number().over(order_by=position) - 1
    chosen = select(
        literal(run.id, items_table.c.run_id.type).label("run_id"),
        cast(number // run.batch_size, Integer).label("chunk"),
        table.c.id.label("record_id"),
    ).where(clause)
    uow.session.execute(insert(items_table).from_select(["run_id", "chunk", "record_id"], chosen))
    # rowcount of INSERT ... SELECT is not reported by every driver: count instead.
    counted = select(func.count()).where(items_table.c.run_id == run.id)
    return int(uow.session.scalar(counted) or 0)


def start_run(uow: UnitOfWork, run: BulkRun, resource: Resource, settings: Settings) -> None:
    """Resolve, create the batch of chunk jobs, mark running; in the caller's transaction."""
    total = resolve_selection(uow, run, resource)
    if total > settings.bulk_max_records:
        raise BulkLimitExceeded(
            f"the selection has {total} records; at most {settings.bulk_max_records} "
            "per run: narrow it down or split it"
        )
    chunks = math.ceil(total / run.batch_size)
    jobs = [
        JobSpec(APPLY_CHUNK, {"run_id": run.id, "chunk": c}, tenant_id=run.tenant_id)
        for c in range(chunks)
    ]
    _launch(uow, run, jobs, total)
    if run.undo_days is not None:
        assert run.started_at is not None
        run.undo_expires_at = run.started_at + timedelta(days=run.undo_days)
    publish(uow, events.BulkActionStarted(**event_fields(run)))


def start_undo(uow: UnitOfWork, run: BulkRun, chunks: list[tuple[int, int]]) -> None:
    """``chunks``: (chunk, records) of the original run's snapshots."""
    jobs = [
        JobSpec(UNDO_CHUNK, {"run_id": run.id, "chunk": c}, tenant_id=run.tenant_id)
        for c, _ in chunks
    ]
    _launch(uow, run, jobs, sum(n for _, n in chunks))


def _launch(uow: UnitOfWork, run: BulkRun, jobs: list[JobSpec], total: int) -> None:
    run.total = total
    run.status = "running"
    uow.session.flush()
    run.batch_id = create_batch(
        uow,
        jobs,
        name=f"bulk:{run.kind}:{run.resource}:{run.action}",
        tenant_id=run.tenant_id,
        on_complete=FINISH_RUN,
        callback_args={"run_id": str(run.id)},
    )
    uow.session.flush()
    announce(uow, run)


class AuthorRefused(Exception):
    """The run's author may no longer run it; the message says why (the run's error)."""


def _role_now(session: Session, run: BulkRun) -> Role | None:
    """The role ``run.actor`` holds in the run's tenant now; None if none any more."""
    kind, _, ident = run.actor.partition(":")
    if kind == "user" and run.user_id is not None:
        role = session.scalar(
            select(Membership.role)
            .join(User, User.id == Membership.user_id)
            .where(
                Membership.tenant_id == run.tenant_id,
                Membership.user_id == run.user_id,
                User.is_active.is_(True),
            )
        )
    elif kind == "apikey":
        try:
            key_id = uuid.UUID(ident)
        except ValueError:
            return None
        # The key's role now: capped at its maker's when they were demoted.
        role = session.scalar(
            select(ApiKey.role).where(
                ApiKey.id == key_id,
                ApiKey.tenant_id == run.tenant_id,
                ApiKey.revoked_at.is_(None),
            )
        )
    elif run.actor == "system":
        # No one to look up: the operator at the command line (system_principal, an
        # owner) or code acting with a principal of its own; their role stands.
        return Role(run.actor_role)
    else:
        return None
    return Role(role) if role is not None else None


def author_role(
    session: Session, run: BulkRun, resource: Resource, *, refused: str = "not started"
) -> Role:
    """The role the author of ``run`` holds now, if it still may run it (checked when
    a scheduled run is due, and before each chunk); ``refused`` begins the reason.

    A member must still be an active member of the run's tenant, an API key
    unrevoked, and the role they hold now must have ``bulk.run`` and the
    permission of the run's action on ``resource``. A ``system`` author (the
    command line) keeps the role it had. Raises :class:`AuthorRefused` otherwise.
    """
    role = _role_now(session, run)
    if role is None:
        if run.actor.startswith("apikey:"):
            raise AuthorRefused(f"{refused}: its API key ({run.actor}) was revoked")
        raise AuthorRefused(
            f"{refused}: its author ({run.actor}) is no longer an active member of this tenant"
        )
    principal = Principal(tenant_id=run.tenant_id, role=role, user_id=run.user_id)
    for permission in (BULK_RUN.name, resource.permission_for(run.action)):
        if permission is None or not principal.has(permission):
            raise AuthorRefused(
                f"{refused}: its author ({run.actor}) now has the role '{role}', which "
                f"lacks the permission '{permission}' to {run.action} {resource.name}"
            )
    return role
