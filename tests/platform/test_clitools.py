"""``resolve_tenant``: the one reading of ``--tenant`` that every command shares."""

from __future__ import annotations

import uuid

import pytest
import typer

from opsline.platform.clitools import resolve_tenant
from opsline.platform.runtime import Runtime
from opsline.platform.tenancy.models import Tenant


def _tenant(runtime: Runtime, slug: str, tenant_id: uuid.UUID | None = None) -> uuid.UUID:
    tenant_id = tenant_id or uuid.uuid4()
    with runtime.db.unit_of_work() as uow:
        uow.session.add(Tenant(id=tenant_id, name=slug, slug=slug))
    return tenant_id


def test_a_tenant_is_found_by_id_in_any_spelling_or_by_slug(runtime: Runtime) -> None:
    acme = _tenant(runtime, "acme-0a0b0c")
    for given in (str(acme), str(acme).upper(), acme.hex, "acme-0a0b0c"):
        assert resolve_tenant(runtime.db, given) == acme


def test_a_slug_that_reads_as_an_id_still_names_its_tenant(runtime: Runtime) -> None:
    # A tenant named "0123456789abcdef0123456789" gets a slug uuid.UUID() accepts.
    slug = "0123456789abcdef0123456789-abcdef"
    hexy = _tenant(runtime, slug)
    assert resolve_tenant(runtime.db, slug) == hexy


def test_an_id_wins_over_a_slug_spelling_the_same_id(runtime: Runtime) -> None:
    target = uuid.uuid4()
    decoy = _tenant(runtime, str(target))
    assert resolve_tenant(runtime.db, str(target)) == decoy
    real = _tenant(runtime, "real-0a0b0c", target)
    assert resolve_tenant(runtime.db, str(target)) == real


@pytest.mark.parametrize("given", ["no-such-shop", str(uuid.UUID(int=7)), ""])
def test_an_unknown_tenant_exits_1(
    runtime: Runtime, given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _tenant(runtime, "acme-0a0b0c")
    with pytest.raises(typer.Exit) as exited:
        resolve_tenant(runtime.db, given)
    assert exited.value.exit_code == 1
    assert f"tenant {given} not found" in capsys.readouterr().err
