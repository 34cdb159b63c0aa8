"""The command line: tenants, users, API keys, demo, errors with non-zero exits."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from opsline import __version__
from opsline.cli import app

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
    missing = cli.invoke(app, ["users", "list", "--tenant", "00000000-0000-0000-0000-000000000000"])
    assert missing.exit_code == 1
    assert "tenant not found" in missing.output

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
