"""Failed logins limited per account across addresses, and the address a limit is
counted on: the peer's, or the client's as a trusted reverse proxy forwards it."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from opsline.platform.engine.processes import settings_env
from opsline.settings import Settings, SettingsError, load_settings
from tests._server import free_port, opsline_command, opsline_serve
from tests.helpers import PASSWORD, assert_problem, signup, unique_email

ROOT = Path(__file__).resolve().parents[3]
LOGIN = "/api/v1/auth/login"
WRONG = "not the password"
_addresses = itertools.count(1)
Served = Callable[[str | None], AbstractContextManager[str]]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def limiter_backend(request: pytest.FixtureRequest) -> dict[str, object]:
    if request.param == "redis":
        return {"redis_url": request.getfixturevalue("redis_url")}
    return {}


@pytest.fixture
def settings_overrides(limiter_backend: dict[str, object]) -> dict[str, object]:
    # Hourly windows: the limiter's sliding window counter weighs the previous
    # window's hits by its key's remaining lifetime, so counts that straddle a
    # window's end are approximate; a minute's end fell inside a test once.
    return {
        "rate_limit_failed_login": "3/hour",
        "rate_limit_failed_login_account": "5/hour",
        **limiter_backend,
    }


def new_address() -> str:
    """An address no other test of this process has used."""
    n = next(_addresses)
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


class From:
    """Requests to the app under test from one client address."""

    def __init__(self, app_client: TestClient, address: str | None = None) -> None:
        self.address = address or new_address()
        self.http = TestClient(
            app_client.app, client=(self.address, 50000), raise_server_exceptions=False
        )

    def login(self, email: str, password: str, tenant_id: object = None) -> httpx.Response:
        body = {"email": email, "password": password}
        if tenant_id is not None:
            body["tenant_id"] = str(tenant_id)
        return self.http.post(LOGIN, json=body)

    def accept(self, token: str, password: str) -> httpx.Response:
        body = {"token": token, "password": password}
        return self.http.post("/api/v1/auth/accept-invite", json=body)


def assert_account_paused(response: httpx.Response) -> None:
    body = assert_problem(response, 429)
    assert "this account" in body["detail"] and "retry after" in body["detail"], body
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["ratelimit-limit"] == "5"
    assert response.headers["ratelimit-remaining"] == "0"
    assert int(response.headers["ratelimit-reset"]) >= 1


def test_guesses_spread_over_many_addresses_are_stopped_per_account(
    app_client: TestClient,
) -> None:
    """One wrong password from each of many addresses never reaches a per-address
    limit; the account's own limit stops the sixth, and from an address the account
    has not logged in from even the right password waits."""
    account = signup(app_client)
    statuses = [From(app_client).login(account.email, WRONG).status_code for _ in range(5)]
    assert statuses == [401] * 5
    assert_account_paused(From(app_client).login(account.email, WRONG))
    assert_account_paused(From(app_client).login(account.email, PASSWORD))


def test_an_unknown_email_is_limited_alike(app_client: TestClient) -> None:
    """Whether the account exists cannot be told from the limit."""
    email = unique_email("nobody")
    assert [From(app_client).login(email, WRONG).status_code for _ in range(5)] == [401] * 5
    assert_account_paused(From(app_client).login(email, WRONG))


def test_the_owner_still_logs_in_from_an_address_they_logged_in_from(
    app_client: TestClient,
) -> None:
    """A stranger who knows the email cannot lock its owner out of their usual
    address: a pause holds back only addresses the account has not logged in from."""
    account = signup(app_client)
    home = From(app_client)
    assert home.login(account.email, PASSWORD).status_code == 200
    for _ in range(5):
        From(app_client).login(account.email, WRONG)
    assert_account_paused(From(app_client).login(account.email, PASSWORD))
    assert home.login(account.email, PASSWORD).status_code == 200


def test_a_wrong_password_from_a_known_address_is_still_a_failure(
    app_client: TestClient,
) -> None:
    """Known addresses are not refused by the pause, but their failures count and
    their own per-address limit applies as before."""
    account = signup(app_client)
    home = From(app_client)
    assert home.login(account.email, PASSWORD).status_code == 200
    assert [home.login(account.email, WRONG).status_code for _ in range(4)] == [401] * 3 + [429]
    assert [From(app_client).login(account.email, WRONG).status_code for _ in range(2)] == [
        401,
        401,
    ]
    assert_account_paused(From(app_client).login(account.email, WRONG))


def test_refusals_by_the_per_address_limit_do_not_count_for_the_account(
    app_client: TestClient,
) -> None:
    """Hammering from one address spends that address's allowance, not the account's:
    the refused attempts check no password and bring no pause nearer."""
    account = signup(app_client)
    stranger = From(app_client)
    statuses = [stranger.login(account.email, WRONG).status_code for _ in range(20)]
    assert statuses == [401] * 3 + [429] * 17
    assert [From(app_client).login(account.email, WRONG).status_code for _ in range(2)] == [
        401,
        401,
    ]
    assert_account_paused(From(app_client).login(account.email, WRONG))


def test_a_successful_login_clears_the_account_s_failures(app_client: TestClient) -> None:
    account = signup(app_client)
    for _ in range(4):
        assert From(app_client).login(account.email, WRONG).status_code == 401
    assert From(app_client).login(account.email, PASSWORD).status_code == 200
    assert [From(app_client).login(account.email, WRONG).status_code for _ in range(5)] == [401] * 5
    assert_account_paused(From(app_client).login(account.email, WRONG))


def test_guesses_sent_at_once_from_many_addresses_are_counted_before_they_are_checked(
    app_client: TestClient,
) -> None:
    account = signup(app_client)
    clients = [From(app_client) for _ in range(12)]
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda c: c.login(account.email, WRONG).status_code, clients))
    assert sorted(statuses) == [401] * 5 + [429] * 7


def _invite(app_client: TestClient, email: str) -> str:
    inviter = signup(app_client)
    invited = app_client.post("/api/v1/invitations", json={"email": email}, headers=inviter.headers)
    assert invited.status_code == 201, invited.text
    return str(invited.json()["token"])


def test_invitations_cannot_multiply_the_guesses_at_an_account_s_password(
    app_client: TestClient,
) -> None:
    """An invitation to an existing account takes its password: each invitation had
    its own allowance, so whoever could invite the email as often as they liked could
    guess without end. Those guesses count for the account, as logins do."""
    victim = signup(app_client)
    tokens = [_invite(app_client, victim.email) for _ in range(6)]
    statuses = [From(app_client).accept(t, WRONG + "1").status_code for t in tokens[:5]]
    assert statuses == [401] * 5
    assert_account_paused(From(app_client).accept(tokens[5], WRONG + "1"))
    assert_account_paused(From(app_client).login(victim.email, WRONG))


def test_an_invitation_accepted_with_the_password_clears_the_account_s_failures(
    app_client: TestClient,
) -> None:
    victim = signup(app_client)
    for _ in range(4):
        assert From(app_client).login(victim.email, WRONG).status_code == 401
    joining = From(app_client)
    assert joining.accept(_invite(app_client, victim.email), PASSWORD).status_code == 200
    assert [From(app_client).login(victim.email, WRONG).status_code for _ in range(5)] == [401] * 5
    # The address that accepted is one the account has logged in from.
    assert joining.login(victim.email, PASSWORD, victim.tenant_id).status_code == 200


# Settings.


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("", ""),
        ("10.0.0.5", "10.0.0.5"),
        (" 10.0.0.5 , 192.168.0.0/16,::1 ", "10.0.0.5,192.168.0.0/16,::1"),
        ("fd00:0::0:1", "fd00::1"),
        ("*", "*"),
    ],
)
def test_trusted_proxies_are_addresses_or_networks(
    given: str, kept: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSLINE_FORWARDED_ALLOW_IPS", given)
    assert load_settings().forwarded_allow_ips == kept


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("proxy.internal", "not an IP address or network"),
        ("10.0.0.5/8", "10.0.0.0/8"),
        ("10.0.0.300", "not an IP address or network"),
        ("*,10.0.0.5", "'*' trusts every peer"),
        ("10.0.0.5,,10.0.0.6", "empty entry"),
    ],
)
def test_a_bad_trusted_proxy_is_refused_naming_the_variable(
    given: str, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSLINE_FORWARDED_ALLOW_IPS", given)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "OPSLINE_FORWARDED_ALLOW_IPS" in str(refused.value) and said in str(refused.value)


def test_a_bad_account_rate_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPSLINE_RATE_LIMIT_FAILED_LOGIN_ACCOUNT", "twenty an hour")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "OPSLINE_RATE_LIMIT_FAILED_LOGIN_ACCOUNT" in str(refused.value)


# A real ``opsline serve`` over loopback.


@pytest.fixture
def serve_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLINE_")}
    env.update(settings_env(settings))
    env.update(
        OPSLINE_RATE_LIMIT_FAILED_LOGIN="1/hour",
        OPSLINE_RATE_LIMIT_FAILED_LOGIN_ACCOUNT="100000/hour",
        OPSLINE_EMBEDDED_WORKERS="0",
        OPSLINE_EMBEDDED_SCHEDULER="false",
    )
    return env


@contextmanager
def _base_url(serving: AbstractContextManager[tuple[str, object]]) -> Iterator[str]:
    with serving as (base, _process):
        yield base


@pytest.fixture
def served(serve_env: dict[str, str], tmp_path: Path) -> Served:
    """Start ``opsline serve`` trusting these proxies (None: the setting left unset)."""

    def start(allow: str | None) -> AbstractContextManager[str]:
        env = dict(serve_env)
        if allow is not None:
            env["OPSLINE_FORWARDED_ALLOW_IPS"] = allow
        return _base_url(opsline_serve(env, tmp_path / "serve.log"))

    return start


def _signup(base: str) -> str:
    email = unique_email()
    body = {"email": email, "password": PASSWORD, "tenant_name": "Acme"}
    assert httpx.post(f"{base}/api/v1/auth/signup", json=body, timeout=30).status_code == 201
    return email


def _wrong_login(base: str, email: str, forwarded_for: str) -> int:
    body = {"email": email, "password": WRONG}
    headers = {"X-Forwarded-For": forwarded_for}
    return httpx.post(f"{base}{LOGIN}", json=body, headers=headers, timeout=30).status_code


@pytest.mark.slow
@pytest.mark.parametrize(
    ("allow", "second_client"),
    [
        # Nothing configured: the header is anyone's to write, so it is ignored and
        # both clients are the loopback peer, whose one failure is spent.
        (None, 429),
        # The loopback peer is the trusted proxy: each client is counted on its own.
        ("127.0.0.1", 401),
        ("127.0.0.0/8,::1", 401),
        # A proxy elsewhere is trusted, not this peer: the header is ignored.
        ("10.0.0.0/8", 429),
    ],
)
def test_forwarded_for_is_honoured_only_from_a_trusted_proxy(
    served: Served, allow: str | None, second_client: int
) -> None:
    with served(allow) as base:
        email = _signup(base)
        assert _wrong_login(base, email, "203.0.113.1") == 401
        assert _wrong_login(base, email, "203.0.113.1") == 429
        assert _wrong_login(base, email, "203.0.113.2") == second_client


@pytest.mark.slow
def test_a_client_cannot_pass_itself_off_as_another_through_a_trusted_proxy(
    served: Served,
) -> None:
    """A proxy appends the peer it saw; what the client wrote before that is not
    believed (only addresses of trusted proxies are skipped, from the right)."""
    with served("127.0.0.1") as base:
        email = _signup(base)
        assert _wrong_login(base, email, "192.0.2.1, 203.0.113.9") == 401
        assert _wrong_login(base, email, "192.0.2.2, 203.0.113.9") == 429


def test_serve_refuses_a_bad_trusted_proxy_at_start(serve_env: dict[str, str]) -> None:
    env = {**serve_env, "OPSLINE_FORWARDED_ALLOW_IPS": "proxy.internal"}
    done = subprocess.run(
        [opsline_command(), "serve", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 2, output
    assert "OPSLINE_FORWARDED_ALLOW_IPS" in output and "proxy.internal" in output, output
