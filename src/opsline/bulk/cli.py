"""``opsline bulk``: preview, run (following live with a Rich progress bar), status, cancel,
undo and list, as the tenant's operator."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from opsline.bulk import service
from opsline.bulk.schemas import FINAL_STATUSES, BulkRequest, Condition, RunOut
from opsline.platform.clitools import (
    TenantOption,
    cli_runtime,
    console,
    fail,
    id_column,
    plain,
    resolve_tenant,
    table,
)
from opsline.platform.context import Context, system_principal

bulk_app = typer.Typer(
    help="Bulk actions: preview, run, follow, cancel, undo.", no_args_is_help=True
)
WhereOption = Annotated[
    list[str] | None, typer.Option("--where", help="field:op:json-value, e.g. stock:lt:5")
]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="field=json-value")]
AdjustOption = Annotated[list[str] | None, typer.Option("--adjust", help="field=+5%")]


def register(app: typer.Typer) -> None:
    app.add_typer(bulk_app, name="bulk")


def _ctx(runtime: Any, tenant: str) -> Context:
    """The tenant's operator; an unknown tenant (id or slug) exits 1 naming it."""
    tenant_id = resolve_tenant(runtime.db, tenant)
    return Context(runtime.db, runtime.settings, system_principal(tenant_id))


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _request(
    resource: str,
    action: str,
    where: list[str] | None,
    ids: list[str] | None,
    sets: list[str] | None,
    adjusts: list[str] | None,
    batch_size: int | None,
) -> BulkRequest:
    """The request the options stand for; bad options exit 2 with what to fix."""
    try:
        conditions = [_condition(item) for item in where or []]
        params: dict[str, Any] = {}
        if sets:
            params["set"] = {k: _value(v) for k, v in (_pair(s, "--set") for s in sets)}
        if adjusts:
            params["adjust"] = dict(_pair(a, "--adjust") for a in adjusts)
        return BulkRequest(
            resource=resource,
            action=action,
            where=conditions,
            ids=[uuid.UUID(i) for i in ids] if ids else None,
            params=params,
            batch_size=batch_size,
        )
    except (ValueError, ValidationError) as exc:
        raise fail(f"invalid options: {exc}", 2) from None


def _condition(item: str) -> Condition:
    parts = item.split(":", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"--where {item!r}: use field:op:json-value, e.g. stock:lt:5")
    return Condition(
        field=parts[0], op=parts[1], value=_value(parts[2]) if len(parts) > 2 else None
    )


def _pair(item: str, option: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise ValueError(f"{option} {item!r}: use field=value")
    return name, value


@bulk_app.command("preview")
def preview(
    tenant: TenantOption,
    resource: str,
    action: str,
    where: WhereOption = None,
    ids: Annotated[list[str] | None, typer.Option("--id")] = None,
    set_: SetOption = None,
    adjust: AdjustOption = None,
) -> None:
    """Dry run: count, sample before/after, warnings."""
    body = _request(resource, action, where, ids, set_, adjust, None)
    with cli_runtime() as runtime:
        out = service.preview(_ctx(runtime, tenant), body)
    console.print(f"[bold]{out.count}[/] records; destructive={out.destructive}")
    sample = table(id_column(), "before", "after")
    for s in out.sample:
        sample.add_row(str(s.id), plain(json.dumps(s.before)), plain(json.dumps(s.after)))
    console.print(sample)
    for warning in out.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")


@bulk_app.command("run")
def run(
    tenant: TenantOption,
    resource: str,
    action: str,
    where: WhereOption = None,
    ids: Annotated[list[str] | None, typer.Option("--id")] = None,
    set_: SetOption = None,
    adjust: AdjustOption = None,
    batch_size: Annotated[int | None, typer.Option(min=1, max=10_000)] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm a destructive or large run")] = False,
    follow: Annotated[bool, typer.Option(help="Follow with a live progress bar")] = True,
) -> None:
    """Run a bulk action (previewed first; --yes confirms what needs confirming)."""
    body = _request(resource, action, where, ids, set_, adjust, batch_size)
    with cli_runtime() as runtime:
        ctx = _ctx(runtime, tenant)
        seen = service.preview(ctx, body)
        if seen.confirmation_required and not yes:
            raise fail(f"{seen.count} records, destructive={seen.destructive}: rerun with --yes")
        body = body.model_copy(update={"confirmation_token": seen.confirmation_token})
        out = service.execute(ctx, body)
        console.print(f"run [bold]{out.id}[/] started: {out.total} records")
        if follow:
            _follow(ctx, out)


def _follow(ctx: Context, out: RunOut) -> None:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"{out.action} {out.resource}", total=max(out.total, 1))
        while out.status not in FINAL_STATUSES:
            time.sleep(0.2)
            out = service.get_run(ctx, out.id)
            bar.update(task, completed=out.processed + out.failed)
    console.print(f"{escape(out.status)}: {out.processed} processed, {out.failed} failed")


@bulk_app.command("status")
def status(tenant: TenantOption, run_id: uuid.UUID) -> None:
    """One run's status and progress."""
    with cli_runtime() as runtime:
        out = service.get_run(_ctx(runtime, tenant), run_id)
    console.print_json(out.model_dump_json())


@bulk_app.command("cancel")
def cancel(tenant: TenantOption, run_id: uuid.UUID) -> None:
    """Cancel a running or scheduled run."""
    with cli_runtime() as runtime:
        out = service.cancel_run(_ctx(runtime, tenant), run_id)
    console.print(f"run {out.id}: {out.status}")


@bulk_app.command("undo")
def undo(
    tenant: TenantOption,
    run_id: uuid.UUID,
    force: Annotated[bool, typer.Option(help="Overwrite records changed since")] = False,
    follow: Annotated[bool, typer.Option(help="Follow with a live progress bar")] = True,
) -> None:
    """Undo a run from its encrypted snapshots."""
    with cli_runtime() as runtime:
        ctx = _ctx(runtime, tenant)
        out = service.undo_run(ctx, run_id, force=force)
        console.print(f"undo run [bold]{out.id}[/] started: {out.total} records")
        if follow:
            _follow(ctx, out)


@bulk_app.command("list")
def list_runs(
    tenant: TenantOption,
    status_: Annotated[str | None, typer.Option("--status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
) -> None:
    """The newest runs of a tenant (the audit log)."""
    with cli_runtime() as runtime:
        page = service.list_runs(_ctx(runtime, tenant), cursor=None, limit=limit, status=status_)
    runs = table(
        id_column(), "kind", "status", "resource", "action", "done", "failed", "by", "created"
    )
    for r in page.items:
        runs.add_row(
            str(r.id),
            r.kind,
            r.status,
            plain(r.resource),
            plain(r.action),
            f"{r.processed}/{r.total}",
            str(r.failed),
            plain(r.actor),
            f"{r.created_at:%Y-%m-%d %H:%M:%S}",
        )
    console.print(runs)
