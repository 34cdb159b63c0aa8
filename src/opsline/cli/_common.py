"""What every command shares: the runtime, the console, clean failures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from opsline.bootstrap import bootstrap
from opsline.platform.http.problems import Problem
from opsline.platform.runtime import Runtime
from opsline.settings import SettingsError, load_settings

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@contextmanager
def cli_runtime() -> Iterator[Runtime]:
    """A runtime for one command; domain problems become a message and exit code 1."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    runtime = bootstrap(settings)
    try:
        yield runtime
    except Problem as exc:
        raise fail(exc.detail) from None
    finally:
        runtime.close()
