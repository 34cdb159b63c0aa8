"""Orders through the HTTP API against the floors of this machine (issue 4's benchmark).

For each database (SQLite embedded, PostgreSQL) and each client count, wrk posts
orders with unique Idempotency-Keys for a fixed time: once on one hot SKU, once
spread over a catalogue. Against them, on the same database and client count, the
HTTP floor: a bare FastAPI endpoint doing one insert (``bench/_floor_app.py``), in
the thread pool, and on the event loop as orders are placed. Floors and orders run
in rounds (floor, floor on the loop, hot, spread; three rounds in a full run), both
servers up throughout (the orders server and its workers stopped while a floor
runs, so that the payments still owed do not run against it): a ratio is taken
within a round, where the machine's speed is the same for both sides, and the
median round's is reported. These machines are
shared and their speed drifts by a factor of two within minutes.

Then the orders on two servers configured with Redis, the optional lock layer off and
on (``redis_lock_cost`` compares these two; ``redis_cost`` the first with the orders
without Redis), and the raw conditional stock UPDATE rate (pgbench on PostgreSQL, a
sqlite3 loop on SQLite).

After the runs every product is checked: initial stock = final stock + units held
by live orders, and stock never negative; ``oversell`` counts violations (must be 0).
A scarce round (stock 200, hot, many clients) checks that exactly the stock is sold.

Usage: ``python -m bench.orders [--quick] [--backends sqlite,postgresql] [--clients 1,8,32]
[--rounds 3] [--seconds 6] [--[no-]lock] [--workers 2] [--worker-process]`` (``--workers 0``: the
requests alone, payments left pending; ``--worker-process``: the payment workers in an
``opsline worker`` process of their own, whose CPU per order is
``helper_cpu_ms_per_request``).
The last line of stdout is one JSON object; its ``targets`` tell each of issue 4's
targets per database and client count: the ratio reached and whether it is met
(orders against both floors, the hot SKU against the raw UPDATE on PostgreSQL, no
oversell).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
from bench._http import (
    Served,
    background,
    database,
    emit,
    free_port,
    log,
    opsline,
    process_tree,
    require_wrk,
    run_cli,
    server,
    wrk,
)
from sqlalchemy import select

SERVER_ENV = {
    "OPSLINE_RATE_LIMIT_API": "100000000/minute",
    "OPSLINE_RATE_LIMIT_AUTH": "100000/minute",
    "OPSLINE_LOG_LEVEL": "WARNING",
    "OPSLINE_LOG_FORMAT": "json",
    "OPSLINE_SECRET_KEY": "bench-secret-" + "x" * 40,
    "OPSLINE_EMBEDDED_SCHEDULER": "false",
    "OPSLINE_ARGON2_TIME_COST": "1",
    "OPSLINE_ARGON2_MEMORY_KIB": "1024",
    "OPSLINE_DB_POOL_SIZE": "40",
}
REDIS_ENV = {"OPSLINE_REDIS_URL": "redis://127.0.0.1:6379/14"}
REDIS_LOCK_ENV = {"OPSLINE_ORDERS_REDIS_LOCK": "true"}


def _shop(base: str, skus: int) -> dict[str, Any]:
    with httpx.Client(base_url=base, timeout=60) as http:
        signed = http.post(
            "/api/v1/auth/signup",
            json={
                "email": f"bench-{random.randrange(10**9)}@example.com",
                "password": "bench-password",
                "tenant_name": "Bench",
            },
        ).json()
        auth = f"Bearer {signed['tokens']['access_token']}"
        headers = {"Authorization": auth}

        def product(sku: str, stock: int) -> str:
            response = http.post(
                "/api/v1/products",
                json={"sku": sku, "name": sku, "price": "9.99", "stock": stock},
                headers=headers,
            )
            response.raise_for_status()
            return str(response.json()["id"])

        return {
            "auth": auth,
            "hot": product("HOT", 10**9),
            "scarce": product("SCARCE", 200),
            "spread": [product(f"S{i:04d}", 10**7) for i in range(skus)],
        }


def _body(product_id: str) -> str:
    return json.dumps({"items": [{"product_id": product_id, "quantity": 1}]})


def _hot(
    base: Served, shop: dict[str, Any], clients: int, seconds: float, helpers: list[int]
) -> dict[str, Any]:
    """wrk posting orders of the hot SKU (one unit each) for ``seconds``."""
    return wrk(
        base,
        "/api/v1/orders",
        [_body(shop["hot"])],
        clients=clients,
        seconds=seconds,
        auth=shop["auth"],
        helpers=helpers,
    )


def _orders(
    base: Served, shop: dict[str, Any], clients: int, seconds: float, helpers: list[int]
) -> dict[str, Any]:
    hot = _hot(base, shop, clients, seconds, helpers)
    spread = wrk(
        base,
        "/api/v1/orders",
        [_body(p) for p in shop["spread"]],
        clients=clients,
        seconds=seconds,
        auth=shop["auth"],
        helpers=helpers,
    )
    return {"hot": hot, "spread": spread}


@contextmanager
def _payment_workers(env: dict[str, str], workers: int, separate: bool) -> Iterator[list[int]]:
    """Payment workers in their own process (``opsline worker``) when ``separate``,
    as a scaled-out deployment runs them; else the server's embedded threads."""
    if not separate or workers == 0:
        yield []
        return
    with background(opsline("worker", "--concurrency", str(workers)), env) as pid:
        yield [pid]


def _conservation(env: dict[str, str]) -> dict[str, int]:
    """Units held by live orders + final stock must equal the initial stock."""
    from opsline.db import Database
    from opsline.orders.models import Order, OrderLine, Product
    from opsline.settings import Settings

    db = Database(
        Settings(var_dir=Path(env["OPSLINE_VAR_DIR"]), database_url=env.get("OPSLINE_DATABASE_URL"))
    )
    try:
        with db.read() as session:
            stock = dict(session.execute(select(Product.sku, Product.stock)).all())
            held = session.execute(
                select(Product.sku, OrderLine.quantity)
                .join(OrderLine, OrderLine.product_id == Product.id)
                .join(Order, Order.id == OrderLine.order_id)
                .where(Order.status.in_(("PENDING", "PROCESSING", "PAID")))
            ).all()
    finally:
        db.dispose()
    units: dict[str, int] = {}
    for sku, quantity in held:
        units[sku] = units.get(sku, 0) + quantity
    initial = {sku: (10**9 if sku == "HOT" else 200 if sku == "SCARCE" else 10**7) for sku in stock}
    oversell = sum(
        1 for sku in stock if stock[sku] < 0 or stock[sku] + units.get(sku, 0) != initial[sku]
    )
    return {
        "oversell": oversell,
        "scarce_sold": units.get("SCARCE", 0),
        "scarce_stock_left": stock.get("SCARCE", 0),
    }


def _raw_updates(
    backend: str, env: dict[str, str], clients: int, seconds: float, hot: str
) -> float:
    if backend == "sqlite":
        path = Path(env["OPSLINE_VAR_DIR"]) / "opsline.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        started, done = time.perf_counter(), 0
        key = hot.replace("-", "")
        while time.perf_counter() - started < seconds:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE products SET stock = stock - 1 WHERE id = ? AND stock > 0", (key,))
            conn.execute("COMMIT")
            done += 1
        rate = done / (time.perf_counter() - started)
        conn.close()
        return round(rate, 1)
    dbname = env["OPSLINE_DATABASE_URL"].rsplit("/", 1)[-1]
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(f"UPDATE products SET stock = stock - 1 WHERE id = '{hot}' AND stock > 0;\n")
        script.flush()
        out = subprocess.run(
            [
                "pgbench",
                "-n",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-c",
                str(clients),
                "-j",
                "1",
                "-T",
                str(max(1, int(seconds))),
                "-f",
                script.name,
                dbname,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return round(float(re.search(r"tps = ([\d.]+)", out).group(1)), 1)  # type: ignore[union-attr]


@contextmanager
def _floor_server(env: dict[str, str]) -> Iterator[Served]:
    port = free_port()
    command = [opsline()[0].replace("opsline", "python"), "-m", "bench._floor_app", str(port)]
    with server(command, {**SERVER_ENV, **env}, port, "/health/ready") as base:
        yield base


def _serve(env: dict[str, str]) -> tuple[list[str], int]:
    port = free_port()
    return opsline("serve", "--port", str(port)), port


def _round(
    floor: Served,
    base: Served,
    shop: dict[str, Any],
    clients: int,
    seconds: float,
    helpers: list[int],
    quiet: Quiet,
) -> dict[str, Any]:
    """The floors and the orders one after the other, as close in time as they can be."""
    body = [json.dumps({"items": [{"product_id": "x", "quantity": 1}]})]
    with _paused([base.pid, *helpers], quiet):
        floors = {
            "floor_insert": wrk(floor, "/insert", body, clients=clients, seconds=seconds),
            "floor_insert_inline": wrk(
                floor, "/insert-inline", body, clients=clients, seconds=seconds
            ),
        }
    return {**floors, "orders": _orders(base, shop, clients, seconds, helpers)}


# Whether the paused processes (given by pid) hold nothing the running ones would
# wait for: pausing one inside a transaction would keep its locks (SQLite's write
# lock, a hot product's row) for the whole measurement of the other side.
Quiet = Callable[[list[int]], bool]


@contextmanager
def _paused(groups: list[int], quiet: Quiet) -> Iterator[None]:
    """Stop the orders server and its workers (process groups) while a floor runs.

    The payments the orders left behind would otherwise be worked off against
    the floor. They are stopped only at a moment none of them holds a lock
    (``quiet``), else the floor, or the other server of the Redis phase, would
    wait for it.
    """
    for _ in range(500):
        for group in groups:
            os.killpg(group, signal.SIGSTOP)
        for group in groups:
            _wait_stopped(group)  # a signal is delivered later than killpg returns
        if quiet(groups):
            break
        for group in groups:
            os.killpg(group, signal.SIGCONT)
        time.sleep(0.01)
    else:
        raise RuntimeError("the orders server was never free of locks to pause it")
    try:
        yield
    finally:
        for group in groups:
            os.killpg(group, signal.SIGCONT)


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Until every thread of ``pid`` is stopped: until then one may still take a
    lock after the check that found none."""
    deadline = time.monotonic() + timeout
    tree = process_tree(pid)  # a stopped group starts no process
    while time.monotonic() < deadline:
        states = []
        for task in (t for each in tree for t in _tasks(each)):
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                continue  # a thread that ended meanwhile
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.001)
    raise RuntimeError(f"process {pid} did not stop")


def _tasks(pid: int) -> list[Path]:
    try:
        return list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []  # ended meanwhile


def _quiet(backend: str, env: dict[str, str]) -> Quiet:
    if backend == "sqlite":
        path = Path(env["OPSLINE_VAR_DIR"]) / "opsline.db"
        return lambda pids: _write_lock_free(path)
    url = env["OPSLINE_DATABASE_URL"]
    port = psycopg.conninfo.conninfo_to_dict(url).get("port") or 5432

    def no_transaction(pids: list[int]) -> bool:
        ports = [
            p for pid in pids for each in process_tree(pid) for p in _client_ports(each, int(port))
        ]
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE client_port = ANY(%s) AND xact_start IS NOT NULL",
                (ports,),
            ).fetchone()
        return row is not None and row[0] == 0

    return no_transaction


def _analyze(backend: str, env: dict[str, str]) -> None:
    """Fresh planner statistics before new server processes plan their statements.

    PostgreSQL here runs with autovacuum off (``SHOW autovacuum``), so nothing else
    would analyse the tables the first phase filled: the new servers then planned
    the enqueue's look-up of a tenant's newest waiting job from statistics saying
    none wait, as a sort of every waiting job (tens of thousands by then), which cost
    15-20 ms of database CPU in every order of that phase.
    """
    if backend == "postgresql":
        with psycopg.connect(env["OPSLINE_DATABASE_URL"], autocommit=True) as conn:
            conn.execute("ANALYZE")


def _write_lock_free(path: Path) -> bool:
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def _client_ports(pid: int, server_port: int) -> list[int]:
    """The local ports of ``pid``'s TCP connections to ``server_port`` (from /proc)."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return []  # ended meanwhile
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            local, remote, inode = (line.split()[i] for i in (1, 2, 9))
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                ports.append(int(local.rsplit(":", 1)[1], 16))
    return ports


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure from the round with its median rate, and every ratio as the median
    of the per-round ratios: a ratio is taken within a round, where the machine's
    speed is the same for both sides."""

    def median_of(pick: Any) -> Any:
        return sorted(rounds, key=lambda r: pick(r)["per_s"])[len(rounds) // 2]

    figures: dict[str, Any] = {
        "rounds": len(rounds),
        "floor_insert": median_of(lambda r: r["floor_insert"])["floor_insert"],
        "floor_insert_inline": median_of(lambda r: r["floor_insert_inline"])["floor_insert_inline"],
        "orders": {
            scenario: median_of(lambda r, s=scenario: r["orders"][s])["orders"][scenario]
            for scenario in ("hot", "spread")
        },
    }
    for scenario in ("hot", "spread"):
        for floor, suffix in (("floor_insert", ""), ("floor_insert_inline", "_inline")):
            ratios = sorted(
                r["orders"][scenario]["per_s"] / r[floor]["per_s"]
                for r in rounds
                if r[floor]["per_s"]
            )
            key = f"ratio_{scenario}_to_floor{suffix}"
            figures[key] = round(ratios[len(ratios) // 2], 3) if ratios else None
            figures[key + "_rounds"] = [round(x, 3) for x in ratios]
    return figures


def run_backend(
    backend: str,
    clients: list[int],
    seconds: float,
    skus: int,
    *,
    rounds: int,
    lock: bool,
    workers: int,
    worker_process: bool,
    processes: int = 1,
) -> dict[str, Any]:
    with database(backend) as env:
        embedded = 0 if worker_process else workers
        env = {**SERVER_ENV, **env, "OPSLINE_EMBEDDED_WORKERS": str(embedded)}
        if processes > 1:  # both servers, the orders' and the floor's
            env = {**env, **REDIS_ENV, "OPSLINE_SERVER_PROCESSES": str(processes)}
        run_cli(opsline("migrate"), env)
        result: dict[str, Any] = {"clients": {}}
        quiet = _quiet(backend, env)
        command, port = _serve(env)
        with (
            server(command, env, port, "/health/ready") as base,
            _payment_workers(env, workers, worker_process) as helpers,
            _floor_server(env) as floor,
        ):
            shop = _shop(base.url, skus)
            for c in clients:
                log(f"{backend}: floors and orders with {c} clients, {rounds} rounds")
                measured = [
                    _round(floor, base, shop, c, seconds, helpers, quiet) for _ in range(rounds)
                ]
                result["clients"][c] = _median_round(measured)
            log(f"{backend}: scarce round")
            wrk(
                base,
                "/api/v1/orders",
                [_body(shop["scarce"])],
                clients=max(clients),
                seconds=min(seconds, 3),
                auth=shop["auth"],
            )
            time.sleep(1)
        result.update(_conservation(env))
        if lock:
            _analyze(backend, env)
            _redis_phase(
                backend, env, result, shop, clients, seconds, workers, worker_process, quiet
            )
            result["oversell"] += _conservation(env)["oversell"]
        for c in clients:
            log(f"{backend}: raw conditional UPDATE, {c} clients")
            result["clients"][c]["raw_update_per_s"] = _raw_updates(
                backend, env, c, seconds, shop["hot"]
            )
        _ratios(result)
        return result


def _redis_phase(
    backend: str,
    env: dict[str, str],
    result: dict[str, Any],
    shop: dict[str, Any],
    clients: list[int],
    seconds: float,
    workers: int,
    worker_process: bool,
    quiet: Quiet,
) -> None:
    """The orders on two servers configured with Redis, one with the lock layer on.

    Configuring Redis changes more than the lock (rate limits and pub/sub in Redis,
    and on SQLite requests in the thread pool: ``Settings.units_on_loop``), so
    comparing the lock layer with the Redis-less server would charge it for those
    as well. Both servers are up (the one not measured paused, with its workers)
    and take turns per client count, over the same backlog of payments; the lock's
    own cost is the ratio of the two.
    """
    env_redis = {**env, **REDIS_ENV}
    env_lock = {**env_redis, **REDIS_LOCK_ENV}
    (command, port), (lock_command, lock_port) = _serve(env_redis), _serve(env_lock)
    with (
        server(command, env_redis, port, "/health/ready") as base,
        _payment_workers(env_redis, workers, worker_process) as helpers,
        server(lock_command, env_lock, lock_port, "/health/ready") as locked,
        _payment_workers(env_lock, workers, worker_process) as lock_helpers,
    ):
        for c in clients:
            figures = result["clients"][c]
            log(f"{backend}: orders with Redis, lock layer off then on, {c} clients")
            with _paused([locked.pid, *lock_helpers], quiet):
                figures["orders_with_redis"] = _orders(base, shop, c, seconds, helpers)
            with _paused([base.pid, *helpers], quiet):
                figures["orders_with_redis_lock"] = _orders(locked, shop, c, seconds, lock_helpers)


def _ratios(result: dict[str, Any]) -> None:
    for figures in result["clients"].values():
        raw = figures["raw_update_per_s"]
        hot = figures["orders"]["hot"]
        figures["ratio_hot_to_raw_update"] = round(hot["per_s"] / raw, 3) if raw else None
        # What the cores could serve at the CPU one hot order costs the server, its
        # workers and the database (wrk's own share left out, so an upper bound).
        cost_ms = sum(
            hot.get(key, 0.0)
            for key in (
                "server_cpu_ms_per_request",
                "helper_cpu_ms_per_request",
                "services_cpu_ms_per_request",
            )
        )
        figures["hot_cpu_ceiling_per_s"] = (
            round(1000 * (os.cpu_count() or 1) / cost_ms) if cost_ms else None
        )
        if "orders_with_redis_lock" in figures:
            # The lock's own cost (Redis configured on both sides), and what configuring
            # Redis costs one process's orders before any lock (see _redis_phase).
            with_redis = figures["orders_with_redis"]["hot"]["per_s"]
            locked = figures["orders_with_redis_lock"]["hot"]["per_s"]
            figures["redis_lock_cost"] = round(1 - locked / with_redis, 3) if with_redis else None
            without = hot["per_s"]
            figures["redis_cost"] = round(1 - with_redis / without, 3) if without else None


# Issue 4's targets: orders/s at least half the bare endpoint's (on both databases,
# told here against each of the two floors), hot-SKU orders/s on PostgreSQL at least
# a quarter of the raw conditional UPDATE's, and no oversell.
HALF_OF_FLOOR, QUARTER_OF_RAW = 0.5, 0.25


def _targets(backends: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target per database and client count: the ratio reached and whether it is met."""
    verdicts: list[dict[str, Any]] = []

    def verdict(target: str, backend: str, clients: Any, ratio: float | None, bar: float) -> None:
        met = ratio is not None and ratio >= bar
        verdicts.append(
            {"target": target, "backend": backend, "clients": clients, "ratio": ratio, "met": met}
        )

    for backend, result in backends.items():
        if "clients" not in result:
            continue  # the backend failed: its error stands in the figures
        for clients, figures in result["clients"].items():
            for floor, suffix in (("pool", ""), ("loop", "_inline")):
                ratios = [figures[f"ratio_{s}_to_floor{suffix}"] for s in ("hot", "spread")]
                lowest = None if None in ratios else min(ratios)
                verdict(f"orders_half_of_{floor}_floor", backend, clients, lowest, HALF_OF_FLOOR)
            if backend == "postgresql":
                ratio = figures.get("ratio_hot_to_raw_update")
                verdict("hot_quarter_of_raw_update", backend, clients, ratio, QUARTER_OF_RAW)
        verdicts.append(
            {
                "target": "zero_oversell",
                "backend": backend,
                "clients": "all",
                "oversell": result["oversell"],
                "met": result["oversell"] == 0,
            }
        )
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one client count, short runs")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--clients", default=None, help="e.g. 1,8,32")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument(
        "--lock",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the orders again with the Redis lock layer (default: on, off with --quick)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="floor/orders rounds per client count; ratios are the median round's (3, quick 1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="payment worker threads; 0 measures the order requests alone",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes (opsline serve --processes) for the orders and the floor;"
        " more than one configures Redis, which they need; payment worker threads per process",
    )
    parser.add_argument(
        "--worker-process",
        action="store_true",
        help="run the payment workers in their own process (opsline worker), not in the server",
    )
    args = parser.parse_args()
    require_wrk()
    clients = [int(c) for c in (args.clients or ("8" if args.quick else "1,8,32")).split(",")]
    seconds = args.seconds or (2.0 if args.quick else 6.0)
    rounds = args.rounds or (1 if args.quick else 3)
    skus = 100 if args.quick else 1000
    backends = {}
    for backend in args.backends.split(","):
        try:
            backends[backend] = run_backend(
                backend,
                clients,
                seconds,
                skus,
                rounds=rounds,
                lock=not args.quick if args.lock is None else args.lock,
                workers=args.workers,
                worker_process=args.worker_process,
                processes=args.processes,
            )
        except Exception as exc:  # one backend failing must not hide the other's figures
            backends[backend] = {"error": f"{type(exc).__name__}: {exc}"}
    emit(
        {
            "benchmark": "orders",
            "quick": args.quick,
            "seconds": seconds,
            "rounds": rounds,
            "workers": args.workers,
            "worker_process": args.worker_process,
            "processes": args.processes,
            "backends": backends,
            "targets": _targets(backends),
        }
    )


if __name__ == "__main__":
    main()
