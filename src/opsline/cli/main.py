"""Assembles the command groups of the platform and every capability."""

from __future__ import annotations

import typer

from opsline import __version__
from opsline.bootstrap import bootstrap
from opsline.bulk import cli as bulk_cli
from opsline.cli import platform as platform_cli
from opsline.orders import cli as orders_cli
from opsline.platform.clitools import use_runtime_factory
from opsline.platform.engine import cli as engine_cli

app = typer.Typer(
    name="opsline",
    help="Opsline: a multi-tenant operations backend on one durable job-and-event engine.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

use_runtime_factory(bootstrap)
platform_cli.register(app)
# engine commands
engine_cli.register(app)
orders_cli.register(app)
bulk_cli.register(app)


@app.command()
def version() -> None:
    """Print the Opsline version."""
    typer.echo(__version__)


def main() -> None:
    app()
