"""The command line: tenants, users, API keys, demo, errors with non-zero exits."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from opsline import __version__
from opsline.cli import app
from opsline.platform.clitools import console

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def test_version(cli: CliRunner) -> None:
    result = cli.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == __version__


def test_tenant_user_and_api_key_lifecycle(cli: CliRunner) -> None:
    created = cli.invoke(
        app,
        [
            "tenants",
            "create",
            "Acme",
            "--owner-email",
            "boss@acme.example",
            "--owner-password",
            "a-long-password",
        ],
    )
    assert created.exit_code == 0, created.output
    tenant_id = re.search(UUID, created.output).group(0)  # type: ignore[union-attr]

    listed = cli.invoke(app, ["tenants", "list"])
    assert "Acme" in listed.output and tenant_id in listed.output

    user = cli.invoke(
        app,
        [
            "users",
            "create",
            "clerk@acme.example",
            "--tenant",
            tenant_id,
            "--role",
            "viewer",
            "--password",
            "another-long-one",
        ],
    )
    assert user.exit_code == 0, user.output
    members = cli.invoke(app, ["users", "list", "--tenant", tenant_id])
    assert "clerk@acme.example" in members.output and "viewer" in members.output

    key = cli.invoke(app, ["apikeys", "create", "--tenant", tenant_id, "--name", "ci"])
    assert key.exit_code == 0, key.output
    assert re.search(r"olk_\w{12}_\S+", key.output)
    key_id = re.search(UUID, key.output).group(0)  # type: ignore[union-attr]
    revoked = cli.invoke(app, ["apikeys", "revoke", key_id])
    assert revoked.exit_code == 0 and "revoked" in revoked.output


def test_errors_exit_non_zero_with_a_message(cli: CliRunner) -> None:
    nobody = "00000000-0000-0000-0000-000000000000"
    missing = cli.invoke(app, ["users", "list", "--tenant", nobody])
    assert missing.exit_code == 1
    assert f"tenant {nobody} not found" in missing.output

    short = cli.invoke(
        app,
        ["tenants", "create", "X", "--owner-email", "a@b.example", "--owner-password", "short"],
    )
    assert short.exit_code == 1
    assert "password must be" in short.output

    bad_uuid = cli.invoke(app, ["apikeys", "revoke", "nope"])
    assert bad_uuid.exit_code == 2


def test_invalid_settings_exit_2_naming_the_variable(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSLINE_LOG_FORMAT", "xml")
    result = cli.invoke(app, ["tenants", "list"])
    assert result.exit_code == 2
    assert "OPSLINE_LOG_FORMAT" in result.output


def test_demo_is_created_once(cli: CliRunner) -> None:
    first = cli.invoke(app, ["demo"])
    assert first.exit_code == 0, first.output
    assert "created" in first.output and "owner@demo.opsline.dev" in first.output
    second = cli.invoke(app, ["demo"])
    assert second.exit_code == 0
    assert "exists" in second.output


def test_roles_lists_permissions(cli: CliRunner) -> None:
    result = cli.invoke(app, ["roles"])
    assert result.exit_code == 0
    assert "members.manage" in result.output and "admin" in result.output


def test_tenant_names_print_as_typed_and_control_characters_are_usage_errors(
    cli: CliRunner,
) -> None:
    owner = ["--owner-email", "markup@acme.example", "--owner-password", "a-long-password"]
    created = cli.invoke(app, ["tenants", "create", "[/]", *owner])
    assert created.exit_code == 0, created.output
    assert "tenant [/]" in created.output
    listed = cli.invoke(app, ["tenants", "list"])
    assert listed.exit_code == 0, listed.output
    assert "[/]" in listed.output
    other = ["--owner-email", "nul@acme.example", "--owner-password", "a-long-password"]
    refused = cli.invoke(app, ["tenants", "create", "a\x00b", *other])
    assert refused.exit_code == 2
    assert "control characters" in refused.output


def test_emails_are_checked_as_the_api_checks_them(cli: CliRunner) -> None:
    owner = ["--owner-password", "a-long-password"]
    for bad in ("not-an-email", "a\x00b@acme.example", ""):
        refused = cli.invoke(app, ["tenants", "create", "Acme", "--owner-email", bad, *owner])
        assert refused.exit_code == 2, refused.output
        assert "Invalid value" in refused.output
    created = cli.invoke(
        app, ["tenants", "create", "Acme", "--owner-email", "owner@acme.example", *owner]
    )
    assert created.exit_code == 0, created.output
    tenant_id = created.output.split()[2]
    joined = ["--tenant", tenant_id, "--password", "a-long-password"]
    refused = cli.invoke(app, ["users", "create", "nobody", *joined])
    assert refused.exit_code == 2 and "Invalid value" in refused.output
    assert cli.invoke(app, ["users", "create", "member@acme.example", *joined]).exit_code == 0


def _demo_slug_and_id(cli: CliRunner) -> tuple[str, str]:
    shown = cli.invoke(app, ["demo"])
    assert shown.exit_code == 0, shown.output
    found = re.search(rf"slug (\S+), id ({UUID})", shown.output)
    assert found, shown.output
    return found.group(1), found.group(2)


def test_demo_prints_the_tenant_slug_and_id_every_time(cli: CliRunner) -> None:
    slug, tenant_id = _demo_slug_and_id(cli)
    assert (slug, tenant_id) == _demo_slug_and_id(cli)  # "exists" says it again
    listed = cli.invoke(app, ["tenants", "list"])
    assert re.search(rf"{tenant_id} .*Demo Shop.* {slug} ", listed.output), listed.output


def test_a_tenant_given_by_slug_works_as_by_id(cli: CliRunner) -> None:
    slug, tenant_id = _demo_slug_and_id(cli)
    joined = ["--tenant", slug, "--role", "viewer", "--password", "another-long-one"]
    user = cli.invoke(app, ["users", "create", "clerk@demo.example", *joined])
    assert user.exit_code == 0, user.output
    by_slug = cli.invoke(app, ["users", "list", "--tenant", slug])
    by_id = cli.invoke(app, ["users", "list", "--tenant", tenant_id])
    assert by_slug.exit_code == 0, by_slug.output
    assert by_slug.output == by_id.output
    assert "clerk@demo.example" in by_slug.output
    key = cli.invoke(app, ["apikeys", "create", "--tenant", slug, "--name", "ci"])
    assert key.exit_code == 0, key.output


@pytest.mark.parametrize(
    "command",
    [
        ["users", "list"],
        ["users", "create", "new@demo.example", "--password", "a-long-password"],
        ["apikeys", "create", "--name", "ci"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_an_unknown_slug_exits_1_naming_it(cli: CliRunner, command: list[str]) -> None:
    _demo_slug_and_id(cli)
    result = cli.invoke(app, [*command, "--tenant", "no-such-shop"])
    assert result.exit_code == 1, result.output
    assert "tenant no-such-shop not found" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_tenant_with_control_characters_is_a_usage_error(cli: CliRunner) -> None:
    result = cli.invoke(app, ["users", "list", "--tenant", "demo\x00"])
    assert result.exit_code == 2
    assert "control characters" in result.output


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Print as in an 80-column terminal (Rich reads COLUMNS once, at import)."""
    monkeypatch.setattr(console, "width", 80)


def test_ids_print_whole_in_an_80_column_terminal(cli: CliRunner, narrow: None) -> None:
    _, tenant_id = _demo_slug_and_id(cli)
    tenants = cli.invoke(app, ["tenants", "list"])
    members = cli.invoke(app, ["users", "list", "--tenant", tenant_id])
    for listed in (tenants, members):
        assert listed.exit_code == 0, listed.output
        assert re.search(rf"│ {UUID} │", listed.output), listed.output
        assert "…" not in listed.output
        assert max(len(line) for line in listed.output.splitlines()) <= 80
    assert tenant_id in tenants.output
