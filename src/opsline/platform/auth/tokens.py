"""Password hashing, access tokens and opaque secrets.

Access tokens are HS256 JWTs signed with a key derived from the secret key.
The algorithm is pinned on verification (``alg: none`` and any other algorithm
are rejected) and every token names its key with ``kid``, so keys can rotate:
new tokens are signed with the current key while tokens signed with a key
listed in ``OPSLINE_PREVIOUS_SECRET_KEYS`` still verify until they expire.

Refresh tokens, API keys and invitation tokens are random strings of 256 bits;
only their SHA-256 is stored (a slow hash adds nothing to such entropy).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from opsline.db import utcnow
from opsline.settings import Settings

ALGORITHM = "HS256"
ISSUER = "opsline"
VERIFIED_CACHE_SIZE = 10_000

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# A hash to verify against when the user does not exist, so that a login for
# an unknown email costs as much as one for a known email.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def configure_password_hashing(*, time_cost: int, memory_kib: int) -> None:
    """Set the argon2id cost (settings ``OPSLINE_ARGON2_*``); existing hashes still verify
    and are upgraded at the next successful login."""
    global _hasher, _DUMMY_HASH
    if (_hasher.time_cost, _hasher.memory_cost) == (time_cost, memory_kib):
        return
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)
    _DUMMY_HASH = _hasher.hash("not-a-real-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def new_secret(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _derive(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, b"opsline:" + purpose.encode(), hashlib.sha256).digest()


def _kid(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    session_id: uuid.UUID
    expires_at: datetime


class TokenError(Exception):
    """The token is invalid; the message is safe to show."""


class TokenSigner:
    def __init__(self, settings: Settings) -> None:
        self.lifetime = timedelta(minutes=settings.access_token_minutes)
        current = _derive(settings.secret, "jwt")
        self._current_kid = _kid(current)
        self._keys = {self._current_kid: current}
        for old in settings.previous_secrets:
            key = _derive(old, "jwt")
            self._keys.setdefault(_kid(key), key)
        self._verified: dict[str, AccessClaims] = {}
        self._verified_lock = threading.Lock()

    def issue(self, *, user_id: uuid.UUID, tenant_id: uuid.UUID, session_id: uuid.UUID) -> str:
        now = utcnow()
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": str(user_id),
            "tid": str(tenant_id),
            "sid": str(session_id),
            "iat": int(now.timestamp()),
            "exp": int((now + self.lifetime).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        key = self._keys[self._current_kid]
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": self._current_kid})

    def verify(self, token: str) -> AccessClaims:
        """The token's claims if its signature, issuer and expiry hold.

        A token already verified is answered from a bounded cache until it
        expires: its bytes cannot change, so neither can the signature check.
        """
        claims = self._verified.get(token)
        if claims is not None and claims.expires_at > utcnow():
            return claims
        claims = self._verify(token)
        with self._verified_lock:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> AccessClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise TokenError("token algorithm not accepted")
        key = self._keys.get(str(header.get("kid", "")))
        if key is None:
            raise TokenError("token signed with an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "tid", "sid"]},
            )
            return AccessClaims(
                user_id=uuid.UUID(claims["sub"]),
                tenant_id=uuid.UUID(claims["tid"]),
                session_id=uuid.UUID(claims["sid"]),
                expires_at=datetime.fromtimestamp(claims["exp"]).astimezone(),
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except (jwt.PyJWTError, ValueError):
            raise TokenError("invalid token") from None
