"""The fluent Python API: ``bulk.on(resource, ctx=ctx).where(...).update(...).execute()``.

A builder is immutable: every method returns a new builder and leaves its
receiver as it was, so a partly built selection can be reused for several
actions and no state is ever shared between calls (or threads). The final
calls go through the same service use cases as the HTTP API, with the same
validation (422), permissions (403), confirmation (409) and limits on records
per run and concurrent runs (429). The per-user and per-tenant request rates
are an HTTP concern: they are enforced by ``api.py``, not for in-process callers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from opsline.bulk import service
from opsline.bulk._selection import OPS
from opsline.bulk.errors import InvalidBulkRequest
from opsline.bulk.schemas import BulkRequest, Condition, PreviewOut, RunOut, ScheduleRequest
from opsline.platform.context import Context

RequestT = TypeVar("RequestT", bound=BulkRequest)


def _split(key: str) -> tuple[str, str]:
    """``stock__lt`` -> (``stock``, ``lt``); a bare name means ``eq``."""
    name, _, op = key.rpartition("__")
    return (name, op) if name and op in OPS else (key, "eq")


@dataclass(frozen=True)
class BulkBuilder:
    """One bulk request being put together; see the module docstring."""

    ctx: Context
    resource: str
    conditions: tuple[Condition, ...] = ()
    record_ids: tuple[uuid.UUID, ...] | None = None
    action_name: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    undo_days: int = 7
    batch_size: int | None = None
    confirmation_token: str | None = None

    def where(
        self, field: str | None = None, op: str = "eq", value: Any = None, **equals: Any
    ) -> BulkBuilder:
        """AND one ``(field, op, value)`` condition and/or ``name=value`` / ``name__op=value``."""
        added = [Condition(field=field, op=op, value=value)] if field is not None else []
        for key, raw in equals.items():
            name, key_op = _split(key)
            added.append(Condition(field=name, op=key_op, value=raw))
        return replace(self, conditions=(*self.conditions, *added))

    def ids(self, ids: Iterable[uuid.UUID | str]) -> BulkBuilder:
        """Restrict the selection to these ids (AND the conditions)."""
        return replace(self, record_ids=tuple(uuid.UUID(str(i)) for i in ids))

    def update(
        self, *, set: Mapping[str, Any] | None = None, adjust: Mapping[str, str] | None = None
    ) -> BulkBuilder:
        params: dict[str, Any] = {}
        if set:
            params["set"] = dict(set)
        if adjust:
            params["adjust"] = dict(adjust)
        return self.action("update", **params)

    def archive(self) -> BulkBuilder:
        return self.action("archive")

    def unarchive(self) -> BulkBuilder:
        return self.action("unarchive")

    def soft_delete(self) -> BulkBuilder:
        return self.action("soft_delete")

    def restore(self) -> BulkBuilder:
        return self.action("restore")

    def hard_delete(self) -> BulkBuilder:
        return self.action("hard_delete")

    def export(self) -> BulkBuilder:
        return self.action("export")

    def action(self, name: str, **params: Any) -> BulkBuilder:
        """Any action of the resource, built-in or custom, with its params."""
        return replace(self, action_name=name, params=dict(params))

    def undoable(self, days: int = 7) -> BulkBuilder:
        return replace(self, undo_days=days)

    def in_batches(self, size: int) -> BulkBuilder:
        return replace(self, batch_size=size)

    def confirm(self, token: str) -> BulkBuilder:
        """The ``confirmation_token`` of a :meth:`dry_run` of this very request."""
        return replace(self, confirmation_token=token)

    def request(self) -> BulkRequest:
        """The HTTP request body this builder stands for (422 when incomplete or invalid)."""
        return self._validated(BulkRequest, {})

    def dry_run(self) -> PreviewOut:
        return service.preview(self.ctx, self.request())

    def execute(self) -> RunOut:
        return service.execute(self.ctx, self.request())

    def schedule(self, at: datetime, timezone: str | None = None) -> RunOut:
        """Run at ``at`` (naive times are read in ``timezone``)."""
        body = self._validated(ScheduleRequest, {"run_at": at, "timezone": timezone})
        return service.schedule(self.ctx, body)

    def _validated(self, model: type[RequestT], extra: dict[str, Any]) -> RequestT:
        if self.action_name is None:
            message = "choose an action first: .update(...), .archive(), ... or .action(name)"
            raise InvalidBulkRequest(message, errors=[{"loc": ["action"], "msg": message}])
        try:
            return model(
                resource=self.resource,
                action=self.action_name,
                where=list(self.conditions),
                ids=list(self.record_ids) if self.record_ids is not None else None,
                params=dict(self.params),
                confirmation_token=self.confirmation_token,
                undo_days=self.undo_days,
                batch_size=self.batch_size,
                **extra,
            )
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
            raise InvalidBulkRequest(f"invalid bulk request: {errors}", errors=errors) from None


def on(resource: str, *, ctx: Context) -> BulkBuilder:
    """A fresh builder for ``resource`` acting as ``ctx``'s principal."""
    return BulkBuilder(ctx=ctx, resource=resource)
