"""Idempotency keys for creating POSTs (the ``Idempotency-Key`` header)."""
