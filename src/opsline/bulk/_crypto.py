"""Undo snapshots encrypted at rest: AES-256-GCM, one blob per chunk.

The key is ``OPSLINE_BULK_UNDO_KEY`` or, when unset, derived from the secret
key with HKDF-SHA256 (its own ``info``, so it is never the token key). The
tenant, the run and the chunk are bound in as associated data: a blob copied
to another tenant's or run's row does not decrypt. The plaintext is
zlib-compressed before encryption (fewer bytes to write).
"""

from __future__ import annotations

import os
import uuid
import zlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from opsline.settings import Settings

VERSION = b"\x01"


def derive_key(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


def undo_key(settings: Settings) -> bytes:
    if settings.bulk_undo_key is not None:
        material = settings.bulk_undo_key.get_secret_value().encode()
    else:
        material = settings.secret
    return derive_key(material, b"opsline.bulk.undo.v1")


def _aad(tenant_id: uuid.UUID, run_id: uuid.UUID, chunk: int) -> bytes:
    return b"opsline-bulk-undo|" + tenant_id.bytes + run_id.bytes + chunk.to_bytes(4, "big")


def seal(key: bytes, tenant_id: uuid.UUID, run_id: uuid.UUID, chunk: int, plain: bytes) -> bytes:
    nonce = os.urandom(12)
    packed = zlib.compress(plain, 1)
    return VERSION + nonce + AESGCM(key).encrypt(nonce, packed, _aad(tenant_id, run_id, chunk))


def unseal(key: bytes, tenant_id: uuid.UUID, run_id: uuid.UUID, chunk: int, blob: bytes) -> bytes:
    """Decrypt; raises ``cryptography.exceptions.InvalidTag`` on a wrong key or binding."""
    if blob[:1] != VERSION:
        raise ValueError("unknown snapshot format")
    nonce, sealed = blob[1:13], blob[13:]
    return zlib.decompress(AESGCM(key).decrypt(nonce, sealed, _aad(tenant_id, run_id, chunk)))
