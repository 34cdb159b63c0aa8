"""Platform commands: serve, migrate, demo, tenants, users, API keys."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from opsline.platform.auth import service as auth
from opsline.platform.auth.roles import Role, all_permissions
from opsline.platform.auth.tokens import hash_password
from opsline.platform.clitools import (
    TenantOption,
    cli_runtime,
    console,
    email_address,
    fail,
    id_column,
    one_line,
    plain,
    resolve_tenant,
    table,
)
from opsline.platform.observability.metrics import MULTIPROCESS_DIR
from opsline.platform.tenancy import service as tenancy
from opsline.platform.tenancy.demo import load_demo
from opsline.settings import Settings, SettingsError, load_settings

tenants_app = typer.Typer(help="Create and list tenants.", no_args_is_help=True)
users_app = typer.Typer(help="Create and list users.", no_args_is_help=True)
apikeys_app = typer.Typer(help="Create and revoke API keys.", no_args_is_help=True)

RoleOption = Annotated[Role, typer.Option(help="Role in the tenant.")]


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(migrate)
    app.command()(demo)
    app.command()(roles)
    app.add_typer(tenants_app, name="tenants")
    app.add_typer(users_app, name="users")
    app.add_typer(apikeys_app, name="apikeys")


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (OPSLINE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (OPSLINE_PORT).")] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Processes answering on the port (OPSLINE_SERVER_PROCESSES); more than"
            " one needs OPSLINE_REDIS_URL.",
        ),
    ] = None,
) -> None:
    """Serve the API and its live streams and, embedded, the workers and the scheduler."""
    try:
        settings = (
            load_settings() if processes is None else load_settings(server_processes=processes)
        )
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    options = _server_options(settings, host, port)
    if settings.server_processes > 1:
        _serve_processes(settings, options)
        return
    import uvicorn

    from opsline.api import create_app
    from opsline.bootstrap import bootstrap

    runtime = bootstrap(settings, role="serve")
    _announce(settings, options)
    uvicorn.run(create_app(runtime=runtime), **options)


def _server_options(settings: Settings, host: str | None, port: int | None) -> dict[str, Any]:
    proxies = settings.forwarded_allow_ips
    return {
        "host": host or settings.host,
        "port": port or settings.port,
        "loop": settings.server_event_loop,
        "log_config": None,
        "access_log": False,
        # Only from the proxies named: uvicorn's own default believes any peer on
        # loopback, and its FORWARDED_ALLOW_IPS variable is not one of our settings.
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or None,
    }


def _announce(settings: Settings, options: dict[str, Any]) -> None:
    dialect = "sqlite" if settings.is_sqlite else "postgresql"
    proxies = settings.forwarded_allow_ips
    believed = f", X-Forwarded-For believed from {proxies}" if proxies else ""
    processes = settings.server_processes
    each = f", {processes} processes" if processes > 1 else ""
    console.print(
        f"Opsline serving on http://{options['host']}:{options['port']} "
        f"({dialect}, {options['loop']} event loop{each}{believed})"
    )


def _serve_processes(settings: Settings, options: dict[str, Any]) -> None:
    """Serve with ``settings.server_processes`` processes on one port.

    uvicorn's supervisor starts them (each builds its own runtime with
    :func:`opsline.api.app.served_app`, embedded workers and scheduler included)
    and starts one again if it dies. Their Prometheus counters are kept in files
    of one folder (``PROMETHEUS_MULTIPROC_DIR``: the one set, else a new one
    removed at exit) and ``/metrics`` adds them up, whichever process answers.
    """
    import uvicorn

    from opsline.platform.observability.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)  # the supervisor's own logs
    settings.secret  # noqa: B018 - the key file is written once, before the processes read it
    metrics_dir = os.environ.get(MULTIPROCESS_DIR)
    made = None
    if not metrics_dir:
        made = tempfile.mkdtemp(prefix="opsline-metrics-")
        os.environ[MULTIPROCESS_DIR] = made
    _announce(settings, options)
    try:
        uvicorn.run(
            "opsline.api.app:served_app",
            factory=True,
            workers=settings.server_processes,
            # A process starting on a busy machine imports for seconds; uvicorn's
            # 5 s would take it for hung and start another, over and over.
            timeout_worker_healthcheck=60,
            **options,
        )
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    down: Annotated[bool, typer.Option("--down", help="Downgrade to the revision.")] = False,
) -> None:
    """Bring the database schema to a revision (default: the newest)."""
    from opsline import migrate as migrations

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    if down:
        migrations.downgrade(settings, revision)
    else:
        migrations.upgrade(settings, revision)
    heads = ", ".join(sorted(migrations.current_heads(settings))) or "base"
    console.print(f"database at revision [bold]{heads}[/]")


def demo() -> None:
    """Create the demo tenant and its owner (once) and print how to log in."""
    with cli_runtime() as runtime:
        tenant, user, created = load_demo(runtime)
        password = runtime.settings.demo_password.get_secret_value()
    if created:
        console.print(f"Demo tenant [bold]{escape(tenant.name)}[/] created.")
        console.print(
            f"  log in as [bold]{escape(user.email)}[/] with password [bold]{escape(password)}[/]"
        )
    else:
        console.print(
            f"Demo tenant [bold]{escape(tenant.name)}[/] exists (owner {escape(user.email)})."
        )
    # --tenant takes either; soft_wrap: the id is never broken across lines.
    console.print(f"  tenant slug {escape(tenant.slug)}, id {tenant.id}", soft_wrap=True)


def roles() -> None:
    """Show each role's permissions."""
    table = Table("permission", "lowest role", "description")
    for permission in all_permissions():
        table.add_row(permission.name, permission.min_role.value, permission.description)
    console.print(table)
    console.print("Roles, lowest first: " + " < ".join(r.value for r in Role))


@tenants_app.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="Tenant name.", callback=one_line)],
    owner_email: Annotated[
        str, typer.Option("--owner-email", help="Owner's email.", callback=email_address)
    ],
    owner_password: Annotated[
        str,
        typer.Option(
            "--owner-password", prompt=True, hide_input=True, help="New owner's password."
        ),
    ],
) -> None:
    """Create a tenant with a new owner account."""
    with cli_runtime() as runtime:
        _check_password(owner_password)
        user, tenant, _ = auth.signup(
            runtime, email=owner_email, password=owner_password, tenant_name=name
        )
    console.print(
        f"tenant [bold]{escape(tenant.name)}[/] {tenant.id} created, owner {escape(user.email)}"
    )


@tenants_app.command("list")
def tenants_list() -> None:
    """List tenants with their member counts."""
    with cli_runtime() as runtime:
        rows = tenancy.list_tenants(runtime.db)
    listing = table(id_column(), "name", "slug", "members", "created")
    for tenant, members in rows:
        listing.add_row(
            str(tenant.id),
            plain(tenant.name),
            plain(tenant.slug),
            str(members),
            f"{tenant.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(listing)


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Argument(help="Email of the new user.", callback=email_address)],
    tenant: TenantOption,
    role: RoleOption = Role.MEMBER,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, help="Password.")] = "",
) -> None:
    """Create a user and add them to a tenant."""
    with cli_runtime() as runtime:
        _check_password(password)
        tenant_id = resolve_tenant(runtime.db, tenant)
        password_hash = hash_password(password)
        with runtime.db.unit_of_work() as uow:
            user = auth.create_user(uow, email=email, password_hash=password_hash)
            tenancy.add_member(uow, tenant_id=tenant_id, user_id=user.id, role=role)
    console.print(f"user {escape(user.email)} {user.id} created as {role.value}")


@users_app.command("list")
def users_list(tenant: TenantOption) -> None:
    """List the members of a tenant."""
    with cli_runtime() as runtime:
        members = tenancy.list_members(runtime.db, resolve_tenant(runtime.db, tenant)).items
    listing = table(id_column("user id"), "email", "role", "joined")
    for m in members:
        listing.add_row(
            str(m.user_id), plain(m.email), m.role.value, f"{m.joined_at:%Y-%m-%d %H:%M}"
        )
    console.print(listing)


@apikeys_app.command("create")
def apikeys_create(
    tenant: TenantOption,
    name: Annotated[str, typer.Option(help="What the key is for.", callback=one_line)],
    role: RoleOption = Role.MEMBER,
) -> None:
    """Create an API key; the secret is printed once."""
    with cli_runtime() as runtime:
        key, secret = auth.create_api_key(
            runtime.db,
            tenant_id=resolve_tenant(runtime.db, tenant),
            name=name,
            role=role,
            created_by=None,
        )
    console.print(f"API key {key.id} ({role.value}) created. Store it now, it is not shown again:")
    console.print(secret, highlight=False, soft_wrap=True)


@apikeys_app.command("revoke")
def apikeys_revoke(key_id: Annotated[uuid.UUID, typer.Argument(help="Key id.")]) -> None:
    """Revoke an API key (it stops working at once)."""
    with cli_runtime() as runtime:
        key = auth.revoke_api_key(runtime.db, key_id=key_id, tenant_id=None)
    console.print(f"API key {key.id} revoked")


def _check_password(password: str) -> None:
    from opsline.platform.auth.schemas import PASSWORD_MAX, PASSWORD_MIN

    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise fail(f"password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
