"""``python -m bench.peers [--quick]``: measure the peer job systems alone.

Ratios compare each peer with the fastest one (by processing rate).
"""

from __future__ import annotations

from bench._harness import main
from bench.peers import PEERS

if __name__ == "__main__":
    main(
        PEERS,
        subjects=list(PEERS),
        baselines=list(PEERS),
        description="Peer job systems (Dramatiq, PgQueuer, Celery) by the PEERS.md method",
    )
