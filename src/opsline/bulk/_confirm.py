"""Confirmation tokens: only a preview of the same selection and parameters returns one.

A token is ``<expiry>.<nonce>.<HMAC-SHA256>``: the MAC covers the expiry, a
random nonce (every preview's token is a new one) and the tenant, the
principal, the resource, the action, the canonical ``where``, the sorted ids
and the params, with a key derived from the secret key (HKDF, its own
``info``). It is valid for ``bulk_confirmation_seconds``; any change to the
selection breaks it. A token confirms one run: the run that used it stores its
:func:`digest` under a unique index (``bulk_runs.confirmation_digest``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from opsline.bulk._crypto import derive_key
from opsline.bulk.errors import ConfirmationUsed
from opsline.bulk.models import BulkRun, runs_table
from opsline.db import UnitOfWork
from opsline.settings import Settings

R = runs_table.c


def fingerprint(
    *,
    tenant_id: uuid.UUID,
    subject: str,
    resource: str,
    action: str,
    where: Sequence[dict[str, Any]],
    ids: Sequence[uuid.UUID] | None,
    params: dict[str, Any],
) -> bytes:
    canonical = {
        "tenant": str(tenant_id),
        "subject": subject,
        "resource": resource,
        "action": action,
        "where": list(where),
        "ids": sorted(str(i) for i in ids) if ids is not None else None,
        "params": params,
    }
    return orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS, default=str)


_NONCE_CHARS = frozenset(string.ascii_letters + string.digits + "-_")


def _key(settings: Settings) -> bytes:
    return derive_key(settings.secret, b"opsline.bulk.confirm.v1")


def _sign(settings: Settings, expires: int, nonce: str, fp: bytes) -> str:
    signed = f"{expires}|{nonce}|".encode() + fp
    mac = hmac.new(_key(settings), signed, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def issue(settings: Settings, fp: bytes) -> tuple[str, int]:
    """A fresh token for ``fp`` (never the same twice) and its expiry (unix seconds)."""
    expires = int(time.time()) + settings.bulk_confirmation_seconds
    nonce = secrets.token_urlsafe(16)
    return f"{expires}.{nonce}.{_sign(settings, expires, nonce, fp)}", expires


def digest(token: str) -> str:
    """What a run stores of the token it used (hex SHA-256): the token itself stays secret."""
    return hashlib.sha256(token.encode()).hexdigest()


def verify(settings: Settings, token: str | None, fp: bytes) -> str | None:
    """None when valid; otherwise why not."""
    if not token:
        return "missing"
    head, _, rest = token.partition(".")
    nonce, _, sig = rest.partition(".")
    if not head.isascii() or not head.isdigit() or len(head) > 12:
        return "malformed"
    # The nonce is URL-safe base64 only: no separator can move between it and ``fp``.
    if not 0 < len(nonce) <= 64 or not set(nonce) <= _NONCE_CHARS or not sig.isascii():
        return "malformed"
    expires = int(head)
    if not hmac.compare_digest(sig.encode(), _sign(settings, expires, nonce, fp).encode()):
        return "for a different selection or parameters"
    if expires < time.time():
        return "expired"
    return None


def _used(run_id: uuid.UUID) -> ConfirmationUsed:
    return ConfirmationUsed(
        f"this confirmation token was already used by bulk run {run_id}; a token confirms "
        "one run: look at that run, or preview again for a new token",
        run_id=str(run_id),
    )


def _run_confirmed_by(uow: UnitOfWork, tenant_id: uuid.UUID, sha: str) -> uuid.UUID | None:
    return uow.session.scalar(
        select(R.id).where(R.tenant_id == tenant_id, R.confirmation_digest == sha)
    )


def check_unused(uow: UnitOfWork, tenant_id: uuid.UUID, token: str | None) -> None:
    """409 naming the run that already used ``token``."""
    if token:
        used = _run_confirmed_by(uow, tenant_id, digest(token))
        if used is not None:
            raise _used(used)


def add_run(uow: UnitOfWork, run: BulkRun) -> None:
    """Insert ``run`` at once, using up its confirmation token.

    Two requests with one token both pass :func:`check_unused` only when they
    run at once on PostgreSQL: the unique index on the token's digest then makes
    the later insert wait for the first transaction and fail once it commits;
    that request answers 409 naming the first run (read committed: it is seen).
    """
    try:
        with uow.session.begin_nested():
            uow.session.add(run)
            uow.session.flush()
    except IntegrityError:
        used_up = run.confirmation_digest
        used = _run_confirmed_by(uow, run.tenant_id, used_up) if used_up else None
        if used is None:
            raise
        raise _used(used) from None
