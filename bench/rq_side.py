"""The same jobs through rq on a local redis-server, for comparison.

A redis-server is started on 127.0.0.1 on a free port with persistence off
(``--save '' --appendonly no``) and a working directory of its own; as many rq
workers as the amucrdt run had job slots in total run the jobs with their
default worker class (a forked work horse per job). The jobs are enqueued in
one pipeline, so the enqueue is acknowledged once for all of them, as a
queue push to an amucrdt node is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchlib import BENCH_DIR, Progress, quantiles, read_record_file

from amucrdt.testing import free_port, wait_for

INSTALL_HINT = (
    "to compare with rq, install redis-server and rq: "
    "`apt-get install redis-server` and `pip install rq` "
    "(or `pip install -e '.[bench]'`)"
)

QUEUE = "bench"


def unavailable() -> str | None:
    """Why rq cannot run here, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed; " + INSTALL_HINT
    try:
        import redis  # noqa: F401
        import rq  # noqa: F401
    except ImportError:
        return "the rq package is not installed; " + INSTALL_HINT
    return None


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    """A redis-server on 127.0.0.1, no persistence; yields its port."""
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "redis.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--protected-mode",
            "yes",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = Redis(host="127.0.0.1", port=port, socket_timeout=5)

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}")
            try:
                return bool(client.ping())
            except RedisConnectionError:
                return False

        wait_for(up, 30, "redis-server to answer")
        client.close()
        yield port
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(grace)


def run(
    workdir: Path,
    jobs: list[dict[str, Any]],
    workers: int,
    record_path: Path,
    progress: Progress,
    timeout: float,
) -> dict[str, Any]:
    """Run ``jobs`` (amucrdt job dicts) through rq; return the figures."""
    from redis import Redis
    from rq import Queue, Worker
    from rq.job import Job

    with redis_server(workdir / "redis") as port:
        url = f"redis://127.0.0.1:{port}"
        connection = Redis(host="127.0.0.1", port=port, socket_timeout=30)
        processes = []
        try:
            progress.say(f"rq: redis-server on port {port}; starting {workers} workers")
            for i in range(workers):
                env = dict(os.environ, BENCH_WORKER=f"rq-worker{i}")
                env["PYTHONPATH"] = os.pathsep.join(
                    p for p in (str(BENCH_DIR), env.get("PYTHONPATH")) if p
                )
                log = open(workdir / f"rq-worker{i}.log", "ab")  # noqa: SIM115
                processes.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, "-m", "rq.cli", "worker", "--url", url),
                            *("--name", f"rq-worker{i}", "--logging_level", "WARNING"),
                            *("--path", str(BENCH_DIR), QUEUE),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                        start_new_session=True,
                    )
                )
                log.close()
            wait_for(
                lambda: Worker.count(connection=connection) >= workers,
                60,
                f"{workers} rq workers to register",
                interval=0.1,
            )
            return _run_jobs(
                connection, Queue, Job, jobs, record_path, progress, timeout, workers
            )
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                _stop(process)
            connection.close()


def _run_jobs(
    connection: Any,
    queue_class: Any,
    job_class: Any,
    jobs: list[dict[str, Any]],
    record_path: Path,
    progress: Progress,
    timeout: float,
    workers: int,
) -> dict[str, Any]:
    from rq_job import run_command

    queue = queue_class(QUEUE, connection=connection)
    data = [
        queue_class.prepare_data(
            run_command,
            args=(job["name"], job["cmd"]["posix"]),
            job_id=f"bench-{i}",
            result_ttl=3600,
        )
        for i, job in enumerate(jobs)
    ]
    progress.say(f"rq: enqueueing {len(jobs)} jobs")
    sent = time.time()
    with connection.pipeline() as pipe:
        enqueued = queue.enqueue_many(data, pipeline=pipe)
        pipe.execute()
    acked = time.time()
    ids = [job.id for job in enqueued]

    deadline = time.monotonic() + timeout
    names = {job["name"] for job in jobs}
    while time.monotonic() < deadline:
        seen = {name for name, _node, _attempt in read_record_file(record_path)}
        progress.update(f"rq: {len(seen & names)}/{len(names)} jobs ran")
        if names <= seen:
            break
        time.sleep(0.05)

    results: list[dict[str, Any]] = []

    def finished() -> bool:
        results.clear()
        for start in range(0, len(ids), 1000):
            for job in job_class.fetch_many(ids[start : start + 1000], connection):
                value = job.return_value() if job is not None else None
                if isinstance(value, dict):
                    results.append(value)
        return len(results) == len(ids)

    with contextlib.suppress(TimeoutError):
        wait_for(finished, max(1.0, deadline - time.monotonic()), "rq results", 0.2)

    lines = read_record_file(record_path)
    runs = Counter(name for name, _node, _attempt in lines)
    starts = [r["started"] for r in results]
    ends = [r["ended"] for r in results]
    span = (max(ends) - min(starts)) if results else None
    return {
        "workers": workers,
        "enqueue_seconds": round(acked - sent, 6),
        "push_to_start": quantiles(s - acked for s in starts),
        "throughput_jobs_per_s": (
            round(len(results) / span, 3) if span and span > 0 else None
        ),
        "first_start_to_last_end_s": None if span is None else round(span, 6),
        "finished": len(results),
        "duplicates": sum(1 for n in names if runs[n] > 1),
        "lost": sum(1 for n in names if runs[n] == 0),
        "runs_per_worker": dict(Counter(node for _n, node, _a in lines)),
    }
