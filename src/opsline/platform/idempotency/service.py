"""Idempotent creation: the key is claimed in the use case's own transaction.

The key row (tenant, principal, key), with a fingerprint of the request and the
response, is inserted in the use case's unit of work after its work, so either
the business rows and the key commit together or neither does; the unique
constraint decides which of two concurrent requests with one key commits:

- same key, same request, first one committed -> the stored response, replayed;
- same key, different request -> 422;
- same key while the first request's transaction is still open -> 409 at once
  (on PostgreSQL the key's row is inserted only by a transaction that holds a
  transaction-scoped advisory lock on the key, tried without waiting, in the
  same statement; SQLite runs one writer at a time, so the second request
  simply finds the first committed and replays it).

A refused use case (a 409 for lack of stock, say) stores its problem response
too: its work is rolled back, then the key is written with the problem.

A key lives 24 hours. Past them it is free for a new request even before the
hourly purge deletes it: the request that finds it expired deletes it and
claims the key afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import orjson
from sqlalchemy import Table, bindparam, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from opsline.db import Database, UnitOfWork, new_id, utcnow, values_insert
from opsline.platform.context import Context
from opsline.platform.http.problems import BadRequest, Conflict, Problem, Unprocessable
from opsline.platform.idempotency.models import IdempotencyKey

T = TypeVar("T")
TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255

K = IdempotencyKey
_KEYS = cast(Table, IdempotencyKey.__table__)
_COLUMNS = [c.name for c in _KEYS.columns]
# The advisory lock's first key sets our locks apart from other users' (and a
# two-key lock never collides with a one-key one); its second is the key's
# 32-bit hash: two different keys in flight at once share a lock one time in
# four billion, and the later one then answers a 409 that a retry clears.
ADVISORY_LOCK_CLASS = 0x4F4B
# PostgreSQL: the row goes in only if no open transaction claims this key, asked
# without waiting; one statement, one round trip.
_CLAIM_KEY_PG = (
    insert(_KEYS)
    .from_select(
        _COLUMNS,
        select(*(bindparam(name, type_=_KEYS.c[name].type) for name in _COLUMNS)).where(
            func.pg_try_advisory_xact_lock(
                ADVISORY_LOCK_CLASS, func.hashtext(bindparam("lock_key"))
            )
        ),
    )
    .returning(_KEYS.c.id)
)


class KeyInFlight(Conflict):
    type_slug = "idempotency-key-in-flight"
    title = "Request with this key in progress"


class KeyReused(Unprocessable):
    type_slug = "idempotency-key-reused"
    title = "Idempotency key reused with another request"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    body: dict[str, Any]
    replayed: bool


def fingerprint(method: str, path: str, body: Any) -> str:
    canonical = orjson.dumps([method, path, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def check_key(key: str | None, *, required: bool) -> str | None:
    if key is None or key == "":
        if required:
            raise BadRequest(
                "send an Idempotency-Key header (any unique string up to 255 characters)"
            )
        return None
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters")
    return key


def run_idempotent(
    ctx: Context,
    *,
    key: str | None,
    request_fingerprint: str,
    status: int,
    action: Callable[[UnitOfWork], dict[str, Any]],
    wait: bool = True,
) -> Outcome:
    """Run ``action`` once per key; ``action`` returns the JSON body of its response.

    ``wait=False``: see :meth:`opsline.db.Database.unit_of_work`.
    """
    if key is None:
        with ctx.db.unit_of_work(wait=wait) as uow:
            return Outcome(status, action(uow), replayed=False)
    for _ in range(2):
        try:
            return _first_run(ctx, key, request_fingerprint, status, action, wait)
        except IntegrityError:
            # The key exists: a request that committed first (or meanwhile) owns it.
            stored = _stored(ctx, key)
        if stored is None:
            raise KeyInFlight("a request with this Idempotency-Key is in progress")
        if stored.expires_at > utcnow():
            return _replay(stored, request_fingerprint)
        _forget(ctx, stored, wait)  # past its 24 h: the key is free again
    # Expired, forgotten, and claimed by another request meanwhile: that one's.
    raise KeyInFlight("a request with this Idempotency-Key is in progress")


def _first_run(
    ctx: Context,
    key: str,
    request_fingerprint: str,
    status: int,
    action: Callable[[UnitOfWork], dict[str, Any]],
    wait: bool,
) -> Outcome:
    """Do the work, then claim the key with its response, in one transaction.

    The key row is written after the work (but before the steps the work put
    off with ``uow.last``, such as taking stock): the unique constraint decides
    which of two concurrent requests commits; the other's work rolls back with
    its failed insert. A refused use case (a Problem, raised by the work or by a
    last step) rolls its work back but still commits the key with the problem
    as the response to replay.
    """
    problem: Problem | None = None
    with ctx.db.unit_of_work(wait=wait) as uow:
        try:
            body = action(uow)
            _claim(uow, ctx, key, request_fingerprint, status, body)
            # The use case's hot-row statements run after the key; on PostgreSQL
            # the checks of held-back writes (a stock decrement's) run here too.
            uow.commit()
        except KeyInFlight:
            raise  # about the key, not an answer of the use case's to store
        except Problem as exc:
            problem, status, body = exc, exc.status, exc.body()
            uow.rollback()
            _claim(uow, ctx, key, request_fingerprint, status, body)
    if problem is not None:
        raise problem
    return Outcome(status, body, replayed=False)


def _claim(
    uow: UnitOfWork,
    ctx: Context,
    key: str,
    request_fingerprint: str,
    status: int,
    body: dict[str, Any],
) -> None:
    now = utcnow()
    row = {
        "id": new_id(),
        "tenant_id": ctx.tenant_id,
        "principal": ctx.principal.subject,
        "key": key,
        "fingerprint": request_fingerprint,
        "response_status": status,
        "response_body": body,
        "created_at": now,
        "expires_at": now + TTL,
    }
    if ctx.db.is_sqlite:
        uow.execute_later(*values_insert(_KEYS, [row]))  # at once on SQLite
        return
    # Held back: it travels with the use case's other writes; the claim must
    # insert its row, else another transaction holds the key.
    lock_key = f"{ctx.tenant_id}\x1f{ctx.principal.subject}\x1f{key}"
    uow.execute_later(
        _CLAIM_KEY_PG,
        {**row, "lock_key": lock_key},
        expect=1,
        otherwise=lambda: KeyInFlight("a request with this Idempotency-Key is in progress"),
    )


def _stored(ctx: Context, key: str) -> IdempotencyKey | None:
    with ctx.db.read() as session:
        return session.scalars(
            select(K).where(
                K.tenant_id == ctx.tenant_id, K.principal == ctx.principal.subject, K.key == key
            )
        ).first()


def _forget(ctx: Context, stored: IdempotencyKey, wait: bool) -> None:
    with ctx.db.unit_of_work(wait=wait) as uow:
        uow.session.execute(delete(K).where(K.id == stored.id, K.expires_at <= utcnow()))


def _replay(stored: IdempotencyKey, request_fingerprint: str) -> Outcome:
    if stored.fingerprint != request_fingerprint:
        raise KeyReused("this Idempotency-Key was used with a different request; use a new key")
    return Outcome(stored.response_status, stored.response_body, replayed=True)


PURGE_CHUNK = 2000


def purge_expired(db: Database, *, chunk: int = PURGE_CHUNK) -> int:
    """Delete keys past their 24 h, ``chunk`` keys a transaction; returns how many.

    In chunks: on SQLite one delete of an hour's keys would hold the database's
    write lock (every order, every worker) for as long as it takes.
    """
    purged = 0
    cutoff = utcnow()
    expired = select(K.id).where(K.expires_at < cutoff).limit(chunk).scalar_subquery()
    while True:
        with db.unit_of_work() as uow:
            result = uow.session.execute(delete(K).where(K.id.in_(expired)))
            deleted = int(result.rowcount or 0)  # type: ignore[attr-defined]
        purged += deleted
        if deleted < chunk:
            return purged
