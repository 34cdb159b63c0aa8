"""What every command of the platform and the capabilities shares: the runtime,
the console, clean failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from opsline.platform.http.inputs import check_one_line
from opsline.platform.http.problems import Problem
from opsline.platform.runtime import Runtime
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
