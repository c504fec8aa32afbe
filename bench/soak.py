"""Soak: a steady stream of jobs for a set time, watching memory and storage.

``python bench/soak.py --seconds 600 --rate 5`` starts N nodes, pushes a small
queue every second (``--rate`` jobs, to each node in turn) for ``--seconds``,
and every ``--sample`` seconds records each node's resident memory (VmRSS),
the size of its document store (snapshot plus log) and how many jobs have run.
Then it waits for the backlog to drain, samples for ``--idle`` seconds more
with no jobs, and prints the slopes:

- RSS per node, in KiB per minute while jobs stream, and in bytes per job
  run: the document and the node's index keep every job's history, so
  memory grows with jobs run;
- RSS per minute while idle: memory that grows with no jobs grows with time
  alone (heartbeats, connections), which is what a leak looks like;
- store bytes per job run (the log, before compaction): what history costs
  on disk between compactions;
- backlog (jobs pushed but not yet run) per minute: positive when the cluster
  runs fewer jobs than are pushed.

Exit status 1 when a job ran twice or never, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchlib import (
    Controls,
    Progress,
    count_lines,
    default_out,
    machine,
    make_cluster,
    proc_status_bytes,
    read_record_file,
    record_jobs,
    slope,
    store_bytes,
    table,
    versions,
    write_json,
)

from amucrdt.testing import LocalCluster


def _sample(
    cluster: LocalCluster, began: float, pushed: int, record_path: Path
) -> dict[str, Any]:
    pids = [node.process.pid for node in cluster.nodes if node.process is not None]
    return {
        "t": round(time.monotonic() - began, 3),
        "pushed": pushed,
        "ran": count_lines(record_path),
        "rss_bytes": [proc_status_bytes(pid, "VmRSS") for pid in pids],
        "store_bytes": [
            sum(store_bytes(node.data_dir).values()) for node in cluster.nodes
        ],
    }


def _say(progress: Progress, sample: dict[str, Any], what: str) -> None:
    rss = [(r or 0) // 1048576 for r in sample["rss_bytes"]]
    progress.say(
        f"{what} t={sample['t']:5.0f}s pushed {sample['pushed']} "
        f"ran {sample['ran']} rss {rss} MiB"
    )


async def _stream(
    cluster: LocalCluster,
    args: argparse.Namespace,
    record_path: Path,
    progress: Progress,
) -> tuple[list[dict[str, Any]], set[str]]:
    samples: list[dict[str, Any]] = []
    names: set[str] = set()
    began = time.monotonic()
    next_push = next_sample = began
    batch = 0
    async with Controls(cluster) as controls:
        while True:
            now = time.monotonic()
            streaming = now - began < args.seconds
            if streaming and now >= next_push:
                jobs = record_jobs(f"b{batch:05d}", args.rate, record_path)
                target = controls.clients[batch % len(controls.clients)]
                await target.request(
                    "push_queue", queue={"name": f"soak-{batch:05d}", "jobs": jobs}
                )
                names.update(job["name"] for job in jobs)
                batch += 1
                next_push += 1.0
            if now >= next_sample or not streaming:
                samples.append(_sample(cluster, began, len(names), record_path))
                _say(progress, samples[-1], "streaming")
                next_sample += args.sample
            if not streaming:
                return samples, names
            await asyncio.sleep(
                max(0.0, min(next_push, next_sample) - time.monotonic())
            )


def _drain(
    record_path: Path, names: set[str], timeout: float, progress: Progress
) -> float:
    began = time.monotonic()
    while count_lines(record_path) < len(names):
        if time.monotonic() - began > timeout:
            break
        progress.update(f"draining: {count_lines(record_path)}/{len(names)} ran")
        time.sleep(0.1)
    return time.monotonic() - began


def _idle(
    cluster: LocalCluster,
    args: argparse.Namespace,
    pushed: int,
    record_path: Path,
    progress: Progress,
) -> list[dict[str, Any]]:
    """Samples while no job is pushed: memory that grows now grows with time."""
    began = time.monotonic()
    samples = []
    while True:
        samples.append(_sample(cluster, began, pushed, record_path))
        _say(progress, samples[-1], "idle")
        if time.monotonic() - began >= args.idle:
            return samples
        time.sleep(min(args.sample, max(0.0, args.idle - samples[-1]["t"])))


def _slopes(
    samples: list[dict[str, Any]], idle: list[dict[str, Any]], nodes: int
) -> dict[str, Any]:
    ts = [s["t"] / 60 for s in samples]
    rss = [slope(ts, [s["rss_bytes"][i] / 1024 for s in samples]) for i in range(nodes)]
    ran = [float(s["ran"]) for s in samples]
    rss_per_job = [
        slope(ran, [float(s["rss_bytes"][i]) for s in samples]) for i in range(nodes)
    ]
    idle_ts = [s["t"] / 60 for s in idle]
    idle_rss = [
        slope(idle_ts, [s["rss_bytes"][i] / 1024 for s in idle]) for i in range(nodes)
    ]
    store = [
        slope(ran, [float(s["store_bytes"][i]) for s in samples]) for i in range(nodes)
    ]
    backlog = slope(ts, [float(s["pushed"] - s["ran"]) for s in samples])
    # The second half alone tells a leak from start-up growth.
    half = samples[len(samples) // 2 :]
    late_ts = [s["t"] / 60 for s in half]
    late_rss = [
        slope(late_ts, [s["rss_bytes"][i] / 1024 for s in half]) for i in range(nodes)
    ]

    def rounded(values: list[float | None]) -> list[float | None]:
        return [None if v is None else round(v, 1) for v in values]

    return {
        "rss_kib_per_min": rounded(rss),
        "rss_kib_per_min_second_half": rounded(late_rss),
        "rss_bytes_per_job": rounded(rss_per_job),
        "idle_rss_kib_per_min": rounded(idle_rss),
        "store_bytes_per_job": rounded(store),
        "backlog_jobs_per_min": None if backlog is None else round(backlog, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A steady stream of jobs; memory and storage over time."
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rate", type=int, default=5, help="jobs pushed per second")
    parser.add_argument("--sample", type=float, default=5.0, metavar="S")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--idle",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds of sampling with no jobs after the stream",
    )
    parser.add_argument("--drain-timeout", type=float, default=600.0, metavar="S")
    parser.add_argument("--out", type=Path, metavar="FILE")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    progress = Progress(args.quiet)
    out: Path = args.out or default_out("soak")
    root = Path(tempfile.mkdtemp(prefix="amucrdt-soak-"))
    record_path = root / "ran.txt"
    cluster = make_cluster(root, args.nodes, args.slots, args.seed)
    failed = True
    try:
        progress.say(f"starting {args.nodes} nodes")
        cluster.start()
        cluster.wait_connected()
        samples, names = asyncio.run(_stream(cluster, args, record_path, progress))
        drained = _drain(record_path, names, args.drain_timeout, progress)
        idle = _idle(cluster, args, len(names), record_path, progress)
        peak = [
            proc_status_bytes(node.process.pid, "VmHWM")
            for node in cluster.nodes
            if node.process is not None
        ]
        failed = False
    except (TimeoutError, OSError) as exc:
        progress.say(f"soak failed: {exc}")
        return 2
    finally:
        progress.say("stopping nodes (they compact their store)")
        cluster.close()
        if failed:
            shutil.rmtree(root, ignore_errors=True)
    runs = Counter(name for name, _node, _attempt in read_record_file(record_path))
    duplicates = sum(1 for n in names if runs[n] > 1)
    lost = sum(1 for n in names if runs[n] == 0)
    compacted = [store_bytes(node.data_dir)["doc.snapshot"] for node in cluster.nodes]
    shutil.rmtree(root, ignore_errors=True)

    slopes = _slopes(samples, idle, args.nodes)
    report = {
        "benchmark": "soak",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "versions": versions(),
        "parameters": vars(args) | {"out": str(out)},
        "jobs_pushed": len(names),
        "drain_s": round(drained, 3),
        "duplicates": duplicates,
        "lost": lost,
        "peak_rss_bytes": peak,
        "doc_bytes_after_compaction": compacted,
        "slopes": slopes,
        "samples": samples,
        "idle_samples": idle,
    }
    write_json(out, report)
    rows = [
        [
            f"node{i}",
            str(slopes["rss_kib_per_min"][i]),
            str(slopes["rss_kib_per_min_second_half"][i]),
            str(slopes["rss_bytes_per_job"][i]),
            str(slopes["idle_rss_kib_per_min"][i]),
            str(slopes["store_bytes_per_job"][i]),
            f"{(peak[i] or 0) / 1048576:.1f}",
        ]
        for i in range(args.nodes)
    ]
    header = ["node", "RSS KiB/min", "2nd half", "RSS B/job", "idle KiB/min"]
    print(table(rows, [*header, "store B/job", "peak RSS MiB"]))
    print(
        f"{len(names)} jobs in {args.seconds:.0f}s; backlog grows "
        f"{slopes['backlog_jobs_per_min']} jobs/min; drained in {drained:.1f}s"
    )
    print(f"duplicates {duplicates}, lost {lost}")
    print(f"\nreport: {out}")
    return 1 if duplicates or lost else 0


if __name__ == "__main__":
    sys.exit(main())
