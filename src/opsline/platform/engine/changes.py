"""After-commit "something changed" announcements of the engine.

The engine announces job, batch and event changes on channel
``tenant:<id>`` (``system`` for jobs without a tenant) through the
:class:`~opsline.platform.realtime.PubSub` bound to the database URL by the
composition root (``bind_pubsub``). With none bound, announcing is a no-op.
Announcements are published only once the unit of work commits: after the
commit, or, when the pub/sub is PostgreSQL's ``NOTIFY`` on the same database,
by a ``NOTIFY`` in the transaction itself, which PostgreSQL delivers on commit
and drops on rollback (no connection or round trip of its own).
"""

from __future__ import annotations

import functools
import threading
import uuid
from typing import Any

import structlog
from sqlalchemy import String, bindparam, func, select
from sqlalchemy.engine import Connection, Engine

from opsline.db import Database, UnitOfWork
from opsline.platform.realtime import PostgresPubSub, PubSub
from opsline.platform.realtime.pubsub import PG_CHANNEL, notify_payloads

log = structlog.get_logger(__name__)

_lock = threading.Lock()
_pubsubs: dict[str, PubSub] = {}


def bind_pubsub(db: Database, pubsub: PubSub | None) -> None:
    key = _key(db.engine)
    with _lock:
        if pubsub is None:
            _pubsubs.pop(key, None)
        else:
            _pubsubs[key] = pubsub


def pubsub_for(engine: Engine) -> PubSub | None:
    return _pubsubs.get(_key(engine))


@functools.lru_cache(maxsize=64)
def _key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def channel(tenant_id: uuid.UUID | None) -> str:
    return f"tenant:{tenant_id}" if tenant_id else "system"


def announce(uow: UnitOfWork, kind: str, tenant_id: uuid.UUID | None, data: dict[str, Any]) -> None:
    """Queue a message for after commit (dropped on rollback)."""
    send_after_commit(uow, channel(tenant_id), {"kind": kind, **data})


def send_after_commit(uow: UnitOfWork, name: str, message: dict[str, Any]) -> None:
    """Queue ``message`` on channel ``name`` for after commit; a unit of work's
    messages are published together (one round trip), and dropped on rollback."""
    bind = uow.bind
    pubsub = pubsub_for(bind.engine)
    if pubsub is None:
        return
    messages: list[tuple[str, dict[str, Any]]] = uow.info.setdefault("engine_changes", [])
    if not messages:
        if _notified_in_statements(pubsub, bind):
            uow.last(lambda: _notify_in_transaction(uow, messages))
        else:
            uow.after_commit(lambda: send(pubsub, messages))
    messages.append((name, message))


def notified_in_statements(uow: UnitOfWork) -> bool:
    """Whether ``uow``'s own statements may publish its messages: PostgreSQL's
    ``NOTIFY`` is the pub/sub and runs on the same database (see
    :func:`opsline.platform.realtime.pubsub.spliced_payload`, on channel
    :data:`PG_CHANNEL`)."""
    bind = uow.bind
    return _notified_in_statements(pubsub_for(bind.engine), bind)


def _notified_in_statements(pubsub: PubSub | None, bind: Engine | Connection) -> bool:
    return isinstance(pubsub, PostgresPubSub) and bind.dialect.name == "postgresql"


def _notify_in_transaction(uow: UnitOfWork, messages: list[tuple[str, dict[str, Any]]]) -> None:
    payloads = notify_payloads(messages)
    messages.clear()  # a message queued after this step runs queues a step of its own
    if payloads:
        # Held back: it goes with the writes the unit of work holds back, in one statement.
        params = {f"payload_{i}": payload for i, payload in enumerate(payloads)}
        uow.execute_later(_notify_select(len(payloads)), {"channel": PG_CHANNEL, **params})


@functools.lru_cache(maxsize=32)
def _notify_select(count: int) -> Any:
    channel = bindparam("channel", type_=String())
    return select(
        *(func.pg_notify(channel, bindparam(f"payload_{i}", type_=String())) for i in range(count))
    )


def job_changes(outcomes: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """One message per tenant for the jobs (and batches) a worker cycle finished."""
    jobs: dict[str, list[int]] = {}
    batches: dict[str, set[str]] = {}
    for outcome in outcomes:
        name = channel(outcome.job.tenant_id)
        jobs.setdefault(name, []).append(outcome.job.id)
        if outcome.job.batch_id is not None:
            batches.setdefault(name, set()).add(str(outcome.job.batch_id))
    messages = [(name, {"kind": "jobs", "ids": ids}) for name, ids in jobs.items()]
    messages += [(name, {"kind": "batches", "ids": sorted(ids)}) for name, ids in batches.items()]
    return messages


def send(pubsub: PubSub, messages: list[tuple[str, dict[str, Any]]]) -> None:
    if not messages:
        return
    try:
        pubsub.publish_many(messages)
    except Exception:
        # Best effort: a realtime hiccup never fails the committed work.
        log.warning("realtime_publish_failed", channels=[m[0] for m in messages], exc_info=True)
