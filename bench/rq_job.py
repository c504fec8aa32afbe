"""The job function rq workers run in the side-by-side benchmark.

It runs the same shell command an amucrdt node would run for the job, with the
same variables set, and reports when the command started and ended, measured
the way the amucrdt runner measures them (wall clock around the process).
The worker's name comes from ``BENCH_WORKER``, set when the worker starts.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any


def run_command(name: str, command: str) -> dict[str, Any]:
    """Run ``command`` under /bin/sh as job ``name``; return its times."""
    env = dict(os.environ)
    worker = env.get("BENCH_WORKER", "rq")
    env.update(AMUCRDT_JOB=name, AMUCRDT_NODE=worker, AMUCRDT_ATTEMPT="1")
    started = time.time()
    completed = subprocess.run(
        ["/bin/sh", "-c", command], env=env, stdin=subprocess.DEVNULL, check=False
    )
    ended = time.time()
    return {
        "started": started,
        "ended": ended,
        "exit_code": completed.returncode,
        "worker": worker,
    }
