"""What every command of the platform and the capabilities shares: the runtime,
the console, clean failures, the ``--tenant`` option, tables whose ids print whole."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text
from sqlalchemy import or_, select

from opsline.db import Database
from opsline.platform.http.inputs import check_one_line
from opsline.platform.http.problems import Problem
from opsline.platform.runtime import Runtime
from opsline.platform.tenancy.models import Tenant
from opsline.settings import Settings, SettingsError, load_settings

RuntimeFactory = Callable[[Settings], Runtime]
_factory: list[RuntimeFactory] = []


def use_runtime_factory(factory: RuntimeFactory) -> None:
    """The command line's composition root hands its ``bootstrap`` here at start-up."""
    _factory[:] = [factory]


def build_runtime(settings: Settings) -> Runtime:
    if not _factory:
        raise RuntimeError("opsline.cli must install the runtime factory first")
    return _factory[0](settings)


console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as is (never as markup: it may quote user data); exit ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def one_line(value: str | None) -> str | None:
    """A typer callback for a name: control characters (NUL, line breaks) are a
    usage error, as they are a 422 in the API."""
    if value is None:
        return None
    try:
        return check_one_line(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def email_address(value: str) -> str:
    """A typer callback for an email: the API's check (a usage error, as it is a 422 there)."""
    from pydantic import EmailStr, TypeAdapter, ValidationError

    try:
        return str(TypeAdapter(EmailStr).validate_python(value))
    except ValidationError as exc:
        raise typer.BadParameter(exc.errors()[0]["msg"]) from None


TenantOption = Annotated[
    str,
    typer.Option("--tenant", metavar="TENANT", help="Tenant id or slug.", callback=one_line),
]
"""A command's tenant as the user names it; ``resolve_tenant`` turns it into an id."""


def resolve_tenant(db: Database, tenant: str) -> uuid.UUID:
    """The id of the tenant that ``tenant`` names, by id or by slug; a tenant that does
    not exist exits 1 naming ``tenant`` as given. A slug may itself read as an id (all
    hex digits and hyphens), so one query matches both and the id wins."""
    try:
        as_id: uuid.UUID | None = uuid.UUID(tenant)
    except ValueError:
        as_id = None
    named = Tenant.slug == tenant
    with db.read() as session:
        found = session.scalars(
            select(Tenant.id).where(named if as_id is None else or_(Tenant.id == as_id, named))
        ).all()
    if not found:
        raise fail(f"tenant {tenant} not found")
    return as_id if as_id is not None and as_id in found else found[0]


UUID_WIDTH = 36


def id_column(header: str = "id", *, min_width: int | None = UUID_WIDTH) -> Column:
    """A column of ids printed whole, never cut with an ellipsis nor wrapped, so that an
    id can be copied into the next command; in an 80-column terminal the ``table``'s
    other columns fold instead. ``min_width`` is None for ids shorter than a UUID, or for
    a column that may hold none ("-")."""
    return Column(header, no_wrap=True, min_width=min_width)


def table(*columns: str | Column) -> Table:
    """A table whose columns given by name fold long values onto more lines rather than
    cut them; they shrink first, so its ``id_column``s keep their width."""
    return Table(*(c if isinstance(c, Column) else Column(c, overflow="fold") for c in columns))


def plain(value: object) -> Text:
    """``value`` as text Rich prints as is: a table cell of user data ("[/]" is a name)."""
    return Text(str(value))


@contextmanager
def cli_runtime() -> Iterator[Runtime]:
    """A runtime for one command; domain problems become a message and exit code 1."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    runtime = build_runtime(settings)
    try:
        yield runtime
    except Problem as exc:
        raise fail(exc.detail) from None
    finally:
        runtime.close()
