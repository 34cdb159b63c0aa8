"""Declaring jobs: the ``@job`` decorator and the registry of handlers.

A job is a named function ``handler(ctx: JobContext, **args)``. Its keyword
arguments are turned into a pydantic model at declaration time, so arguments
are validated (and made JSON) when the job is enqueued: a bad argument is an
error for the caller, never a dead job later. Capabilities declare their jobs
at import time, before any worker exists (the registry is process-wide).
"""

from __future__ import annotations

import inspect
import random
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from opsline.platform.engine.context import JobContext
from opsline.platform.engine.errors import InvalidJobArgs, UnknownJob

if TYPE_CHECKING:
    from opsline.db import Database, UnitOfWork

QUEUES = ("high", "default", "low", "notifications")
RESERVED_ARGS = frozenset({"tenant_id", "delay", "run_at", "priority", "queue"})

KeyFunction = Callable[[Mapping[str, Any]], str | None]
Handler = Callable[..., object]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: a retry waits uniformly in
    ``[0, min(cap, base * 2 ** (attempt - 1))]`` seconds."""

    base: float = 2.0
    cap: float = 3600.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * 2 ** max(0, min(attempt - 1, 40)))
        return random.uniform(0, ceiling)


@dataclass(eq=False)
class JobDef:
    """A registered job. Call ``enqueue(target, **args)`` to queue it."""

    name: str
    invoke: Callable[[JobContext, BaseModel], object]
    args_model: type[BaseModel]
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 20
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    unique: KeyFunction | None = None
    concurrency_key: KeyFunction | None = None
    concurrency_limit: int = 1
    rate_limit: str | None = None
    rate_key: KeyFunction | None = None
    func: Handler | None = None

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``args`` and return them as JSON-ready values."""
        try:
            model = self.args_model.model_validate(dict(args))
        except ValidationError as exc:
            raise InvalidJobArgs(
                f"invalid arguments for job {self.name!r}",
                errors=[
                    {"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False)
                ],
            ) from None
        return model.model_dump(mode="json")

    def run(self, ctx: JobContext, args: Mapping[str, Any]) -> object:
        return self.invoke(ctx, self.args_model.model_validate(dict(args)))

    def enqueue(
        self,
        target: UnitOfWork | Database,
        /,
        *,
        tenant_id: Any = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        **args: Any,
    ) -> int:
        """Queue this job (see :func:`opsline.platform.engine.enqueue.enqueue`)."""
        from opsline.platform.engine.enqueue import enqueue

        return enqueue(
            target, self, args, tenant_id=tenant_id, delay=delay, run_at=run_at, priority=priority
        )

    def enqueue_later(
        self,
        uow: UnitOfWork,
        /,
        *,
        tenant_id: Any = None,
        priority: int | None = None,
        **args: Any,
    ) -> None:
        """Queue this job in ``uow`` without waiting for its id
        (see :func:`opsline.platform.engine.enqueue.enqueue_later`)."""
        from opsline.platform.engine.enqueue import JobSpec, enqueue_later

        enqueue_later(uow, [JobSpec(self, args, tenant_id, priority=priority)])

    def __call__(self, ctx: JobContext, **args: Any) -> object:
        return self.run(ctx, args)


_JOBS: dict[str, JobDef] = {}


def register(definition: JobDef) -> JobDef:
    """Add a job; a second registration of the same name must be the same function."""
    if definition.queue not in QUEUES:
        raise ValueError(f"job {definition.name!r}: queue must be one of {QUEUES}")
    if definition.max_attempts < 1:
        raise ValueError(f"job {definition.name!r}: max_attempts must be at least 1")
    existing = _JOBS.get(definition.name)
    if existing is not None and _origin(existing) != _origin(definition):
        raise ValueError(f"job {definition.name!r} is registered twice")
    _JOBS[definition.name] = definition
    return definition


def _origin(definition: JobDef) -> str:
    func = definition.func or definition.invoke
    return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', '')}"


def get_job(name: str) -> JobDef:
    try:
        return _JOBS[name]
    except KeyError:
        raise UnknownJob(f"no job is registered as {name!r}") from None


def find_job(name: str) -> JobDef | None:
    return _JOBS.get(name)


def registered_jobs() -> list[JobDef]:
    return sorted(_JOBS.values(), key=lambda d: d.name)


def job(
    name: str,
    *,
    queue: str = "default",
    priority: int = 0,
    max_attempts: int = 20,
    timeout: float | None = None,
    retry: RetryPolicy | None = None,
    unique: KeyFunction | Sequence[str] | None = None,
    concurrency_key: KeyFunction | Sequence[str] | None = None,
    concurrency_limit: int = 1,
    rate_limit: str | None = None,
    rate_key: KeyFunction | Sequence[str] | None = None,
) -> Callable[[Handler], JobDef]:
    """Declare a job handler ``fn(ctx: JobContext, **args)``.

    ``unique``: argument names (or a function of the validated JSON arguments)
    forming a key; while a job with that key is pending, enqueueing another
    returns the existing job. ``concurrency_key``: same form; at most
    ``concurrency_limit`` jobs with one key run at a time. ``timeout`` is in
    seconds; a job past it is failed and retried (see the worker's docstring).
    ``rate_limit`` (``"10/second"``, per ``rate_key`` value or per job name):
    a job over the limit is put back until the window resets, without using
    an attempt (shared across processes when Redis is configured).
    """
    if rate_limit is not None:
        from limits import parse

        parse(rate_limit)  # a typo fails at import time

    def decorate(func: Handler) -> JobDef:
        model = args_model_for(func, name)
        definition = JobDef(
            name=name,
            invoke=lambda ctx, args: func(ctx, **dict(args)),
            args_model=model,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            unique=_key_function(unique),
            concurrency_key=_key_function(concurrency_key),
            concurrency_limit=concurrency_limit,
            rate_limit=rate_limit,
            rate_key=_key_function(rate_key),
            func=func,
        )
        return register(definition)

    return decorate


def _key_function(spec: KeyFunction | Sequence[str] | None) -> KeyFunction | None:
    if spec is None or callable(spec):
        return spec
    names = tuple(spec)
    return lambda args: ":".join(str(args.get(n)) for n in names)


def args_model_for(func: Handler, name: str) -> type[BaseModel]:
    """A pydantic model of ``func``'s parameters after the context."""
    hints = typing.get_type_hints(func)
    fields: dict[str, Any] = {}
    extra = "forbid"
    params = list(inspect.signature(func).parameters.values())[1:]
    for param in params:
        if param.kind is param.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY):
            raise TypeError(f"job {name!r}: arguments must be passable by keyword")
        if param.name in RESERVED_ARGS:
            raise TypeError(f"job {name!r}: argument name {param.name!r} is reserved")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    config = ConfigDict(extra=extra, frozen=True)  # type: ignore[typeddict-item]
    model_name = "Args_" + "".join(c if c.isalnum() else "_" for c in name)
    return create_model(model_name, __config__=config, **fields)
