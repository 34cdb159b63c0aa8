"""Bulk actions. The Python API is :func:`on` (see ``_builder``)::

from opsline import bulk

seen = bulk.on("products", ctx=ctx).where(stock__lt=5).update(adjust={"price": "+5%"})
preview = seen.dry_run()
run = seen.confirm(preview.confirmation_token).undoable(days=7).in_batches(500).execute()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opsline.bulk._builder import BulkBuilder
    from opsline.platform.context import Context

__all__ = ["on"]


def on(resource: str, *, ctx: Context) -> BulkBuilder:
    """A fresh, immutable builder for ``resource`` (imported lazily: no import cycles)."""
    from opsline.bulk._builder import on as build

    return build(resource, ctx=ctx)
