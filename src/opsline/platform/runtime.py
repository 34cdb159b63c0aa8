"""The live parts of one Opsline process, built once by ``opsline.bootstrap``.

Routers reach it as ``request.app.state.runtime``; the CLI and workers are
handed it directly. Nothing here reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from opsline.db import Database
from opsline.platform.auth.tokens import TokenSigner
from opsline.platform.ratelimit import RateLimiter
from opsline.platform.realtime import PubSub, StreamSlots
from opsline.settings import Settings


class BackgroundService(Protocol):
    """Something a serving process runs beside the API (workers, the scheduler)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Runtime:
    settings: Settings
    db: Database
    tokens: TokenSigner
    rate_limiter: RateLimiter

    background: list[BackgroundService] = field(default_factory=list)
    # "Something changed" fan-out (engine, realtime endpoints); set by bootstrap.
    pubsub: PubSub | None = None
    # Live streams open per principal in this process (realtime endpoints' cap).
    live_streams: StreamSlots = field(default_factory=StreamSlots)

    def start_background(self) -> None:
        for service in self.background:
            service.start()

    def stop_background(self) -> None:
        for service in reversed(self.background):
            service.stop()

    def close(self) -> None:
        self.stop_background()
        if self.pubsub is not None:
            self.pubsub.close()
        self.db.dispose()
