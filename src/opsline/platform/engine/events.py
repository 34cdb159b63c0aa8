"""Domain events: typed immutable records, an event log, queued listeners.

A capability declares an event as a subclass of :class:`Event` with a
``event_type`` (``"orders.order_cancelled"``) and a ``version``::

    class OrderCancelled(Event):
        event_type: ClassVar[str] = "orders.order_cancelled"
        order_id: uuid.UUID

and reacts to events with ``@listener(OrderCancelled)`` on a function
``fn(ctx: JobContext, event: OrderCancelled)``. :func:`publish` stores the
event in the log and enqueues one job per listener, all in the caller's unit
of work: rolled back together, and one failing listener retries alone, never
blocking or re-running another. Listeners get the full event in their job
arguments (no read of the log on the hot path) and must be idempotent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from opsline.db import Database, UnitOfWork, new_id, utcnow, values_insert
from opsline.platform.engine.context import JobContext
from opsline.platform.engine.enqueue import JobSpec, enqueue_later, enqueue_many
from opsline.platform.engine.models import events_table
from opsline.platform.engine.registry import JobDef, RetryPolicy, get_job, register

E = TypeVar("E", bound="Event")
ENVELOPE_FIELDS = frozenset({"id", "tenant_id", "occurred_at"})

_EVENT_TYPES: dict[str, type[Event]] = {}
_LISTENERS: dict[str, list[JobDef]] = {}


class Event(BaseModel):
    """Base of every domain event; subclasses add the payload fields."""

    model_config = ConfigDict(frozen=True)

    event_type: ClassVar[str] = ""
    version: ClassVar[int] = 1

    id: uuid.UUID = Field(default_factory=new_id)
    tenant_id: uuid.UUID | None = None
    occurred_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.event_type:
            existing = _EVENT_TYPES.get(cls.event_type)
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise ValueError(f"event type {cls.event_type!r} is declared twice")
            _EVENT_TYPES[cls.event_type] = cls

    def payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(ENVELOPE_FIELDS))

    def envelope(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.event_type,
            "version": self.version,
            "tenant_id": str(self.tenant_id) if self.tenant_id else None,
            "occurred_at": self.occurred_at.isoformat(),
            "payload": self.payload(),
        }


def event_class(event_type: str) -> type[Event]:
    try:
        return _EVENT_TYPES[event_type]
    except KeyError:
        raise LookupError(f"no event type {event_type!r} is declared") from None


def from_envelope(envelope: dict[str, Any]) -> Event:
    cls = event_class(envelope["type"])
    return cls.model_validate(
        {
            **envelope["payload"],
            "id": envelope["id"],
            "tenant_id": envelope["tenant_id"],
            "occurred_at": envelope["occurred_at"],
        }
    )


class _ListenerArgs(BaseModel):
    model_config = ConfigDict(frozen=True)
    event: dict[str, Any]


def listener(
    event: type[E],
    *,
    name: str | None = None,
    queue: str = "default",
    max_attempts: int = 20,
    timeout: float | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[Callable[[JobContext, E], object]], JobDef]:
    """Declare ``fn(ctx, event)`` as a listener; it runs as its own job per event."""
    if not event.event_type:
        raise TypeError(f"{event.__name__} has no event_type")

    def decorate(fn: Callable[[JobContext, E], object]) -> JobDef:
        def invoke(ctx: JobContext, args: BaseModel) -> object:
            assert isinstance(args, _ListenerArgs)
            return fn(ctx, from_envelope(args.event))  # type: ignore[arg-type]

        definition = register(
            JobDef(
                name=name or fn.__name__,
                invoke=invoke,
                args_model=_ListenerArgs,
                queue=queue,
                max_attempts=max_attempts,
                timeout=timeout,
                retry=retry or RetryPolicy(),
                func=fn,
            )
        )
        listeners = _LISTENERS.setdefault(event.event_type, [])
        if all(existing.name != definition.name for existing in listeners):
            listeners.append(definition)
        return definition

    return decorate


def listeners_of(event_type: str) -> list[JobDef]:
    return list(_LISTENERS.get(event_type, ()))


def listened_type(listener_name: str) -> str:
    """The event type a listener is declared for (raises UnknownJob/LookupError)."""
    definition = get_job(listener_name)
    for event_type, definitions in _LISTENERS.items():
        if definition in definitions:
            return event_type
    raise LookupError(f"job {listener_name!r} is not an event listener")


def publish(uow: UnitOfWork, *events: Event) -> None:
    """Store ``events`` in the log and enqueue their listeners, in ``uow``'s transaction."""
    if not events:
        return
    # Nothing waits for the log's rows: they travel with the next statement.
    uow.execute_later(
        *values_insert(
            events_table,
            [
                {
                    "id": e.id,
                    "tenant_id": e.tenant_id,
                    "type": e.event_type,
                    "version": e.version,
                    "occurred_at": e.occurred_at,
                    "payload": e.payload(),
                }
                for e in events
            ],
        )
    )
    specs = [
        JobSpec(definition, {"event": e.envelope()}, tenant_id=e.tenant_id)
        for e in events
        for definition in _LISTENERS.get(e.event_type, ())
    ]
    if specs:
        enqueue_later(uow, specs)  # the listeners' jobs travel with the next statement too
    from opsline.platform.engine import changes

    for e in events:
        changes.announce(uow, "event", e.tenant_id, {"id": str(e.id), "type": e.event_type})


def replay(
    db: Database,
    *,
    listener_name: str,
    since: datetime,
    until: datetime | None = None,
    tenant_id: uuid.UUID | None = None,
    all_tenants: bool = False,
) -> int:
    """Enqueue ``listener_name`` again for every logged event of its type in the window.

    Scoped to ``tenant_id`` unless ``all_tenants`` (the operator CLI). Returns
    how many jobs were enqueued; listeners are idempotent, so replays are safe.
    """
    event_type = listened_type(listener_name)
    definition = get_job(listener_name)
    stmt = select(events_table).where(
        events_table.c.type == event_type, events_table.c.occurred_at >= since
    )
    if until is not None:
        stmt = stmt.where(events_table.c.occurred_at < until)
    if not all_tenants:
        stmt = stmt.where(events_table.c.tenant_id == tenant_id)
    with db.read() as session:
        rows = session.execute(stmt.order_by(events_table.c.occurred_at)).all()
    specs = [
        JobSpec(definition, {"event": envelope_of(row)}, tenant_id=row.tenant_id) for row in rows
    ]
    if specs:
        enqueue_many(db, specs)
    return len(specs)


def envelope_of(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "type": row.type,
        "version": row.version,
        "tenant_id": str(row.tenant_id) if row.tenant_id else None,
        "occurred_at": row.occurred_at.isoformat(),
        "payload": row.payload,
    }


def registered_event_types() -> Sequence[str]:
    return sorted(_EVENT_TYPES)
