"""``opsline bulk``: preview, run followed live, list, undo."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from opsline.cli.main import app
from opsline.platform.clitools import console
from opsline.platform.tenancy import service as tenancy
from tests.bulk.conftest import Desk
from tests.helpers import signup


def test_preview_run_list_and_undo(cli: CliRunner, desk: Desk, worker: Any) -> None:
    ids = desk.seed(5)
    before = desk.rows_hash()
    tenant = str(desk.owner.tenant_id)
    seen = cli.invoke(app, ["bulk", "preview", "--tenant", tenant, "products", "archive"])
    assert seen.exit_code == 0, seen.output
    assert "5 records" in seen.output
    ran = cli.invoke(
        app, ["bulk", "run", "--tenant", tenant, "products", "archive", "--id", ids[0]]
    )
    assert ran.exit_code == 0, ran.output
    assert "completed: 1 processed" in ran.output
    listed = cli.invoke(app, ["bulk", "list", "--tenant", tenant])
    assert "archive" in listed.output
    run_id = ran.output.split("run ")[1].split()[0]
    undone = cli.invoke(app, ["bulk", "undo", "--tenant", tenant, run_id])
    assert undone.exit_code == 0, undone.output
    assert desk.rows_hash() == before
    refused = cli.invoke(app, ["bulk", "run", "--tenant", tenant, "products", "soft_delete"])
    assert refused.exit_code == 1


def test_status_and_cancel(cli: CliRunner, desk: Desk) -> None:
    ids = desk.seed(2)
    tenant = str(desk.owner.tenant_id)
    run = desk.run({"resource": "products", "action": "archive", "ids": ids})  # no worker: runs on
    shown = cli.invoke(app, ["bulk", "status", "--tenant", tenant, run["id"]])
    assert shown.exit_code == 0, shown.output
    assert '"status": "running"' in shown.output and '"total": 2' in shown.output
    cancelled = cli.invoke(app, ["bulk", "cancel", "--tenant", tenant, run["id"]])
    assert cancelled.exit_code == 0 and f"run {run['id']}: cancelled" in cancelled.output
    listed = cli.invoke(app, ["bulk", "list", "--tenant", tenant, "--status", "cancelled"])
    assert run["id"] in listed.output
    stranger = signup(desk.client, tenant="Other").tenant_id
    other = cli.invoke(app, ["bulk", "status", "--tenant", str(stranger), run["id"]])
    assert other.exit_code == 1 and "no bulk run" in other.output
    nobody = str(uuid.uuid4())
    unknown = cli.invoke(app, ["bulk", "status", "--tenant", nobody, run["id"]])
    assert unknown.exit_code == 1 and f"tenant {nobody} not found" in unknown.output


@pytest.mark.parametrize(
    "options",
    [
        ["--where", "nonsense"],
        ["--where", "stock:regex:1"],
        ["--set", "name"],
        ["--id", "not-a-uuid"],
        ["--batch-size", "0"],
    ],
)
def test_bad_options_are_messages_not_tracebacks(
    cli: CliRunner, desk: Desk, options: list[str]
) -> None:
    tenant = str(desk.owner.tenant_id)
    got = cli.invoke(app, ["bulk", "preview", "--tenant", tenant, "products", "update", *options])
    assert got.exit_code in (1, 2), got.output
    assert got.exception is None or isinstance(got.exception, SystemExit), got.exception


def test_a_tenant_given_by_slug_works_as_by_id(cli: CliRunner, desk: Desk) -> None:
    ids = desk.seed(2)
    slug = tenancy.get_tenant(desk.runtime.db, desk.owner.tenant_id).slug
    run = desk.run({"resource": "products", "action": "archive", "ids": ids})
    by_slug = cli.invoke(app, ["bulk", "list", "--tenant", slug])
    by_id = cli.invoke(app, ["bulk", "list", "--tenant", str(desk.owner.tenant_id)])
    assert by_slug.exit_code == 0, by_slug.output
    assert by_slug.output == by_id.output and run["id"] in by_slug.output
    seen = cli.invoke(app, ["bulk", "preview", "--tenant", slug, "products", "archive"])
    assert seen.exit_code == 0 and "2 records" in seen.output
    unknown = cli.invoke(app, ["bulk", "list", "--tenant", "no-such-shop"])
    assert unknown.exit_code == 1 and "tenant no-such-shop not found" in unknown.output


def test_run_and_record_ids_print_whole_in_an_80_column_terminal(
    cli: CliRunner, desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = desk.seed(2, name="A product name long enough to need folding")
    run = desk.run({"resource": "products", "action": "archive", "ids": ids})
    monkeypatch.setattr(console, "width", 80)  # Rich reads COLUMNS once, at import
    tenant = ["--tenant", str(desk.owner.tenant_id)]
    listed = cli.invoke(app, ["bulk", "list", *tenant])
    seen = cli.invoke(app, ["bulk", "preview", *tenant, "products", "update", "--set", "name=x"])
    for output, wanted in ((listed.output, run["id"]), (seen.output, ids[0])):
        assert f"│ {wanted} │" in output, output
        assert "…" not in output
        assert max(len(line) for line in output.splitlines()) <= 80
