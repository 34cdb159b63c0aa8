"""Orders A/B: this checkout's server against another checkout's, side by side.

Both servers run at once, each on a fresh database of its own with the same shop,
the payment workers off (the order requests alone), or with ``--workers N`` the
server's N embedded payment worker threads on both sides (what sharing the process
with them costs), or with ``--workers A,B`` A threads on side A and B on side B
(``OTHER_SRC`` this checkout's own ``src`` and ``--workers 0,2``: the cost of the
embedded workers themselves). wrk then posts hot-SKU orders to one and the other in
turn, the order of the pair swapped every repetition, so that the machine's drift (a
factor of two within minutes here) falls on both alike. ``--redis on`` configures
both with Redis (rate limits, pub/sub), ``--redis lock`` with its orders lock too.
Both servers run on one CPU (the last) and wrk on the others, so that neither side
gets a core to itself by chance (``--no-pin``: anywhere). Against an identical side
A, side B came out 3-10% ahead on SQLite unpinned, 1-6% pinned (medians of 8 pairs).
Reported: the server's CPU per order, orders/s and p99 of each side (medians), the
median of the per-pair ratios B/A, and their range: the method's own spread.

Usage: ``python -m bench.orders_ab [OTHER_SRC] [--quick] [--backends sqlite,postgresql]
[--clients 1,8] [--repeats 10] [--seconds 3] [--workers 0 | --workers A,B] [--redis on|lock]
[--no-pin]``, where
``OTHER_SRC`` is the ``src`` folder of the other checkout (a ``git worktree`` of the
older commit, say): side A. Without it side A is this checkout too: the spread of
the method itself, or with ``--workers 0,2`` the cost of the embedded workers.
Side B is this checkout. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench._http import (
    REPO,
    Served,
    database,
    emit,
    log,
    opsline,
    require_wrk,
    run_cli,
    server,
)
from bench.orders import REDIS_ENV, REDIS_LOCK_ENV, SERVER_ENV, _hot, _serve, _shop


def _side(
    stack: ExitStack,
    backend: str,
    src: Path,
    workers: int,
    cpus: str | None,
    services: dict[str, str],
) -> tuple[Served, dict[str, Any]]:
    env = stack.enter_context(database(backend))
    env = {
        **SERVER_ENV,
        **env,
        **services,
        "OPSLINE_EMBEDDED_WORKERS": str(workers),
        "PYTHONPATH": str(src),
    }
    run_cli(opsline("migrate"), env)
    command, port = _serve(env)
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    base = stack.enter_context(server(command, env, port, "/health/ready"))
    return base, _shop(base.url, 10)


def _pin() -> str | None:
    """Both servers on the last CPU, this process and its wrk on the others; None on one CPU."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2 or shutil.which("taskset") is None:
        return None
    os.sched_setaffinity(0, available[:-1])
    return str(available[-1])


def run_backend(
    backend: str,
    other: Path,
    clients: list[int],
    repeats: int,
    seconds: float,
    workers: tuple[int, int],
    cpus: str | None,
    services: dict[str, str],
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with ExitStack() as stack:
        sides = {
            "a": _side(stack, backend, other, workers[0], cpus, services),
            "b": _side(stack, backend, REPO / "src", workers[1], cpus, services),
        }
        for c in clients:
            log(f"{backend}: A/B with {c} clients, {repeats} repetitions")
            cpu: dict[str, list[float]] = {"a": [], "b": []}
            rate: dict[str, list[float]] = {"a": [], "b": []}
            p99: dict[str, list[float]] = {"a": [], "b": []}
            for base, shop in sides.values():  # warm both
                _hot(base, shop, c, 1.0, [])
            for i in range(repeats):
                for name in ("a", "b") if i % 2 == 0 else ("b", "a"):
                    base, shop = sides[name]
                    measured = _hot(base, shop, c, seconds, [])
                    cpu[name].append(measured["server_cpu_ms_per_request"])
                    rate[name].append(measured["per_s"])
                    p99[name].append(measured["p99_ms"])
            cpu_ratios = [b / a for a, b in zip(cpu["a"], cpu["b"], strict=True)]
            rate_ratios = [b / a for a, b in zip(rate["a"], rate["b"], strict=True)]
            result[str(c)] = {
                "cpu_ms_per_order": {k: statistics.median(v) for k, v in cpu.items()},
                "orders_per_s": {k: statistics.median(v) for k, v in rate.items()},
                "p99_ms": {k: statistics.median(v) for k, v in p99.items()},
                "cpu_ratio_b_to_a": round(statistics.median(cpu_ratios), 3),
                "rate_ratio_b_to_a": round(statistics.median(rate_ratios), 3),
                # The pairs' own spread: a median outside the other side's range is a change.
                "rate_ratio_range": [round(min(rate_ratios), 3), round(max(rate_ratios), 3)],
                "cpu_ratio_range": [round(min(cpu_ratios), 3), round(max(cpu_ratios), 3)],
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "other_src",
        type=Path,
        nargs="?",
        default=REPO / "src",
        help="the src folder of the checkout to compare (default: this one's)",
    )
    parser.add_argument("--quick", action="store_true", help="8 clients, 4 repetitions of 2 s")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--clients", default=None, help="e.g. 1,8")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument(
        "--workers",
        default="0",
        help="embedded payment worker threads: N on both sides, or A,B",
    )
    parser.add_argument(
        "--redis",
        choices=("off", "on", "lock"),
        default="off",
        help="both servers configured with Redis (on), and its orders lock layer (lock)",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="servers and wrk on any CPU (default: the servers on the last, wrk on the rest)",
    )
    args = parser.parse_args()
    try:
        counts = [int(n) for n in args.workers.split(",")]
    except ValueError:
        counts = []
    if len(counts) not in (1, 2) or min(counts) < 0:
        parser.error(f"--workers takes N or A,B (counts of threads), not {args.workers!r}")
    workers = (counts[0], counts[-1])
    if not (args.other_src / "opsline" / "__init__.py").is_file():
        parser.error(f"{args.other_src} is not a src folder holding the opsline package")
    require_wrk()
    clients = [int(c) for c in (args.clients or ("8" if args.quick else "1,8")).split(",")]
    repeats = args.repeats or (4 if args.quick else 10)
    seconds = args.seconds or (2.0 if args.quick else 3.0)
    cpus = _pin() if args.pin else None
    services = {"off": {}, "on": REDIS_ENV, "lock": {**REDIS_ENV, **REDIS_LOCK_ENV}}[args.redis]
    backends: dict[str, Any] = {}
    for backend in args.backends.split(","):
        backends[backend] = run_backend(
            backend, args.other_src.resolve(), clients, repeats, seconds, workers, cpus, services
        )
    emit(
        {
            "benchmark": "orders_ab",
            "a": str(args.other_src),
            "quick": args.quick,
            "repeats": repeats,
            "seconds": seconds,
            "workers": {"a": workers[0], "b": workers[1]},
            "redis": args.redis,
            "server_cpus": cpus,
            "backends": backends,
        }
    )


if __name__ == "__main__":
    main()
