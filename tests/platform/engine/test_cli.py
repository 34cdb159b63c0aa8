"""The engine's commands: jobs, events, and a worker process stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import update
from typer.testing import CliRunner

from opsline.cli import app
from opsline.db import Database
from opsline.platform.clitools import console
from opsline.platform.engine.events import publish
from opsline.platform.engine.models import jobs_table
from opsline.platform.engine.processes import settings_env
from opsline.platform.tenancy.models import Tenant
from opsline.settings import Settings
from tests.platform.engine import sample_jobs
from tests.platform.engine.helpers import job_row, wait_until
from tests.platform.engine.sample_events import OrderApproved

J = jobs_table.c
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def cli(engine_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for key, value in settings_env(engine_settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def test_jobs_commands_show_retry_cancel_flush(cli: CliRunner, db: Database) -> None:
    dead = sample_jobs.echo.enqueue(db, value=1, note="dead-one")
    pending = sample_jobs.echo.enqueue(db, value=2)
    with db.unit_of_work() as uow:
        uow.session.execute(update(jobs_table).where(J.id == dead).values(state="dead"))
    listed = cli.invoke(app, ["jobs", "failed"])
    assert listed.exit_code == 0 and "tests.echo" in listed.output
    shown = cli.invoke(app, ["jobs", "show", str(dead)])
    assert shown.exit_code == 0 and "dead-one" in shown.output
    assert cli.invoke(app, ["jobs", "retry", str(dead)]).exit_code == 0
    assert job_row(db, dead).state == "available"
    assert cli.invoke(app, ["jobs", "cancel", str(pending)]).exit_code == 0
    assert job_row(db, pending).state == "cancelled"
    with db.unit_of_work() as uow:
        uow.session.execute(update(jobs_table).where(J.id == dead).values(state="dead"))
    flushed = cli.invoke(app, ["jobs", "flush", "--dead"])
    assert flushed.exit_code == 0 and "1 dead jobs deleted" in flushed.output
    missing = cli.invoke(app, ["jobs", "show", str(dead)])
    assert missing.exit_code == 1 and "no job" in missing.output


def test_retry_needs_an_id_or_all(cli: CliRunner) -> None:
    assert cli.invoke(app, ["jobs", "retry"]).exit_code == 2


@pytest.mark.parametrize("command", ["show", "retry", "cancel"])
def test_a_job_id_beyond_bigint_is_a_usage_error(cli: CliRunner, command: str) -> None:
    result = cli.invoke(app, ["jobs", command, str(2**63)])
    assert result.exit_code == 2 and "Invalid value" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "list", "--queue", "high\x00"],
        ["jobs", "list", "--name", "orders.\nx"],
        ["events", "replay", "--listener", "a\x00b", "--since", "2h"],
        ["worker", "--queues", "high,\x00"],
    ],
)
def test_control_characters_in_names_are_a_usage_error(cli: CliRunner, args: list[str]) -> None:
    """PostgreSQL refuses a NUL in text with a traceback; the API answers such names 422."""
    result = cli.invoke(app, args)
    assert result.exit_code == 2
    assert "control characters" in result.output


def test_events_list_and_replay(cli: CliRunner, db: Database) -> None:
    with db.unit_of_work() as uow:
        publish(uow, OrderApproved(tenant_id=uuid.uuid4(), order_id=uuid.uuid4(), amount_cents=5))
    listed = cli.invoke(app, ["events", "list", "--since", "1h"])
    assert listed.exit_code == 0 and "tests.order_approved" in listed.output
    replayed = cli.invoke(
        app, ["events", "replay", "--listener", "when_order_approved_record", "--since", "1h"]
    )
    assert replayed.exit_code == 0 and "1 events replayed" in replayed.output
    unknown = cli.invoke(app, ["events", "replay", "--listener", "nope", "--since", "1h"])
    assert unknown.exit_code == 1


def _tenant(db: Database, slug: str) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    with db.unit_of_work() as uow:
        uow.session.add(Tenant(id=tenant_id, name=slug.title(), slug=slug))
    return tenant_id


def test_the_tenant_filter_takes_a_slug_as_an_id(cli: CliRunner, db: Database) -> None:
    acme = _tenant(db, "acme-0a0b0c")
    mine = sample_jobs.echo.enqueue(db, value=1, note="acme's", tenant_id=acme)
    sample_jobs.echo.enqueue(db, value=2, note="nobody's")
    by_slug = cli.invoke(app, ["jobs", "list", "--tenant", "acme-0a0b0c"])
    by_id = cli.invoke(app, ["jobs", "list", "--tenant", str(acme)])
    assert by_slug.exit_code == 0, by_slug.output
    assert by_slug.output == by_id.output
    assert str(acme) in by_slug.output and by_slug.output.count("tests.echo") == 1
    shown = cli.invoke(app, ["jobs", "show", str(mine), "--tenant", "acme-0a0b0c"])
    assert shown.exit_code == 0 and "acme's" in shown.output


@pytest.mark.parametrize(
    "command",
    [
        ["jobs", "list"],
        ["jobs", "retry", "--all"],
        ["jobs", "flush", "--dead"],
        ["events", "list"],
        ["events", "replay", "--listener", "when_order_approved_record", "--since", "1h"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
@pytest.mark.parametrize("unknown", ["no-such-shop", "00000000-0000-0000-0000-00000000beef"])
def test_an_unknown_tenant_filter_exits_1_naming_it(
    cli: CliRunner, db: Database, command: list[str], unknown: str
) -> None:
    dead = sample_jobs.echo.enqueue(db, value=1)
    with db.unit_of_work() as uow:
        uow.session.execute(update(jobs_table).where(J.id == dead).values(state="dead"))
    result = cli.invoke(app, [*command, "--tenant", unknown])
    assert result.exit_code == 1, result.output
    assert f"tenant {unknown} not found" in result.output
    assert job_row(db, dead).state == "dead"  # neither retried nor flushed everywhere


def test_job_and_tenant_ids_print_whole_in_an_80_column_terminal(
    cli: CliRunner, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme = _tenant(db, "acme-0a0b0c")
    sample_jobs.echo.enqueue(db, value=1, tenant_id=acme)
    job_id = sample_jobs.echo.enqueue(db, value=2)
    monkeypatch.setattr(console, "width", 80)  # Rich reads COLUMNS once, at import
    listed = cli.invoke(app, ["jobs", "list"])
    assert listed.exit_code == 0, listed.output
    assert f"│ {acme} │" in listed.output, listed.output
    assert f"│ {job_id} " in listed.output
    assert "…" not in listed.output
    assert max(len(line) for line in listed.output.splitlines()) <= 80


@pytest.mark.slow
def test_worker_command_runs_jobs_and_stops_on_sigterm(
    engine_settings: Settings, db: Database
) -> None:
    job_id = sample_jobs.echo.enqueue(db, value=1)
    env = {**os.environ, **settings_env(engine_settings), "PYTHONPATH": str(ROOT)}
    command = [
        str(Path(sys.executable).parent / "opsline"),
        "worker",
        "--concurrency",
        "2",
        "--import",
        "tests.platform.engine.sample_jobs",
    ]
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        wait_until(
            lambda: process.poll() is not None or job_row(db, job_id).state == "succeeded",
            timeout=60,
        )
        assert job_row(db, job_id).state == "succeeded"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_settings_env_reproduces_every_setting_in_a_child(
    engine_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``spawn_workers`` hands its processes: settings made in code (tests, the
    bench) reach them whole, not only the engine's own."""
    chosen = engine_settings.model_copy(
        update={
            "sqlite_wal_autocheckpoint": 1234,
            "payment_success_rate": 0.25,
            "orders_redis_lock": False,
            "embedded_workers": 0,
            "job_queue_weights": {"high": 9, "default": 2, "low": 1},
            "payment_gateway_token": SecretStr("tok-child"),
            "previous_secret_keys": [SecretStr("old-key-" + "x" * 40)],
        }
    )
    for name in list(os.environ):
        if name.startswith("OPSLINE_"):
            monkeypatch.delenv(name)
    for key, value in settings_env(chosen).items():
        monkeypatch.setenv(key, value)
    child = Settings()

    def plain(settings: Settings) -> dict[str, object]:
        return {
            name: value.get_secret_value() if isinstance(value, SecretStr) else value
            for name, value in ((n, getattr(settings, n)) for n in Settings.model_fields)
        } | {
            "previous_secret_keys": [k.get_secret_value() for k in settings.previous_secret_keys],
            "database_url": settings.sqlalchemy_url,
        }

    assert plain(child) == plain(chosen)
