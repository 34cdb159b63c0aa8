"""Shared machinery for the job-queue benchmarks (``bench/jobs.py``, ``bench.peers``).

A *system* is one function ``run(n_jobs: int, latency_samples: int) -> dict`` that measures
one pass of one job system and returns::

    {"enqueue_per_s": float, "processed_per_s": float,
     "latency_p50_ms": float, "latency_p99_ms": float, "workers": str, ...}

Most systems only need :func:`measure_queue`, which runs the method of
``shared/PEERS.md`` given four small callables (reset, enqueue, start workers, close).

Job bodies, whatever process or thread they run in, call :func:`record` with the
job's sequence number. It appends one fixed-width line ``seq start_ns end_ns`` to a
file of its own process inside the directory named by ``$BENCH_RECORD_DIR`` (one
``os.write`` on an ``O_APPEND`` descriptor: atomic between threads, no lock), and, for
latency probes (negative sequence numbers), also sends its start time as one datagram
to the parent's Unix socket so the parent wakes without polling. Timestamps are
``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for every process on the host).
The parent reads the files after the run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORD_DIR_ENV = "BENCH_RECORD_DIR"
NOTIFY_SOCKET_NAME = "notify.sock"
_LINE_FORMAT = "{:>11d} {:>20d} {:>20d}\n"
LINE_BYTES = len(_LINE_FORMAT.format(0, 0, 0))
REPO_ROOT = Path(__file__).resolve().parent.parent

SystemRun = Callable[[int, int], dict[str, Any]]
"""``run(n_jobs, latency_samples) -> dict``: one measured pass of one system."""

# --------------------------------------------------------------------------------------
# Job-body side: cheap timestamp recording, safe in threads, forks and processes.
# --------------------------------------------------------------------------------------

_record_pid = -1
_record_fd = -1
_record_sock: socket.socket | None = None
_record_sock_path = ""


def _record_open() -> None:
    global _record_pid, _record_fd, _record_sock, _record_sock_path
    directory = os.environ[RECORD_DIR_ENV]
    pid = os.getpid()
    _record_fd = os.open(
        os.path.join(directory, f"{pid}.rec"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    _record_sock = sock
    _record_sock_path = os.path.join(directory, NOTIFY_SOCKET_NAME)
    _record_pid = pid  # last: a concurrent caller opens its own rather than see half a state


def record(seq: int) -> None:
    """Body of a benchmark no-op job: note when it started and finished.

    ``seq >= 0`` is a bulk job; ``seq < 0`` is a latency probe, reported at once to the parent.
    """
    start = time.monotonic_ns()
    if _record_pid != os.getpid():  # first job in this process (or after a fork)
        _record_open()
    end = time.monotonic_ns()
    os.write(_record_fd, _LINE_FORMAT.format(seq, start, end).encode())
    if seq < 0 and _record_sock is not None:
        with contextlib.suppress(OSError):
            _record_sock.sendto(b"%d %d" % (seq, start), _record_sock_path)


# --------------------------------------------------------------------------------------
# Parent side: the recorder directory, waiting for jobs, reading timestamps.
# --------------------------------------------------------------------------------------


class Recorder:
    """A temporary directory the job bodies record into, plus the latency-probe socket."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="opsline-bench-"))
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.dir / NOTIFY_SOCKET_NAME))

    @property
    def env(self) -> dict[str, str]:
        """Environment for worker processes (``os.environ`` plus the record directory)."""
        pythonpath = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        return {**os.environ, RECORD_DIR_ENV: str(self.dir), "PYTHONPATH": pythonpath}

    def activate_in_process(self) -> None:
        """Point :func:`record` at this recorder for job bodies run in this process."""
        global _record_pid
        os.environ[RECORD_DIR_ENV] = str(self.dir)
        _record_pid = -1  # reopen in the new directory on the next record()

    def count(self) -> int:
        """Number of job bodies recorded so far (bulk and probes), from file sizes only."""
        total = 0
        with os.scandir(self.dir) as entries:
            for entry in entries:
                if entry.name.endswith(".rec"):
                    total += entry.stat().st_size // LINE_BYTES
        return total

    def records(self) -> list[tuple[int, int, int]]:
        """Every complete ``(seq, start_ns, end_ns)`` line written so far."""
        rows: list[tuple[int, int, int]] = []
        for path in sorted(self.dir.glob("*.rec")):
            data = path.read_bytes()
            usable = len(data) - len(data) % LINE_BYTES
            for line in data[:usable].decode().splitlines():
                seq, start, end = line.split()
                rows.append((int(seq), int(start), int(end)))
        return rows

    def wait_for(
        self,
        n: int,
        timeout_s: float,
        alive: Callable[[], None] | None = None,
        interval_s: float = 0.02,
    ) -> None:
        """Block until ``n`` bodies are recorded; ``alive()`` raises if the workers died."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = self.count()
            if done >= n:
                return
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {n} jobs ran within {timeout_s:.0f} s")
            time.sleep(interval_s)

    def wait_probe(self, seq: int, timeout_s: float) -> int:
        """Block until the latency probe ``seq`` starts; return its start ``monotonic_ns``."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"latency probe {seq} did not start within {timeout_s} s")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(64)
            except TimeoutError:
                continue
            got, start = (int(x) for x in data.split())
            if got == seq:
                return start

    def drain_probes(self) -> None:
        """Drop any stale probe notifications."""
        self._sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self._sock.recv(64)

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Worker subprocesses.
# --------------------------------------------------------------------------------------


@dataclass
class Workers:
    """Worker subprocesses, each the leader of its own process group.

    Use as a context manager: leaving it (normally or by exception) sends SIGTERM to every
    group, waits ``grace_s``, then SIGKILLs what is left (children included).
    """

    commands: Sequence[Sequence[str]]
    env: Mapping[str, str]
    log_dir: Path
    grace_s: float = 10.0
    cwd: Path = REPO_ROOT
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> Workers:
        try:
            for i, cmd in enumerate(self.commands):
                with open(self.log_dir / f"worker-{i}.log", "wb") as log:
                    self.procs.append(
                        subprocess.Popen(
                            list(cmd),
                            env=dict(self.env),
                            cwd=self.cwd,
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 1500) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("worker-*.log")):
            text = path.read_text(errors="replace").strip()
            if text:
                parts.append(f"[{path.name}] {text[-chars:]}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        """Raise if a worker process has exited (with the end of its log)."""
        for proc in self.procs:
            code = proc.poll()
            if code is not None:
                raise RuntimeError(f"worker {proc.args!r} exited with {code}:\n{self.log_tail()}")

    def stop(self) -> None:
        running = [p for p in self.procs if p.poll() is None]
        _signal_groups(self.procs, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        # The leaders may be gone while children of theirs linger: kill every group.
        _signal_groups(self.procs, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _signal_groups(procs: Sequence[subprocess.Popen[bytes]], sig: signal.Signals) -> None:
    for proc in procs:
        # start_new_session=True made each worker the leader of group == its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def python_command(*args: str) -> list[str]:
    """A command line running this interpreter (the project's venv)."""
    return [sys.executable, *args]


# --------------------------------------------------------------------------------------
# Statistics and the measurement method.
# --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed: ...``; ``elapsed()`` is seconds (frozen on exit)."""
    start = time.perf_counter()
    end: float | None = None

    def elapsed() -> float:
        return (end if end is not None else time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end = time.perf_counter()


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries the JSON result only."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def package_version(name: str) -> str:
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{name} (not installed)"


def measure_queue(
    *,
    n_jobs: int,
    latency_samples: int,
    reset: Callable[[], None],
    enqueue: Callable[[int], None],
    workers: Callable[[Recorder], contextlib.AbstractContextManager[Any]],
    workers_desc: str,
    enqueue_bulk: Callable[[range], None] | None = None,
    warmups: int = 3,
    idle_gap_s: float = 0.05,
    drain_timeout_s: float | None = None,
    probe_timeout_s: float = 10.0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One pass of the PEERS.md method.

    ``reset()`` empties the system's queue; ``enqueue(seq)`` enqueues one job whose body
    calls ``record(seq)``, with the library's normal single-job call; ``workers(recorder)``
    is a context manager that runs the workers (stopping them on exit) and whose value may
    have a ``check_alive()`` method (as :class:`Workers` does). ``enqueue_bulk(seqs)``, if
    given, replaces the timed loop over ``enqueue``: it must still enqueue one job per call
    of the library (it exists so that an async client can loop inside one event-loop run).

    1. reset; enqueue ``n_jobs`` one at a time, workers stopped -> ``enqueue_per_s``;
    2. start the workers; ``processed_per_s`` = n_jobs / (last body end - first body end);
    3. idle latency: ``warmups`` + ``latency_samples`` times, enqueue one job on the idle
       system and time from just before the enqueue call to the body's start.
    """
    recorder = Recorder()
    try:
        reset()
        with stopwatch() as enqueue_elapsed:
            if enqueue_bulk is not None:
                enqueue_bulk(range(n_jobs))
            else:
                for seq in range(n_jobs):
                    enqueue(seq)
        enqueue_s = enqueue_elapsed()

        with workers(recorder) as running:
            alive = getattr(running, "check_alive", None)
            timeout = drain_timeout_s if drain_timeout_s is not None else 60 + n_jobs / 100
            recorder.wait_for(n_jobs, timeout, alive)
            bulk = [r for r in recorder.records() if r[0] >= 0]
            seqs = {r[0] for r in bulk}
            if len(seqs) < n_jobs:
                raise RuntimeError(f"{n_jobs - len(seqs)} jobs missing from the records")
            ends = [r[2] for r in bulk]
            span_s = (max(ends) - min(ends)) / 1e9

            time.sleep(0.2)  # let the workers settle into their idle state
            recorder.drain_probes()
            latencies_ms: list[float] = []
            for i in range(warmups + latency_samples):
                seq = -1 - i
                time.sleep(idle_gap_s)
                t0 = time.monotonic_ns()
                enqueue(seq)
                started = recorder.wait_probe(seq, probe_timeout_s)
                if i >= warmups:
                    latencies_ms.append((started - t0) / 1e6)
                if alive is not None:
                    alive()
    finally:
        recorder.close()

    result: dict[str, Any] = {
        "enqueue_per_s": round(n_jobs / enqueue_s, 1),
        "processed_per_s": round(n_jobs / span_s, 1) if span_s > 0 else math.inf,
        "latency_p50_ms": round(percentile(latencies_ms, 50), 3),
        "latency_p99_ms": round(percentile(latencies_ms, 99), 3),
        "workers": workers_desc,
    }
    if len(bulk) > n_jobs:
        result["duplicates"] = len(bulk) - n_jobs
    result.update(extra or {})
    return result


# --------------------------------------------------------------------------------------
# Other load on the host: the machine is shared, so say how busy it was with other work.
# --------------------------------------------------------------------------------------

SERVER_COMMANDS = frozenset({"beam.smp", "postgres", "redis-server", "erl_child_setup"})


def host_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def services_usage() -> dict[int, float]:
    """CPU seconds used so far by each broker and database process (whoever its clients are)."""
    tick = os.sysconf("SC_CLK_TCK")
    usage: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        if comm in SERVER_COMMANDS or comm.startswith("postgres"):
            rest = raw[raw.rfind(")") + 2 :].split()
            usage[int(entry.name)] = (int(rest[11]) + int(rest[12])) / tick  # utime + stime
    return usage


def services_busy_since(before: dict[int, float]) -> float:
    """CPU seconds the broker and database processes used since ``before``
    (:func:`services_usage`): a process started since counts whole, one that
    exited since is left out (a lower bound, never below zero: summing totals
    instead would subtract what an exited backend had used before)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in services_usage().items())


def _own_busy_s() -> float:
    """CPU seconds of this process and of its reaped children (the workers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def other_load() -> Iterator[dict[str, float]]:
    """Measure CPU used during the block by processes that are neither the benchmark nor
    a broker/database server, as a percentage of the machine (all cores).

    The figure is approximate (server processes serving others count as servers; worker
    children killed rather than reaped are missed), but a value above ~10 % means other
    work competed with the run and its figures are low.
    """
    out: dict[str, float] = {}
    try:
        start = (time.monotonic(), host_busy_s(), services_usage(), _own_busy_s())
    except OSError:  # no /proc: say nothing
        yield out
        return
    yield out
    wall = time.monotonic() - start[0]
    host = host_busy_s() - start[1]
    servers = services_busy_since(start[2])
    own = _own_busy_s() - start[3]
    if wall > 0:
        other = max(0.0, host - servers - own)
        out["other_cpu_pct"] = round(100 * other / (wall * (os.cpu_count() or 1)), 1)
        out["host_cpu_pct"] = round(100 * host / (wall * (os.cpu_count() or 1)), 1)


# --------------------------------------------------------------------------------------
# Passes, aggregation, ratios, JSON output.
# --------------------------------------------------------------------------------------

NUMERIC_KEYS = ("enqueue_per_s", "processed_per_s", "latency_p50_ms", "latency_p99_ms")


def run_system(name: str, fn: SystemRun, n_jobs: int, latency_samples: int, passes: int) -> dict:
    """Median of ``passes`` passes of one system; an exception becomes ``{"error": ...}``."""
    results: list[dict[str, Any]] = []
    for p in range(passes):
        log(f"{name}: pass {p + 1}/{passes}, {n_jobs} jobs")
        try:
            with stopwatch() as elapsed, other_load() as load:
                result = fn(n_jobs, latency_samples)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            return {"error": f"pass {p + 1}: {type(exc).__name__}: {exc or repr(exc)}"[:2000]}
        result = {**result, **load}
        busy = load.get("other_cpu_pct", 0.0)
        warning = f"; WARNING: other work used {busy:.0f} % of the CPU" if busy > 10 else ""
        log(f"{name}: {_summary(result)} ({elapsed():.1f} s{warning})")
        results.append(result)
    return aggregate(results)


def aggregate(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median of each figure across passes, the worst ``other_cpu_pct``; other keys from
    the first pass; ``per_pass`` lists every pass when there are several."""
    load_keys = ("other_cpu_pct", "host_cpu_pct")
    skip = (*NUMERIC_KEYS, *load_keys)
    out: dict[str, Any] = {k: v for k, v in results[0].items() if k not in skip}
    for key in NUMERIC_KEYS:
        out[key] = round(statistics.median(r[key] for r in results), 3)
    if all("other_cpu_pct" in r for r in results):
        out["other_cpu_pct"] = max(r["other_cpu_pct"] for r in results)
    if len(results) > 1:
        out["per_pass"] = [{k: r[k] for k in skip if k in r} for r in results]
    return out


def _summary(r: Mapping[str, Any]) -> str:
    return (
        f"enqueue {r['enqueue_per_s']:,.0f}/s, processed {r['processed_per_s']:,.0f}/s, "
        f"latency p50 {r['latency_p50_ms']:.2f} ms p99 {r['latency_p99_ms']:.2f} ms"
    )


def ratio_block(subject: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float]:
    """Subject relative to baseline: ``*_x`` > 1 is better for rates, < 1 for latencies."""

    def div(a: float, b: float) -> float:
        return round(a / b, 3) if b else math.inf

    return {
        "processed_x": div(subject["processed_per_s"], baseline["processed_per_s"]),
        "enqueue_x": div(subject["enqueue_per_s"], baseline["enqueue_per_s"]),
        "latency_p50_x": div(subject["latency_p50_ms"], baseline["latency_p50_ms"]),
        "latency_p99_x": div(subject["latency_p99_ms"], baseline["latency_p99_ms"]),
    }


def ratios(
    systems: Mapping[str, Mapping[str, Any]],
    subjects: Sequence[str],
    baselines: Sequence[str],
) -> dict[str, Any]:
    """``"<subject>/<baseline>"`` ratio blocks, plus ``"<subject>/best_baseline"`` against
    the baseline with the highest processing rate (named in ``best_baseline``)."""
    ok = {k: v for k, v in systems.items() if "error" not in v}
    good_baselines = [b for b in baselines if b in ok]
    out: dict[str, Any] = {}
    best = max(good_baselines, key=lambda b: ok[b]["processed_per_s"], default=None)
    if best is not None:
        out["best_baseline"] = best
    for s in subjects:
        if s not in ok:
            continue
        for b in good_baselines:
            if b != s:
                out[f"{s}/{b}"] = ratio_block(ok[s], ok[b])
        if best is not None and best != s:
            out[f"{s}/best_baseline"] = ratio_block(ok[s], ok[best])
    return out


def _on_sigterm(signum: int, frame: object) -> None:
    # Become an exception so every ``finally`` (worker shutdown) runs.
    raise SystemExit(128 + signum)


def main(
    systems: Mapping[str, SystemRun],
    *,
    subjects: Sequence[str],
    baselines: Sequence[str],
    argv: Sequence[str] | None = None,
    description: str = "Job-queue benchmark",
) -> dict[str, Any]:
    """Command line shared by the job benchmarks; prints the JSON result as the last line.

    Full run: 20,000 jobs, median of 3 passes, 50 latency samples (PEERS.md).
    ``--quick``: 2,000 jobs, 1 pass, 10 latency samples.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--jobs", type=int, help="jobs per pass (20000; quick 2000)")
    parser.add_argument("--passes", type=int, help="passes, median kept (3; quick 1)")
    parser.add_argument("--samples", type=int, help="idle latency samples (50; quick 10)")
    parser.add_argument(
        "--only", help=f"comma-separated subset of: {', '.join(systems)}", default=""
    )
    args = parser.parse_args(argv)
    n_jobs = args.jobs or (2_000 if args.quick else 20_000)
    passes = args.passes or (1 if args.quick else 3)
    samples = args.samples or (10 if args.quick else 50)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(systems)
    unknown = [s for s in chosen if s not in systems]
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)}")

    signal.signal(signal.SIGTERM, _on_sigterm)
    results: dict[str, Any] = {}
    with stopwatch() as elapsed:
        for name in chosen:
            results[name] = run_system(name, systems[name], n_jobs, samples, passes)
    log(f"done in {elapsed():.1f} s")
    output = {
        "benchmark": "jobs",
        "quick": bool(args.quick),
        "jobs": n_jobs,
        "passes": passes,
        "latency_samples": samples,
        "systems": results,
        "ratios": ratios(results, subjects, baselines),
    }
    print(json.dumps(output), flush=True)
    return output
