"""Confirmation tokens: only a preview of the same selection and parameters returns one.

A token is ``<expiry>.<HMAC-SHA256>`` over the tenant, the principal, the
resource, the action, the canonical ``where``, the sorted ids and the params,
with a key derived from the secret key (HKDF, its own ``info``). It is valid
for ``bulk_confirmation_seconds``; any change to the selection breaks it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from opsline.bulk._crypto import derive_key
from opsline.settings import Settings


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


def _key(settings: Settings) -> bytes:
    return derive_key(settings.secret, b"opsline.bulk.confirm.v1")


def _sign(settings: Settings, expires: int, fp: bytes) -> str:
    mac = hmac.new(_key(settings), str(expires).encode() + b"|" + fp, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def issue(settings: Settings, fp: bytes) -> tuple[str, int]:
    """A token for ``fp`` and its expiry (unix seconds)."""
    expires = int(time.time()) + settings.bulk_confirmation_seconds
    return f"{expires}.{_sign(settings, expires, fp)}", expires


def verify(settings: Settings, token: str | None, fp: bytes) -> str | None:
    """None when valid; otherwise why not."""
    if not token:
        return "missing"
    head, _, sig = token.partition(".")
    if not head.isascii() or not head.isdigit() or len(head) > 12 or not sig.isascii():
        return "malformed"
    expires = int(head)
    if not hmac.compare_digest(sig.encode(), _sign(settings, expires, fp).encode()):
        return "for a different selection or parameters"
    if expires < time.time():
        return "expired"
    return None
