"""API conventions: problem documents, request ids, pagination, rate limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from opsline.api import create_app
from opsline.bootstrap import bootstrap
from opsline.platform.http.routing import Route
from opsline.platform.runtime import Runtime
from opsline.settings import Settings
from tests.helpers import add_member, assert_problem, signup


def test_unknown_route_is_a_problem_404(app_client: TestClient) -> None:
    body = assert_problem(app_client.get("/api/v1/no-such-thing"), 404)
    assert body["type"].endswith("/not-found")
    assert body["instance"] == "/api/v1/no-such-thing"


def test_wrong_method_is_a_problem_405(app_client: TestClient) -> None:
    response = app_client.put("/api/v1/auth/login", json={})
    body = assert_problem(response, 405)
    assert "PUT" in body["detail"]


def test_every_api_route_rules_itself_out_by_its_literal_prefix(app_client: TestClient) -> None:
    app: Any = app_client.app
    api_routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert api_routes and all(isinstance(r, Route) for r in api_routes)
    # A path that shares a route's literal prefix and method but not its shape is
    # still matched by the route's own pattern: the order lookup by id, not the list.
    owner = signup(app_client)
    listed = app_client.get("/api/v1/orders/not-a-uuid", headers=owner.headers)
    assert_problem(listed, 422)
    # The same path, another method: 405 from the route matched partially.
    assert_problem(app_client.put("/api/v1/orders"), 405)


def test_openapi_names_how_each_endpoint_authenticates(app_client: TestClient) -> None:
    """The headers are read by the authenticating dependencies themselves; the
    document still says which endpoints take a bearer token or an API key."""
    spec = app_client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["AccessToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Access token from /api/v1/auth/login",
    }
    assert schemes["ApiKey"]["in"] == "header" and schemes["ApiKey"]["name"] == "X-API-Key"
    either = [{"AccessToken": []}, {"ApiKey": []}]
    paths = spec["paths"]
    for path, method in [
        ("/api/v1/orders", "post"),  # PendingPermission
        ("/api/v1/orders", "get"),  # RequirePermission
        ("/api/v1/orders/{order_id}/cancel", "post"),
        ("/api/v1/members", "get"),
    ]:
        assert paths[path][method]["security"] == either, (method, path)
    for path, method in [("/api/v1/auth/signup", "post"), ("/api/v1/auth/login", "post")]:
        assert "security" not in paths[path][method], (method, path)
    secured = [op for ops in paths.values() for op in ops.values() if "security" in op]
    assert len(secured) > 40


def test_openapi_documents_every_error_as_a_problem_document(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    assert spec["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    operations = [
        (path, method, operation)
        for path, ops in spec["paths"].items()
        for method, operation in ops.items()
        if path.startswith("/api/v1/")
    ]
    assert len(operations) > 50
    for path, method, operation in operations:
        for code in ("4XX", "5XX"):
            assert operation["responses"][code]["content"] == problem, (method, path, code)
    placing = spec["paths"]["/api/v1/orders"]["post"]["responses"]
    assert placing["409"]["content"] == problem and "stock" in placing["409"]["description"]
    # The readiness probe's 503 is its own JSON, not a problem document.
    ready = spec["paths"]["/health/ready"]["get"]["responses"]["503"]
    assert list(ready["content"]) == ["application/json"]
    # What the document says is what is sent.
    sent = app_client.get("/api/v1/orders")
    assert sent.status_code == 401 and sent.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "bearer not-a-token", "Token abc", ""],
)
def test_credentials_that_are_missing_or_malformed_are_401(
    app_client: TestClient, authorization: str
) -> None:
    for method, path in [("GET", "/api/v1/orders"), ("POST", "/api/v1/orders")]:
        response = app_client.request(
            method,
            path,
            headers={"Authorization": authorization, "Idempotency-Key": "k"},
            json={"items": []},
        )
        assert_problem(response, 401)


def test_a_lowercase_bearer_scheme_and_an_api_key_header_both_authenticate(
    app_client: TestClient,
) -> None:
    owner = signup(app_client)
    token = owner.headers["Authorization"].split(" ", 1)[1]
    assert app_client.get("/api/v1/orders", headers={"Authorization": f"bearer {token}"}).is_success
    key = app_client.post(
        "/api/v1/api-keys", json={"name": "k", "role": "member"}, headers=owner.headers
    ).json()["key"]
    assert app_client.get("/api/v1/orders", headers={"X-API-Key": key}).is_success
    # An empty key is no key: the bearer token still counts.
    both = {"X-API-Key": "", "Authorization": f"Bearer {token}"}
    assert app_client.get("/api/v1/orders", headers=both).is_success


def test_malformed_json_is_422(app_client: TestClient) -> None:
    response = app_client.post(
        "/api/v1/auth/login", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 422)


def test_bad_path_parameter_is_422_with_its_location(app_client: TestClient) -> None:
    owner = signup(app_client)
    response = app_client.delete("/api/v1/api-keys/not-a-uuid", headers=owner.headers)
    body = assert_problem(response, 422)
    assert body["errors"][0]["loc"] == ["path", "key_id"]


@pytest.fixture
def failing_client(runtime: Runtime) -> Iterator[TestClient]:
    app = create_app(runtime=runtime)

    def explode() -> None:
        raise RuntimeError("database password is hunter2")

    app.add_api_route("/boom", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_unexpected_error_is_500_revealing_nothing(failing_client: TestClient) -> None:
    response = failing_client.get("/boom")
    body = assert_problem(response, 500)
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert body["request_id"] == response.headers["x-request-id"]


def test_every_response_carries_a_request_id(app_client: TestClient) -> None:
    generated = app_client.get("/health/live")
    assert len(generated.headers["x-request-id"]) == 32
    echoed = app_client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    unsafe = app_client.get("/health/live", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


def test_list_endpoints_page_with_a_cursor(app_client: TestClient) -> None:
    owner = signup(app_client)
    for role in ("member", "viewer", "manager"):
        add_member(app_client, owner, role)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = app_client.get("/api/v1/members", params=params, headers=owner.headers).json()
        seen += [m["user_id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 4


def test_invalid_cursor_or_limit_is_422(app_client: TestClient) -> None:
    owner = signup(app_client)
    bad_cursor = app_client.get("/api/v1/members?cursor=@@@", headers=owner.headers)
    assert_problem(bad_cursor, 422)
    bad_limit = app_client.get("/api/v1/members?limit=100000", headers=owner.headers)
    assert_problem(bad_limit, 422)


def test_authenticated_responses_carry_ratelimit_headers(app_client: TestClient) -> None:
    owner = signup(app_client)
    response = app_client.get("/api/v1/me", headers=owner.headers)
    assert int(response.headers["ratelimit-limit"]) > 0
    assert "ratelimit-remaining" in response.headers


class TestPrincipalRateLimit:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"rate_limit_api": "3/minute"}

    def test_fourth_call_in_a_minute_is_429_with_retry_after(self, app_client: TestClient) -> None:
        owner = signup(app_client)
        statuses = [
            app_client.get("/api/v1/me", headers=owner.headers).status_code for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]
        limited = app_client.get("/api/v1/me", headers=owner.headers)
        assert_problem(limited, 429)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["ratelimit-remaining"] == "0"
        # Another principal has its own budget.
        other = signup(app_client)
        assert app_client.get("/api/v1/me", headers=other.headers).status_code == 200


class TestSignupRateLimitPerIp:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"rate_limit_auth": "2/minute"}

    def test_third_signup_from_one_ip_is_429(self, app_client: TestClient) -> None:
        signup(app_client)
        signup(app_client)
        response = app_client.post(
            "/api/v1/auth/signup",
            json={"email": "third@example.com", "password": "p" * 12, "tenant_name": "T"},
        )
        assert_problem(response, 429)


@pytest.mark.redis
def test_rate_limits_are_shared_across_servers_through_redis(
    settings: Settings, redis_url: str
) -> None:
    shared = Settings(
        **{**settings.model_dump(), "redis_url": redis_url, "rate_limit_api": "3/minute"}
    )
    first, second = bootstrap(shared), bootstrap(shared)
    try:
        with (
            TestClient(create_app(runtime=first)) as one,
            TestClient(create_app(runtime=second)) as two,
        ):
            owner = signup(one)
            statuses = [
                one.get("/api/v1/me", headers=owner.headers).status_code,
                two.get("/api/v1/me", headers=owner.headers).status_code,
                one.get("/api/v1/me", headers=owner.headers).status_code,
                two.get("/api/v1/me", headers=owner.headers).status_code,
            ]
    finally:
        first.close()
        second.close()
    assert statuses == [200, 200, 200, 429]
