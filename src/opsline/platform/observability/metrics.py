"""Prometheus metrics of the HTTP layer (the engine adds its own), and what a scrape reports."""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Set when several processes serve (``opsline serve --processes``): each keeps
# its counters and histograms in files of this folder, read by every scrape.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter(
    "opsline_http_requests_total",
    "HTTP requests by method, route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "opsline_http_request_duration_seconds",
    "HTTP request latency by method and route template",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def scrape_registry(read_at_scrape: Iterable[Collector] = ()) -> CollectorRegistry:
    """What a scrape reports: this process's metrics or, when several processes
    serve, theirs added up; ``read_at_scrape`` are collectors that read their
    values when scraped (the database's queue depths), already registered in
    this process's registry but not in the files of the processes."""
    if not os.environ.get(MULTIPROCESS_DIR):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    for collector in read_at_scrape:
        registry.register(collector)
    return registry
