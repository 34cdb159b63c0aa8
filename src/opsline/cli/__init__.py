"""The ``opsline`` command line: one Typer app with a group per area."""

from __future__ import annotations

from opsline.cli.main import app, main

__all__ = ["app", "main"]
