"""Tenant isolation over every registered route.

Walks the app's routes (so a route added later is covered automatically) with
tenant A's owner credentials and tenant B's object ids. A route addressing an
object must answer 404 exactly as for a missing object; no route may answer
with B's data; and B's objects are unchanged afterwards.

A new path parameter needs a way to make one of B's objects: add it to
``_B_OBJECTS`` (the test fails naming the parameter until then).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from opsline.platform.runtime import Runtime
from tests.helpers import Account, add_member, signup, unique_email

# A factory makes one of B's objects and returns its id and a text only B's data holds.
ObjectFactory = Callable[[TestClient, Account, Runtime], tuple[str, str]]


def _b_member(client: TestClient, b: Account, _: Runtime) -> tuple[str, str]:
    member = add_member(client, b, "member")
    return str(member.user_id), member.email


def _b_api_key(client: TestClient, b: Account, _: Runtime) -> tuple[str, str]:
    name = f"b-key-{uuid.uuid4().hex}"
    created = client.post("/api/v1/api-keys", json={"name": name}, headers=b.headers)
    return str(created.json()["id"]), name


def _b_invitation(client: TestClient, b: Account, _: Runtime) -> tuple[str, str]:
    email = unique_email("b-invitee")
    created = client.post("/api/v1/invitations", json={"email": email}, headers=b.headers)
    return str(created.json()["id"]), email


def _b_job(_client: TestClient, b: Account, runtime: Runtime) -> tuple[str, str]:
    from tests.platform.engine import sample_jobs

    marker = f"b-job-{uuid.uuid4().hex}"
    job_id = sample_jobs.echo.enqueue(runtime.db, tenant_id=b.tenant_id, value=1, note=marker)
    return str(job_id), marker


def _b_batch(_client: TestClient, b: Account, runtime: Runtime) -> tuple[str, str]:
    from opsline.platform.engine.batches import create_batch

    marker = f"b-batch-{uuid.uuid4().hex}"
    with runtime.db.unit_of_work() as uow:
        batch_id = create_batch(uow, [], name=marker, tenant_id=b.tenant_id)
    return str(batch_id), marker


def _b_product(client: TestClient, b: Account, _: Runtime) -> tuple[str, str]:
    sku = f"B-{uuid.uuid4().hex[:10]}"
    created = client.post(
        "/api/v1/products",
        json={"sku": sku, "name": f"secret {sku}", "price": "1.00", "stock": 5},
        headers=b.headers,
    )
    return str(created.json()["id"]), sku


def _b_order(client: TestClient, b: Account, runtime: Runtime) -> tuple[str, str]:
    product_id, sku = _b_product(client, b, runtime)
    placed = client.post(
        "/api/v1/orders",
        json={"items": [{"product_id": product_id, "quantity": 1}]},
        headers={**b.headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    return str(placed.json()["id"]), sku


def _b_bulk_run(client: TestClient, b: Account, runtime: Runtime) -> tuple[str, str]:
    _, sku = _b_product(client, b, runtime)
    body = {
        "resource": "products",
        "action": "export",
        "where": [{"field": "sku", "op": "eq", "value": sku}],
    }
    token = client.post("/api/v1/bulk/preview", json=body, headers=b.headers).json()
    started = client.post(
        "/api/v1/bulk/runs",
        json={**body, "confirmation_token": token["confirmation_token"]},
        headers=b.headers,
    )
    return str(started.json()["id"]), sku


_B_OBJECTS: dict[str, ObjectFactory] = {
    "product_id": _b_product,
    "order_id": _b_order,
    "user_id": _b_member,
    "key_id": _b_api_key,
    "invitation_id": _b_invitation,
    "job_id": _b_job,
    "batch_id": _b_batch,
    "run_id": _b_bulk_run,
}

_PARAM = re.compile(r"{(\w+)}")


def _api_routes(client: TestClient) -> list[APIRoute]:
    app: Any = client.app
    return [r for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/api/v1")]


def _example(schema: dict[str, Any], spec: dict[str, Any], ids: dict[str, str]) -> Any:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _example(spec["components"]["schemas"][name], spec, ids)
    for combo in ("anyOf", "oneOf", "allOf"):
        if combo in schema:
            options = [s for s in schema[combo] if s.get("type") != "null"]
            return _example(options[0], spec, ids)
    if "enum" in schema:
        return schema["enum"][0]
    kind, fmt = schema.get("type"), schema.get("format")
    if kind == "object":
        return {
            name: _example(prop, spec, ids)
            for name, prop in schema.get("properties", {}).items()
            if name in schema.get("required", [])
        }
    if kind == "array":
        return [_example(schema.get("items", {}), spec, ids)]
    if kind in ("integer", "number"):
        return max(1, schema.get("minimum", 1))
    if kind == "boolean":
        return True
    if fmt == "uuid":
        return next(iter(ids.values()), str(uuid.uuid4()))
    if fmt == "email":
        return unique_email("walker")
    if fmt == "date-time":
        return "2099-01-01T00:00:00+00:00"
    return "x" * max(12, schema.get("minLength", 1))


def _body_for(route: APIRoute, method: str, spec: dict[str, Any], ids: dict[str, str]) -> Any:
    operation = spec["paths"][route.path][method.lower()]
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    return _example(schema, spec, ids) if schema else None


def test_tenant_a_never_reaches_tenant_b(app_client: TestClient, runtime: Runtime) -> None:
    a = signup(app_client, tenant="Tenant A")
    b = signup(app_client, tenant="Tenant B")
    routes = _api_routes(app_client)
    needed = {p for r in routes for p in _PARAM.findall(r.path)}
    missing = needed - _B_OBJECTS.keys()
    assert not missing, f"add a factory for B's object to _B_OBJECTS for: {sorted(missing)}"
    made = {param: _B_OBJECTS[param](app_client, b, runtime) for param in sorted(needed)}
    ids = {param: object_id for param, (object_id, _) in made.items()}
    # Ids in the path are the caller's own input (echoed in a 404); B's data is not.
    secrets_of_b = {str(b.tenant_id), b.email, *(marker for _, marker in made.values())}
    spec = app_client.get("/openapi.json").json()
    # An owner API key: the walk cannot log A out halfway (logout is then a 403).
    key = app_client.post(
        "/api/v1/api-keys", json={"name": "walker", "role": "owner"}, headers=a.headers
    ).json()["key"]
    headers = {"X-API-Key": key}

    checked = 0
    for route in routes:
        params = _PARAM.findall(route.path)
        path = _PARAM.sub(lambda m: ids[m.group(1)], route.path)
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            body = _body_for(route, method, spec, ids)
            response = app_client.request(method, path, json=body, headers=headers)
            where = f"{method} {route.path} -> {response.status_code}"
            assert response.status_code < 500, where
            if params:
                assert response.status_code == 404, where
            leaked = [s for s in secrets_of_b if s in response.text]
            assert not leaked, f"{where} leaked tenant B data: {leaked}"
            checked += 1
    assert checked >= len(routes)

    # B's world is untouched.
    members = app_client.get("/api/v1/members", headers=b.headers).json()["items"]
    assert str(ids["user_id"]) in {m["user_id"] for m in members}
    keys = app_client.get("/api/v1/api-keys", headers=b.headers).json()["items"]
    assert all(k["revoked_at"] is None for k in keys)
    invitations = app_client.get("/api/v1/invitations", headers=b.headers).json()["items"]
    assert all(i["revoked_at"] is None for i in invitations)
    product = app_client.get(f"/api/v1/products/{ids['product_id']}", headers=b.headers).json()
    assert (product["stock"], product["price"], product["archived_at"]) == (5, "1.00", None)
    order = app_client.get(f"/api/v1/orders/{ids['order_id']}", headers=b.headers).json()
    assert order["status"] == "PENDING"


def test_other_tenant_object_and_missing_object_answer_alike(app_client: TestClient) -> None:
    a = signup(app_client)
    b = signup(app_client)
    b_key, _ = _b_api_key(app_client, b, None)  # type: ignore[arg-type]
    foreign = app_client.delete(f"/api/v1/api-keys/{b_key}", headers=a.headers)
    missing = app_client.delete(f"/api/v1/api-keys/{uuid.uuid4()}", headers=a.headers)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["title"] == missing.json()["title"]
