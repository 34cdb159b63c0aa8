"""Configuration: the one place that reads the environment.

Every setting is an environment variable with the prefix ``OPSLINE_``. Nothing is
required for the embedded default: the database is a SQLite file under
``var/`` and a secret key is generated there on first start (mode 0600).
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import secrets
import tempfile
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_KEY_FILE = "secret_key"


class SettingsError(Exception):
    """Settings are invalid; the message names every offending variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPSLINE_", extra="ignore", frozen=True)

    env: Literal["development", "production", "test"] = "development"
    var_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Reverse proxies whose X-Forwarded-For (and -Proto) ``opsline serve`` believes:
    # comma-separated addresses and networks, or ``*`` for every peer (only when
    # nothing but the proxy can reach the server). Empty, the default: none, and the
    # client is the peer; anyone may write the header, so it is never believed
    # unless a proxy that sets it is named. Rate limits per IP count on the client.
    forwarded_allow_ips: str = ""
    # The server's event loop; auto: see ``server_event_loop``.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    # Processes ``opsline serve`` answers requests in, on one port: one uses one
    # core. More need OPSLINE_REDIS_URL, where the processes count rate limits
    # together and hear each other's live messages (see ``_processes_share_state``).
    server_processes: int = Field(default=1, ge=1, le=64)

    database_url: str | None = None
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    # WAL pages between automatic checkpoints (SQLite's default is 1,000; a
    # write-heavy API copies hot pages back far less often with more).
    sqlite_wal_autocheckpoint: int = Field(default=10_000, ge=0, le=1_000_000)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    # PostgreSQL: units of database work running at once on the event loop; more
    # requests wait their turn (in order) before they open a transaction, so that
    # row locks are not held while a saturated loop gets round to their COMMIT.
    db_loop_concurrency: int = Field(default=8, ge=1, le=1000)
    redis_url: str | None = None
    broker_url: str | None = None

    secret_key: SecretStr | None = None
    previous_secret_keys: list[SecretStr] = Field(default_factory=list)
    access_token_minutes: int = Field(default=15, ge=1, le=24 * 60)
    refresh_token_days: int = Field(default=30, ge=1, le=365)
    argon2_time_cost: int = Field(default=3, ge=1, le=20)
    argon2_memory_kib: int = Field(default=65536, ge=1024, le=4 * 1024 * 1024)
    invitation_days: int = Field(default=7, ge=1, le=90)

    max_request_bytes: int = Field(
        default=1_048_576,
        ge=1,
        description=(
            "The largest request body accepted, in bytes: a larger one is refused with 413"
            " before it is read or parsed. The largest valid JSON body is a bulk request"
            " naming its 10,000 ids (about 0.40 MB compact, 0.45 MB indented), so 1 MiB"
            " admits it more than twice over, with room for its filters."
        ),
    )

    rate_limit_api: str = "1200/minute"
    rate_limit_auth: str = "20/minute"
    rate_limit_failed_login: str = "5/minute"
    # Failed logins (and invitation acceptances that take an existing account's
    # password) per account, whatever the address: guesses spread over many
    # addresses stop here. 20 an hour caps them at under 500 a day, too few to find
    # a password of 10 characters or more, and leaves an owner room for typing
    # mistakes. Over it, logins to the account pause only from addresses it has not
    # logged in from within OPSLINE_REFRESH_TOKEN_DAYS: a stranger who knows the
    # email can hold new addresses back (about 20 requests an hour), but not the
    # owner's usual ones, and sessions already open keep refreshing.
    rate_limit_failed_login_account: str = "20/hour"

    log_format: Literal["json", "console"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # simulated: latency, success rate and seed below; http: a real payment
    # service (contract in opsline.orders.gateway), at payment_gateway_url.
    payment_gateway: Literal["simulated", "http"] = "simulated"
    payment_gateway_url: str | None = Field(default=None, validate_default=True)
    payment_gateway_token: SecretStr | None = None
    # Per phase of a call (connect, write, read); within the payment job's own 60 s.
    payment_gateway_timeout_s: float = Field(default=10.0, gt=0, le=60)
    payment_success_rate: float = Field(default=0.8, ge=0, le=1)
    payment_latency_min_ms: float = Field(default=50, ge=0, le=60_000)
    payment_latency_max_ms: float = Field(default=200, ge=0, le=60_000)
    payment_seed: str = "opsline"
    order_processing_timeout_s: int = Field(default=120, ge=5, le=86_400)
    order_payment_max_attempts: int = Field(default=3, ge=1, le=20)
    idempotency_required: bool = True
    orders_redis_lock: bool = False
    # Live order feeds (SSE, WebSocket): a heartbeat after this long without a
    # change, and the feed's session checked again this often.
    live_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    # Live streams one principal may hold open at once. Counted per process: with
    # several server processes a principal may hold this many in each.
    live_max_streams_per_user: int = Field(default=5, ge=1, le=1000)

    demo_email: str = "owner@demo.opsline.dev"
    demo_password: SecretStr = SecretStr("opsline-demo-2026")

    embedded_workers: int = Field(default=4, ge=0, le=64)
    embedded_scheduler: bool = True

    # The job engine (opsline.platform.engine).
    job_lease_seconds: float = Field(default=30.0, ge=0.5, le=3600)
    job_poll_seconds: float = Field(default=1.0, ge=0.01, le=60)
    job_shutdown_grace_seconds: float = Field(default=25.0, ge=0, le=3600)
    job_sqlite_watch_seconds: float = Field(default=0.001, ge=0.0002, le=1)
    job_retention_days: float = Field(default=7.0, ge=0, le=3650)
    job_queue_weights: dict[str, int] = Field(
        default_factory=lambda: {"high": 6, "default": 3, "notifications": 3, "low": 1}
    )

    # Bulk actions (opsline.bulk).
    bulk_undo_key: SecretStr | None = None
    bulk_max_records: int = Field(default=1_000_000, ge=1)
    bulk_max_concurrent_runs: int = Field(default=3, ge=1, le=1000)
    bulk_rate_limit_user: str = "30/minute"
    bulk_rate_limit_tenant: str = "120/minute"
    bulk_confirm_threshold: int = Field(default=1000, ge=0)
    bulk_confirmation_seconds: int = Field(default=300, ge=10, le=3600)
    bulk_batch_size: int = Field(default=500, ge=1, le=10_000)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("postgres://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgres://")
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        if not value.startswith(("sqlite", "postgresql+psycopg://")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @field_validator("secret_key")
    @classmethod
    def _strong_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_secret(value.get_secret_value().encode())
        return value

    @field_validator("previous_secret_keys")
    @classmethod
    def _strong_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            _check_secret(key.get_secret_value().encode())
        return value

    @field_validator(
        "rate_limit_api",
        "rate_limit_auth",
        "rate_limit_failed_login",
        "rate_limit_failed_login_account",
        "bulk_rate_limit_user",
        "bulk_rate_limit_tenant",
    )
    @classmethod
    def _valid_rate(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '100/minute': {exc}") from None
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _valid_proxies(cls, value: str) -> str:
        """Each entry an address or a network, as uvicorn compares them with the peer's
        address: uvicorn would take anything else for a literal that never matches,
        and the proxy's clients would all share its address without a word."""
        entries = [entry.strip() for entry in value.split(",")]
        if entries == [""]:
            return ""
        if "*" in entries:
            if len(entries) > 1:
                raise ValueError("'*' trusts every peer; give it alone or list addresses")
            return "*"
        return ",".join(_proxy_entry(entry) for entry in entries)

    @property
    def server_event_loop(self) -> Literal["asyncio", "uvloop"]:
        """``event_loop``, auto resolved: Python's own where requests' SQLite work runs
        inline on the loop, else uvloop where it is installed.

        uvloop sends what a round of ready callbacks wrote only once the round is
        over, so a saturated loop running units inline holds finished responses
        back behind the round's other requests: at 32 clients on SQLite the orders'
        p99 was 533 ms against 69 ms on Python's loop, at the same rate
        (``bench.orders_ab``). With statements awaited (PostgreSQL) the rounds are
        short, and uvloop's cheaper I/O is worth some 4% more orders per second at
        8 clients.
        """
        if self.event_loop != "auto":
            return self.event_loop
        if self.is_sqlite and self.units_on_loop:
            return "asyncio"
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"

    @property
    def units_on_loop(self) -> bool:
        """Whether requests' units of work run on the event loop (see ``db_work``).

        They do when every round trip they make can be awaited there or never
        waits: PostgreSQL's statements and Redis's commands are awaited inside
        ``Database.on_loop`` (``opsline.platform.loop``); SQLite's run inline,
        so only without Redis (an await in the middle of a unit would let
        another unit of the loop's thread into the write lock). A broker's
        publish blocks: with one, units go to the thread pool.
        """
        if self.broker_url:
            return False
        return not self.is_sqlite or not self.redis_url

    @field_validator("redis_url")
    @classmethod
    def _valid_redis(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("broker_url")
    @classmethod
    def _valid_broker(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// URL")
        return value

    @field_validator("payment_gateway_url")
    @classmethod
    def _valid_gateway_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field validator, not a model one: a model's error would echo every
        # input, the token included, in the raw ValidationError.
        if value is None:
            if info.data.get("payment_gateway") == "http":
                raise ValueError("is required when OPSLINE_PAYMENT_GATEWAY=http")
            return None
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 -- raises for a port out of range or not a number
        except ValueError:
            raise ValueError("has an invalid port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if parts.username or parts.password or parts.query or parts.fragment:
            # The URL is shown in errors and logs: credentials go in the token.
            raise ValueError(
                "must not carry credentials, a query or a fragment"
                " (the token is OPSLINE_PAYMENT_GATEWAY_TOKEN)"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _processes_share_state(self) -> Settings:
        """Server processes share rate limits and live messages only through Redis.

        Each would count its own rate limits in memory (a password guesser's
        tries multiplied by the processes), and on SQLite each would hear only
        the live messages of the orders it placed itself.
        """
        if self.server_processes > 1 and not self.redis_url:
            raise ValueError(
                f"OPSLINE_SERVER_PROCESSES={self.server_processes} (--processes) needs"
                " OPSLINE_REDIS_URL: without"
                " Redis each process counts rate limits on its own (a password guesser"
                " would get that many more tries) and, on SQLite, live streams hear only"
                " their own process; set it, or serve with one process"
            )
        return self

    @model_validator(mode="after")
    def _lock_needs_redis(self) -> Settings:
        if self.orders_redis_lock and not self.redis_url:
            raise ValueError("orders_redis_lock needs OPSLINE_REDIS_URL")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'opsline.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        # Not from sqlalchemy_url, which resolves the file's path: asked on every request.
        return not self.database_url or self.database_url.startswith("sqlite")

    @property
    def secret(self) -> bytes:
        """The active secret key, generated once into ``var/`` when none is set."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        return _load_or_create_secret(self.var_dir / SECRET_KEY_FILE)

    @property
    def previous_secrets(self) -> list[bytes]:
        return [key.get_secret_value().encode() for key in self.previous_secret_keys]


def _proxy_entry(entry: str) -> str:
    """One trusted proxy's address or network, written the standard way."""
    if not entry:
        raise ValueError("has an empty entry (two commas, or one at an end)")
    try:
        return str(ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry))
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(
            f"{entry!r} is not an IP address or network (like 10.0.0.5 or 10.0.0.0/8)"
        ) from None
    raise ValueError(f"{entry!r} has host bits set; did you mean {network}?")


MIN_SECRET_BYTES = 32
_GENERATE = "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"


def _check_secret(value: bytes) -> None:
    """A key signs access tokens and bulk confirmations: a short one can be guessed."""
    if len(value) < MIN_SECRET_BYTES:
        raise ValueError(
            f"a secret key must be at least {MIN_SECRET_BYTES} bytes, not {len(value)};"
            f" make one with {_GENERATE}"
        )


def _load_or_create_secret(path: Path) -> bytes:
    """The key in ``path``, written there first if there is none.

    Written whole before it appears (a file of its own, linked into place), so a
    process starting at the same moment reads either no file or the whole key; a
    file too short (cut off, emptied) stops the process rather than sign with it.
    """
    cached = _FILE_SECRETS.get(path)
    if cached is not None:
        return cached
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_urlsafe(48).encode())
                handle.flush()
                os.fsync(handle.fileno())
            # Of two processes starting together, exactly one links its key.
            with contextlib.suppress(FileExistsError):
                os.link(staged, path)
        finally:
            os.unlink(staged)
    value = path.read_bytes().strip()
    try:
        _check_secret(value)
    except ValueError as exc:
        raise SettingsError(
            f"{path}: {exc}; or delete the file to have a new key made"
            " (tokens signed with the old one stop working)"
        ) from None
    _FILE_SECRETS[path] = value
    return value


# Read once per process: ``Settings.secret`` is asked for at every token.
_FILE_SECRETS: dict[Path, bytes] = {}


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise SettingsError naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            where = f"OPSLINE_{field.upper()}: " if field else ""
            problems.append(f"{where}{error['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None
