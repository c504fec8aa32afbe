"""Catch-up: how long a fresh node takes to sync a document with K finished jobs.

``python bench/catchup.py --jobs 1000,10000,100000`` runs, for each K, a node
(node0) whose document already holds K finished jobs, then starts a fresh node
(node1, empty data directory, ``--peer`` node0) and measures the time from
starting node1's process until both report the same heads and node1 sees all
K jobs done.

How the big document is made (``--build``):

``direct`` (default)
    Written through the Python API (:mod:`amucrdt.state`) into node0's data
    directory before node0 starts: one queue of K ``true`` jobs, then for each
    job a claim, a running record and a done record, each its own change, the
    way a node with one slot commits them. One writer, so fewer actors and a
    smaller document than a real cluster makes (see the report's bytes per
    job).
``cluster``
    node0 runs alone with many slots and really runs the K ``true`` jobs
    first. Realistic, but slow for large K.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    Progress,
    default_out,
    machine,
    make_cluster,
    mib,
    proc_status_bytes,
    store_bytes,
    table,
    versions,
    write_json,
)

from amucrdt.client import Client
from amucrdt.errors import AmucrdtError
from amucrdt.formats import JobSpec, QueueSpec
from amucrdt.state import DONE, RUNNING, Cluster, genesis, job_id
from amucrdt.storage import DocStore
from amucrdt.testing import LocalCluster, LocalNode, wait_for

#: Node id and actor of the writer of a ``direct`` document.
BUILDER_NODE = "b0" * 16
BUILDER_ACTOR = bytes([0xB0]) * 16

QUEUE = "history"

#: Seconds one status poll of the fresh node may take before it counts as
#: unanswered and is sent again.
POLL_TIMEOUT = 30.0


class NotInSync(TimeoutError):
    """The fresh node did not catch up in time; ``figures`` says how far it got."""

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures


def build_direct(data_dir: Path, jobs: int, progress: Progress) -> dict[str, Any]:
    """Write a document with ``jobs`` finished jobs into ``data_dir``."""
    began = time.monotonic()
    doc = genesis()
    doc.set_actor(BUILDER_ACTOR)
    cluster = Cluster(doc)
    now = time.time()
    stamp = int(now * 1000)
    spec = QueueSpec(
        QUEUE,
        tuple(JobSpec(f"job-{i:06d}", {"posix": "true"}) for i in range(jobs)),
    )
    cluster.add_queue(spec, BUILDER_NODE, now)
    doc.commit("push", time=stamp)
    for i, job in enumerate(spec.jobs):
        jid = job_id(QUEUE, job.name)
        cluster.put_claim(jid, 1, BUILDER_NODE, now)
        doc.commit(time=stamp)
        running = {"state": RUNNING, "node": BUILDER_NODE, "started": now}
        cluster.put_result(jid, 1, BUILDER_NODE, running)
        doc.commit(time=stamp)
        done = running | {
            "state": DONE,
            "ended": now,
            "exit_code": 0,
            "signal": None,
            "timed_out": False,
            "tail": "",
            "error": None,
            "log": f"/var/lib/amucrdt/logs/{QUEUE}/{job.name}.1.log",
            "late": False,
        }
        cluster.put_result(jid, 1, BUILDER_NODE, done)
        doc.commit(time=stamp)
        if i % 1000 == 999:
            progress.update(f"direct build: {i + 1}/{jobs} jobs written")
    with DocStore(data_dir) as store:
        store.compact(doc.save())
    return {"method": "direct", "seconds": round(time.monotonic() - began, 3)}


def build_cluster(
    node: LocalNode, jobs: int, slots: int, progress: Progress, timeout: float
) -> dict[str, Any]:
    """Have the running ``node`` run ``jobs`` trivial jobs to the end."""
    began = time.monotonic()
    queue = {
        "name": QUEUE,
        "jobs": [
            {"name": f"job-{i:06d}", "cmd": {"posix": "true"}} for i in range(jobs)
        ],
    }
    node.request("push_queue", timeout=300, queue=queue)

    def finished() -> bool:
        count = int(node.request("stats", timeout=120)["finished"])
        progress.update(f"cluster build: {count}/{jobs} jobs finished")
        return count >= jobs

    wait_for(finished, timeout, f"{jobs} jobs to finish on node0", interval=1.0)
    return {
        "method": "cluster",
        "slots": slots,
        "seconds": round(time.monotonic() - began, 3),
    }


async def _status(node: LocalNode, timeout: float) -> tuple[dict[str, Any], float]:
    async with asyncio.timeout(timeout), Client(node.url, node.secret) as client:
        sent = time.time()
        result = await client.request("status")
        return result, sent


def run_once(
    jobs: int, build: str, slots: int, seed: int, timeout: float, progress: Progress
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="amucrdt-catchup-"))
    cluster = make_cluster(root, 2, slots, seed, topology="chain")
    old = cluster.nodes[0]
    try:
        if build == "direct":
            progress.say(f"writing a document with {jobs} finished jobs")
            built = build_direct(old.data_dir, jobs, progress)
            old.start()
            old.wait_up(timeout)
        else:
            old.start()
            old.wait_up(timeout)
            progress.say(f"node0 runs {jobs} jobs to build its document")
            built = build_cluster(old, jobs, slots, progress, timeout)
        progress.say(f"document built ({built['method']}, {built['seconds']:.1f}s)")
        sizes_before = store_bytes(old.data_dir)
        built_figures = {"build": built, "node0_store_bytes": sizes_before}
        try:
            return _join(cluster, jobs, timeout, progress) | built_figures
        except NotInSync as exc:
            exc.figures |= built_figures
            raise
    finally:
        progress.say("stopping nodes")
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


def _join(
    cluster: LocalCluster, jobs: int, timeout: float, progress: Progress
) -> dict[str, Any]:
    old, fresh = cluster.nodes
    progress.say("starting a fresh node that peers with node0")
    started = time.time()
    fresh.start()
    fresh.wait_up(timeout)
    answered = time.time()
    deadline = time.monotonic() + timeout
    connected_at = None
    polls = unanswered = done = 0
    while True:
        if time.monotonic() > deadline:
            # What a failed run measured is kept: it shows how far it got.
            raise NotInSync(
                f"fresh node not in sync after {timeout:.0f}s",
                {
                    "jobs": jobs,
                    "process_start_to_answering_s": round(answered - started, 3),
                    "process_start_to_connected_s": (
                        None
                        if connected_at is None
                        else round(connected_at - started, 3)
                    ),
                    "process_start_to_gave_up_s": round(time.time() - started, 3),
                    "finished_jobs_seen": done,
                    "status_polls": polls,
                    "status_polls_unanswered": unanswered,
                    "peak_rss_bytes": {
                        "node0": proc_status_bytes(_pid(old), "VmHWM"),
                        "fresh": proc_status_bytes(_pid(fresh), "VmHWM"),
                    },
                    "fresh_store_bytes": store_bytes(fresh.data_dir),
                },
            )
        try:
            status, sent = asyncio.run(_status(fresh, POLL_TIMEOUT))
        except (AmucrdtError, TimeoutError, OSError):
            # A node applying a large sync message answers nothing meanwhile.
            unanswered += 1
            progress.update(f"fresh node busy ({unanswered} polls unanswered)")
            continue
        polls += 1
        got = time.time()
        if connected_at is None and any(p["up"] for p in status["peers"]):
            connected_at = got
        done = status["queues"].get(QUEUE, {}).get("done", 0)
        progress.update(f"fresh node holds {done}/{jobs} finished jobs")
        if done >= jobs:
            theirs, _ = asyncio.run(_status(old, timeout))
            if theirs["node"]["heads"] == status["node"]["heads"]:
                break
        time.sleep(0.05)
    in_sync_s = got - started
    progress.say(f"fresh node in sync {in_sync_s:.2f}s after it started")
    return {
        "jobs": jobs,
        "process_start_to_answering_s": round(answered - started, 3),
        "process_start_to_connected_s": (
            None if connected_at is None else round(connected_at - started, 3)
        ),
        "process_start_to_in_sync_s": round(in_sync_s, 3),
        "poll_resolution_s": round(got - sent, 3),
        "status_polls": polls,
        "status_polls_unanswered": unanswered,
        "peak_rss_bytes": {
            "node0": proc_status_bytes(_pid(old), "VmHWM"),
            "fresh": proc_status_bytes(_pid(fresh), "VmHWM"),
        },
        "fresh_store_bytes": store_bytes(fresh.data_dir),
    }


def _pid(node: LocalNode) -> int:
    assert node.process is not None
    return int(node.process.pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time for a fresh node to catch up with K finished jobs."
    )
    parser.add_argument(
        "--jobs",
        default="1000,10000,100000",
        metavar="K[,K...]",
        help="finished jobs in the document, one run each",
    )
    parser.add_argument("--build", choices=["direct", "cluster"], default="direct")
    parser.add_argument(
        "--slots", type=int, default=8, help="slots of node0 for --build cluster"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="S")
    parser.add_argument("--out", type=Path, metavar="FILE")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(k) for k in args.jobs.split(",") if k.strip()]
    progress = Progress(args.quiet)
    out: Path = args.out or default_out("catchup")
    report: dict[str, Any] = {
        "benchmark": "catchup",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "versions": versions(),
        "parameters": {
            "jobs": sizes,
            "build": args.build,
            "slots": args.slots,
            "seed": args.seed,
        },
        "runs": [],
    }
    status = 0
    for jobs in sizes:
        try:
            result = run_once(
                jobs, args.build, args.slots, args.seed, args.timeout, progress
            )
        except NotInSync as exc:
            progress.say(f"{jobs} jobs: failed: {exc}")
            report["runs"].append({"error": str(exc)} | exc.figures)
            write_json(out, report)
            status = 2
            continue
        except (AmucrdtError, TimeoutError, OSError) as exc:
            progress.say(f"{jobs} jobs: failed: {exc}")
            report["runs"].append({"jobs": jobs, "error": str(exc)})
            status = 2
            continue
        report["runs"].append(result)
        write_json(out, report)

    rows = []
    for r in report["runs"]:
        if "error" in r:
            rows.append([str(r["jobs"]), "failed", "", "", "", ""])
            continue
        snapshot = sum(r["node0_store_bytes"].values())
        rows.append(
            [
                str(r["jobs"]),
                r["build"]["method"],
                f"{snapshot / 1024:.0f} KiB ({snapshot / r['jobs']:.0f} B/job)",
                f"{r['process_start_to_connected_s']:.2f} s",
                f"{r['process_start_to_in_sync_s']:.2f} s "
                f"(+/- {r['poll_resolution_s']:.2f})",
                mib(r["peak_rss_bytes"]["fresh"]),
            ]
        )
    header = ["jobs", "built", "document", "connected", "in sync", "fresh RSS"]
    print(table(rows, header))
    write_json(out, report)
    print(f"\nreport: {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
