"""A body that is cut short, not sent as JSON, or missing: a 422 that says what to fix."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import Account, assert_problem, signup

ENDPOINTS = pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/products"])
SEND_JSON = "send it as JSON with Content-Type: application/json"


@pytest.fixture
def owner(app_client: TestClient) -> Account:
    return signup(app_client)


def _post(
    client: TestClient, owner: Account, path: str, content: bytes | None, content_type: str | None
) -> dict[str, Any]:
    headers = {**owner.headers, "Idempotency-Key": "k1"}
    if content_type:
        headers["Content-Type"] = content_type
    body = assert_problem(client.post(path, content=content, headers=headers), 422)
    assert body["type"].endswith("/validation-error")
    return body


@ENDPOINTS
def test_truncated_json_body_says_where_it_stops_being_json(
    app_client: TestClient, owner: Account, path: str
) -> None:
    body = _post(app_client, owner, path, b'{"items":[{"product_id":', "application/json")
    assert body["detail"] == "the body is not valid JSON (at character 24): Expecting value"
    assert body["errors"] == [
        {"loc": ["body", 24], "msg": "JSON decode error", "type": "json_invalid"}
    ]


@ENDPOINTS
def test_form_encoded_body_says_to_send_json(
    app_client: TestClient, owner: Account, path: str
) -> None:
    # curl -d without -H 'content-type: application/json'
    content = b'{"items":[{"product_id":"x","quantity":1}]}'
    body = _post(app_client, owner, path, content, "application/x-www-form-urlencoded")
    assert body["detail"] == (
        f"the body was sent as application/x-www-form-urlencoded, not JSON: {SEND_JSON}"
    )
    assert [e["loc"] for e in body["errors"]] == [["body"]]


def test_media_type_parameters_are_left_out_of_the_detail(
    app_client: TestClient, owner: Account
) -> None:
    body = _post(app_client, owner, "/api/v1/orders", b"{}", "text/plain; charset=utf-8")
    assert body["detail"] == f"the body was sent as text/plain, not JSON: {SEND_JSON}"


@ENDPOINTS
@pytest.mark.parametrize(
    ("content", "content_type"),
    [(None, None), (b"", "application/json"), (b"null", "application/json")],
    ids=["no-body", "empty-json", "json-null"],
)
def test_missing_body_says_the_body_is_required(
    app_client: TestClient,
    owner: Account,
    path: str,
    content: bytes | None,
    content_type: str | None,
) -> None:
    body = _post(app_client, owner, path, content, content_type)
    assert body["detail"] == f"the body is required: {SEND_JSON}"
    assert body["errors"] == [{"loc": ["body"], "msg": "Field required", "type": "missing"}]


def test_json_without_content_type_is_read_as_json(app_client: TestClient, owner: Account) -> None:
    body = _post(app_client, owner, "/api/v1/orders", b'{"items":[]}', None)
    assert body["detail"] == "fix these fields: body.items"


def test_invalid_fields_are_still_named(app_client: TestClient, owner: Account) -> None:
    body = _post(app_client, owner, "/api/v1/products", b"{}", "application/json")
    assert body["detail"].startswith("fix these fields: body.sku, body.name")
    assert all(e["type"] == "missing" for e in body["errors"])
