"""Reading a server's live order stream (SSE) in tests."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx


@contextmanager
def sse(base: str, headers: dict[str, str], **params: Any) -> Iterator[queue.Queue[dict[str, Any]]]:
    """Read an SSE stream in a thread; yields a queue of parsed events.

    A named event other than ``order.status`` keeps its name (``{"event": ...}``);
    the server closing the stream puts ``{"closed": True}``.
    """
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    stop = threading.Event()
    opened = threading.Event()

    http = httpx.Client(base_url=base, timeout=None)

    def read() -> None:
        try:
            with http.stream(
                "GET", "/api/v1/orders/live/sse", headers=headers, params=params
            ) as response:
                events.put({"status": response.status_code})
                opened.set()
                event: dict[str, Any] = {}
                for line in response.iter_lines():
                    if stop.is_set():
                        return
                    if line.startswith("id: "):
                        event["id"] = int(line[4:])
                    elif line.startswith("event: ") and line != "event: order.status":
                        event["event"] = line[7:]
                    elif line.startswith("data: "):
                        event["data"] = json.loads(line[6:])
                    elif line.startswith(":"):
                        continue  # heartbeat: a chance to notice the stop flag
                    elif line == "" and event:
                        events.put(event)
                        event = {}
            if not stop.is_set():
                events.put({"closed": True})
        except Exception as exc:
            if not stop.is_set():
                events.put({"error": repr(exc)})
                opened.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert opened.wait(10)
    assert events.get(timeout=5) == {"status": 200}
    time.sleep(0.2)  # the subscription is live once the first bytes came
    try:
        yield events
    finally:
        stop.set()
        http.close()
        thread.join(timeout=5)


def statuses_until(
    events: queue.Queue[dict[str, Any]], final: str, timeout: float = 20
) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while final not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"saw only {seen}"
        seen.append(events.get(timeout=remaining)["data"]["status"])
    return seen
