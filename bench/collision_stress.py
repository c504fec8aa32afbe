"""Collision stress: every node gets the same jobs at the same moment.

``python bench/collision_stress.py`` starts N real ``amucrdt node`` processes
on 127.0.0.1, waits until they are all connected, and pushes the same queue of
M jobs to every node at once (one control connection per node, opened
beforehand, all requests sent together). Each node then holds every job
before it has heard of the others' copies, so their claims collide as often as
they ever can. Each job appends "job node attempt" to a file, which is how
duplicates and lost jobs are counted, independently of the document.

Reported (on stdout, and in full as JSON):

- claim latency: from a node writing a claim to knowing whether it won, every
  claim of every node (the ``stats`` request);
- push-to-start latency: from the first push acknowledgement to the winner
  starting the command (``started`` of the results; one clock, one machine);
- throughput: jobs finished per second, first start to last end;
- collisions: jobs that drew more than one claim, and who won them;
- duplicates and lost jobs (exit status 1 unless both are 0);
- convergence: from the last job's end until every node reports the same
  heads;
- document bytes per job after compaction (the nodes compact on SIGTERM) and
  the peak RSS of each node;
- the same jobs through rq on a local redis-server, when installed, and a plain
  websocket round trip, the floor under any claim protocol.

Exit status: 0 when every run had no duplicate and no lost job, 1 when one
had, 2 when a run failed (a node died, a deadline passed).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import pstats
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rq_side
import ws_echo
from benchlib import (
    HEARTBEAT,
    PEER_TIMEOUT,
    STARTUP_GRACE,
    Controls,
    Progress,
    default_out,
    machine,
    make_cluster,
    mib,
    ms,
    proc_status_bytes,
    quantiles,
    read_record_file,
    record_jobs,
    store_bytes,
    table,
    versions,
    write_json,
)

from amucrdt.rule import winner
from amucrdt.state import split_key
from amucrdt.testing import LocalCluster

EXIT_OK, EXIT_BAD, EXIT_ERROR = 0, 1, 2

SWEEP_NODES = (2, 4, 8)
SWEEP_JOBS = (100, 1000, 10000)


class RunFailed(Exception):
    """A run could not finish (a node died, a deadline passed)."""


@dataclass(frozen=True)
class RunSpec:
    """The parameters of one collision run."""

    nodes: int
    jobs: int
    slots: int = 1
    seed: int = 1
    topology: str = "mesh"
    heartbeat: float = HEARTBEAT
    timeout: float | None = None

    @property
    def deadline(self) -> float:
        """Seconds the jobs may take before the run counts as failed."""
        if self.timeout is not None:
            return self.timeout
        # Generous: a loaded two-core machine runs a few jobs a second.
        return 120.0 + self.jobs * 0.5 * max(1.0, self.nodes / 4)


def run_once(
    spec: RunSpec,
    with_rq: bool,
    profile: Path | None,
    progress: Progress,
    keep: Path | None = None,
) -> dict[str, Any]:
    """One collision run; returns its figures (raises RunFailed)."""
    root = Path(tempfile.mkdtemp(prefix="amucrdt-bench-"))
    try:
        began = time.monotonic()
        result = _run_in(root, spec, profile, progress)
        result["wall_s"] = round(time.monotonic() - began, 3)
        if with_rq:
            began = time.monotonic()
            result["rq"] = _rq_run(root, spec, progress)
            result["rq"]["wall_s"] = round(time.monotonic() - began, 3)
            result["comparison"] = _compare(result, result["rq"])
        return result
    finally:
        if keep is not None:
            shutil.copytree(root, keep / root.name, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def _run_in(
    root: Path, spec: RunSpec, profile: Path | None, progress: Progress
) -> dict[str, Any]:
    nodes, jobs, slots, seed = spec.nodes, spec.jobs, spec.slots, spec.seed
    topology = spec.topology
    record_path = root / "ran.txt"
    rng = random.Random(seed)
    queue = {
        "name": f"stress-{seed}",
        "jobs": record_jobs(f"job{seed}", jobs, record_path),
    }
    cluster = make_cluster(
        root, nodes, slots, seed, topology, profile, heartbeat=spec.heartbeat
    )
    progress.say(f"starting {nodes} nodes ({topology}, {slots} slot(s) each)")
    try:
        cluster.start()
        cluster.wait_connected()
        progress.say("cluster connected")
        push_order = list(range(nodes))
        rng.shuffle(push_order)
        timings = asyncio.run(
            _drive(cluster, queue, push_order, record_path, progress, spec)
        )
        stats = [node.request("stats", timeout=120) for node in cluster.nodes]
        dump = cluster.nodes[0].request("dump", timeout=300)
        peak_rss = [proc_status_bytes(_pid(node), "VmHWM") for node in cluster.nodes]
    except BaseException:
        _close(cluster, progress)
        raise
    codes = _close(cluster, progress)
    if any(code != 0 for code in codes):
        raise RunFailed(f"node exit statuses {codes}; logs in {root}")
    sizes = [store_bytes(node.data_dir) for node in cluster.nodes]

    result = _figures(
        queue, record_path, timings, stats, dump, peak_rss, sizes, jobs, nodes
    )
    result["parameters"] = {
        "nodes": nodes,
        "jobs": jobs,
        "slots": slots,
        "seed": seed,
        "topology": topology,
        "heartbeat_s": spec.heartbeat,
        "peer_timeout_s": PEER_TIMEOUT,
        "startup_grace_s": STARTUP_GRACE,
        "profiled_node0": profile is not None,
        "push_order": push_order,
        "node_ids": _node_ids(cluster),
    }
    if profile is not None:
        result["profile"] = profile_top(profile)
    return result


def _pid(node: Any) -> int:
    assert node.process is not None
    return int(node.process.pid)


def _node_ids(cluster: LocalCluster) -> list[str]:
    from amucrdt.datadir import DataDir

    return [DataDir.open(node.data_dir).node_id for node in cluster.nodes]


def _close(cluster: LocalCluster, progress: Progress) -> list[int | None]:
    progress.say("stopping nodes (SIGTERM; they compact their store)")
    cluster.close()
    return [
        node.process.returncode if node.process is not None else None
        for node in cluster.nodes
    ]


async def _drive(
    cluster: LocalCluster,
    queue: dict[str, Any],
    push_order: list[int],
    record_path: Path,
    progress: Progress,
    spec: RunSpec,
) -> dict[str, Any]:
    """Push to every node at once, wait for the jobs, then for convergence."""
    jobs, nodes, timeout = spec.jobs, spec.nodes, spec.deadline
    async with Controls(cluster) as controls:
        sent: dict[int, float] = {}
        acked: dict[int, float] = {}

        async def push(index: int) -> None:
            sent[index] = time.time()
            await controls.clients[index].request("push_queue", queue=queue)
            acked[index] = time.time()

        progress.say(f"pushing {jobs} jobs to all {nodes} nodes at once")
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(push(i) for i in push_order))
        first_ack = min(acked.values())

        # Wait for every job's line in the record file (cheap, touches no
        # node), then for every node to have recorded its results. A job
        # still missing at the deadline is reported as lost, not waited for.
        deadline = time.monotonic() + timeout
        names = {job["name"] for job in queue["jobs"]}
        complete = True
        while True:
            ran = {name for name, _node, _attempt in read_record_file(record_path)}
            if names <= ran:
                break
            if time.monotonic() > deadline:
                progress.say(f"deadline: {len(names - ran)} jobs never ran")
                complete = False
                break
            _check_alive(cluster)
            progress.update(f"{len(ran & names)}/{jobs} jobs ran")
            await asyncio.sleep(0.05)
        all_ran = time.time()
        progress.say("waiting for every result to be recorded, then convergence")
        while complete:
            stats = await controls.all("stats", timeout)
            if sum(s["finished"] for s in stats) >= jobs:
                break
            if time.monotonic() > deadline:
                complete = False
            await asyncio.sleep(0.05)

        # Convergence: poll every node's heads together until they agree.
        rounds = 0
        converged = None
        limit = deadline if complete else time.monotonic() + 30.0
        while True:
            polled = time.time()
            heads = await controls.heads(timeout)
            answered = time.time()
            rounds += 1
            if all(h == heads[0] for h in heads):
                converged = (polled, answered)
                break
            if time.monotonic() > limit:
                progress.say("replicas did not converge before the deadline")
                break
            await asyncio.sleep(0.01)
    return {
        "sent": [sent[i] for i in range(nodes)],
        "acked": [acked[i] for i in range(nodes)],
        "first_ack": first_ack,
        "all_ran": all_ran,
        "complete": complete,
        "converged": converged,
        "convergence_poll_rounds": rounds,
    }


def _check_alive(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        if node.process is not None and node.process.poll() is not None:
            raise RunFailed(
                f"node {node.name} exited with {node.process.returncode}: "
                f"{node.read_log()[-1500:]}"
            )


def _figures(
    queue: dict[str, Any],
    record_path: Path,
    timings: dict[str, Any],
    stats: list[dict[str, Any]],
    dump: dict[str, Any],
    peak_rss: list[int | None],
    sizes: list[dict[str, int]],
    jobs: int,
    nodes: int,
) -> dict[str, Any]:
    document = dump["document"]
    names = {job["name"] for job in queue["jobs"]}
    job_ids = {f"{queue['name']}/{name}" for name in names}

    # Who ran what, from the jobs' own record file.
    lines = read_record_file(record_path)
    runs = Counter(name for name, _node, _attempt in lines)
    duplicates = sorted(n for n in names if runs[n] > 1)
    lost = sorted(n for n in names if runs[n] == 0)

    # Claims per (job, attempt), and the runner of each attempt.
    claims: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for key, record in document["claims"].items():
        attempt, node_id, job = split_key(key)
        claims.setdefault((job, attempt), {})[node_id] = record
    runners: dict[tuple[str, int], list[str]] = {}
    starts, ends = [], []
    for key, record in document["results"].items():
        attempt, node_id, job = split_key(key)
        if job not in job_ids:
            continue
        runners.setdefault((job, attempt), []).append(node_id)
        if isinstance(record.get("started"), int | float):
            starts.append(float(record["started"]))
        if isinstance(record.get("ended"), int | float):
            ends.append(float(record["ended"]))
    collided = {k: v for k, v in claims.items() if len(v) > 1}
    by_size = Counter(len(v) for v in collided.values())
    won_by_rule = 0
    wins: Counter[str] = Counter()
    for (job, attempt), by_node in collided.items():
        live = [n for n, c in by_node.items() if not c.get("withdrawn")]
        ran = runners.get((job, attempt), [])
        wins.update(ran)
        if live and ran == [winner(job, attempt, live)]:
            won_by_rule += 1

    settle = [x for s in stats for x in s["settle_latency"]]
    first_ack = timings["first_ack"]
    converged = timings["converged"]
    last_end = max(ends) if ends else None
    span = (last_end - min(starts)) if starts and last_end is not None else None
    snapshots = [s["doc.snapshot"] for s in sizes]
    return {
        "claim_latency": quantiles(settle),
        "push_to_start": quantiles(s - first_ack for s in starts),
        "push": {
            "release_spread_s": round(max(timings["sent"]) - min(timings["sent"]), 6),
            "ack_spread_s": round(max(timings["acked"]) - min(timings["acked"]), 6),
            "ack_after_send_s": [
                round(a - s, 6)
                for s, a in zip(timings["sent"], timings["acked"], strict=True)
            ],
        },
        "throughput_jobs_per_s": (
            round(len(ends) / span, 3) if span and span > 0 else None
        ),
        "first_start_to_last_end_s": None if span is None else round(span, 6),
        "collisions": {
            "jobs": len(collided),
            "share": round(len(collided) / jobs, 6),
            "by_claimants": {str(k): v for k, v in sorted(by_size.items())},
            "won_by_rule": won_by_rule,
            "wins_by_node": dict(wins),
            "withdrawn_claims": sum(
                1 for v in claims.values() for c in v.values() if c.get("withdrawn")
            ),
        },
        "claims_total": sum(len(v) for v in claims.values()),
        "attempts_above_1": sum(1 for (_job, attempt) in runners if attempt > 1),
        "duplicates": len(duplicates),
        "lost": len(lost),
        "duplicate_jobs": duplicates[:20],
        "lost_jobs": lost[:20],
        "runs_per_node": dict(Counter(node for _n, node, _a in lines)),
        "finished_before_deadline": timings["complete"],
        "convergence_s": (
            None
            if last_end is None or converged is None
            else round(max(0.0, converged[1] - last_end), 6)
        ),
        "convergence_poll_resolution_s": (
            None if converged is None else round(converged[1] - converged[0], 6)
        ),
        "doc_bytes_after_compaction": snapshots,
        "doc_bytes_per_job": round(max(snapshots) / jobs, 1),
        "log_bytes_after_compaction": [s["doc.log"] for s in sizes],
        "peak_rss_bytes": peak_rss,
        "peak_rss_max_bytes": max((r for r in peak_rss if r), default=None),
        "node_stats": [
            {k: v for k, v in s.items() if k != "settle_latency"} for s in stats
        ],
    }


def _rq_run(root: Path, spec: RunSpec, progress: Progress) -> dict[str, Any]:
    record_path = root / "rq-ran.txt"
    job_list = record_jobs(f"job{spec.seed}", spec.jobs, record_path)
    workers = spec.nodes * spec.slots
    return rq_side.run(
        root / "rq", job_list, workers, record_path, progress, spec.deadline
    )


def _compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return None if not a or not b else round(a / b, 3)

    return {
        "push_to_start_p50_ratio": ratio(
            ours["push_to_start"]["p50"], theirs["push_to_start"]["p50"]
        ),
        "push_to_start_p99_ratio": ratio(
            ours["push_to_start"]["p99"], theirs["push_to_start"]["p99"]
        ),
        "throughput_ratio": ratio(
            ours["throughput_jobs_per_s"], theirs["throughput_jobs_per_s"]
        ),
    }


#: Calls of the claim path whose cost per call the profile summary shows.
PROFILE_FOCUS = (
    "fsync",
    "(flush)",
    "(append)",
    "'diff' of",
    "'receive_sync_message' of",
    "'generate_sync_message' of",
    "'save_after' of",
    "'commit' of",
    "'heads' of",
    "'materialize' of",
    "'put' of",
    "refresh",
    "note_patches",
    "_after",
    "_open_jobs",
)


def profile_top(path: Path, count: int = 20) -> dict[str, Any]:
    """Where a profiled node's time went, from its cProfile output.

    ``top_cumulative`` keeps the functions of amucrdt and of its Automerge
    binding (the event loop's own frames nest and would double count);
    ``top_own`` ranks every function by the time spent in its own body;
    ``focus`` gives calls and milliseconds per call of the claim path's
    main costs.
    """
    stats = pstats.Stats(str(path))
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]

    def label(filename: str, line: int, name: str) -> str:
        return f"{Path(filename).name}:{line}({name})" if line else name

    def ours(filename: str, name: str) -> bool:
        return (
            "/amucrdt/" in filename or "amucrdt._automerge" in name or ("fsync" in name)
        )

    def rows(column: int, keep: Any) -> list[dict[str, Any]]:
        ranked = sorted(entries.items(), key=lambda item: item[1][column], reverse=True)
        out = []
        for (filename, line, name), (_cc, calls, own, cumulative, _) in ranked:
            if not keep(filename, name):
                continue
            out.append(
                {
                    "function": label(filename, line, name),
                    "calls": calls,
                    "own_s": round(own, 4),
                    "cumulative_s": round(cumulative, 4),
                }
            )
            if len(out) >= count:
                break
        return out

    focus = []
    for (filename, line, name), (_cc, calls, own, cumulative, _) in entries.items():
        text = label(filename, line, name)
        if ours(filename, name) and any(key in text for key in PROFILE_FOCUS):
            focus.append(
                {
                    "function": text,
                    "calls": calls,
                    "own_s": round(own, 4),
                    "cumulative_s": round(cumulative, 4),
                    "ms_per_call": round(1000 * cumulative / calls, 3)
                    if calls
                    else None,
                }
            )
    focus.sort(key=lambda row: row["cumulative_s"], reverse=True)
    return {
        "file": str(path),
        "total_s": round(stats.total_tt, 4),  # type: ignore[attr-defined]
        "top_cumulative": rows(3, ours),
        "top_own": rows(2, lambda _f, _n: True),
        "focus": focus,
    }


# Report ----------------------------------------------------------------------


def _q(figures: dict[str, Any], *names: str) -> str:
    return " / ".join(ms(figures.get(name)) for name in names)


def print_run(result: dict[str, Any], round_trip: dict[str, Any]) -> None:
    p = result["parameters"]
    print(
        f"\n{p['nodes']} nodes ({p['topology']}, {p['slots']} slot(s) each), "
        f"{p['jobs']} jobs pushed to every node at once, seed {p['seed']}"
        + (" [node0 profiled: its figures are slowed]" if p["profiled_node0"] else "")
    )
    claim, start = result["claim_latency"], result["push_to_start"]
    col = result["collisions"]
    rq = result.get("rq")
    rows = [
        ["claim latency p50/p95/p99/max", _q(claim, "p50", "p95", "p99", "max"), ""],
        [
            "push-to-start p50/p99",
            _q(start, "p50", "p99"),
            _q(rq["push_to_start"], "p50", "p99") if rq else "",
        ],
        [
            "throughput",
            f"{result['throughput_jobs_per_s']} jobs/s",
            f"{rq['throughput_jobs_per_s']} jobs/s" if rq else "",
        ],
        [
            "collisions",
            f"{col['jobs']} jobs ({col['share']:.1%}), by claimants "
            f"{col['by_claimants'] or '{}'}, {col['won_by_rule']} won by the rule",
            "",
        ],
        ["convergence", ms(result["convergence_s"]), ""],
        ["document bytes per job", f"{result['doc_bytes_per_job']:.0f} B", ""],
        ["peak RSS (largest node)", mib(result["peak_rss_max_bytes"]), ""],
        ["duplicates / lost", f"{result['duplicates']} / {result['lost']}",
         f"{rq['duplicates']} / {rq['lost']}" if rq else ""],
    ]  # fmt: skip
    if round_trip.get("p50"):
        rows.append(
            [
                "claim latency / ws round trip",
                f"p50 x{claim['p50'] / round_trip['p50']:.0f}, "
                f"p99 x{claim['p99'] / round_trip['p99']:.0f}"
                if claim["p50"]
                else "-",
                "",
            ]
        )
    header = ["figure", "amucrdt", "rq" if rq else ""]
    print(table(rows, header))
    if rq:
        c = result["comparison"]
        print(
            f"amucrdt / rq: push-to-start p50 x{c['push_to_start_p50_ratio']}, "
            f"p99 x{c['push_to_start_p99_ratio']}; "
            f"throughput x{c['throughput_ratio']} ({rq['workers']} rq workers)"
        )
    elif "rq_skipped" in result:
        print(f"rq: skipped: {result['rq_skipped']}")
    bad = result["duplicates"] or result["lost"]
    mark = "!!!" if bad else "==="
    verdict = "FAILED" if bad else "ok"
    print(
        f"{mark} DUPLICATES {result['duplicates']}, LOST {result['lost']}: "
        f"{verdict} {mark}"
    )
    if bad:
        print(f"duplicated: {result['duplicate_jobs']}; lost: {result['lost_jobs']}")
    if "profile" in result:
        print_profile(result["profile"])


def print_profile(profile: dict[str, Any], count: int = 15) -> None:
    header = ["function", "calls", "own s", "cumulative s"]
    sections = (
        ("amucrdt and its binding, by cumulative time", "top_cumulative"),
        ("everything, by own time", "top_own"),
    )
    for title, key in sections:
        print(f"\nprofile of node0 ({profile['file']}): {title}")
        rows = [
            [
                r["function"][:72],
                str(r["calls"]),
                f"{r['own_s']:.3f}",
                f"{r['cumulative_s']:.3f}",
            ]
            for r in profile[key][:count]
        ]
        print(table(rows, header))
    print("\nclaim path costs per call:")
    rows = [
        [r["function"][:72], str(r["calls"]), f"{r['ms_per_call']:.3f}"]
        for r in profile["focus"]
    ]
    print(table(rows, ["function", "calls", "ms per call"]))


#: Figures followed across a sweep: (label, path into a run's result).
SWEEP_FIGURES = (
    ("claim p50", ("claim_latency", "p50")),
    ("claim p99", ("claim_latency", "p99")),
    ("start p50", ("push_to_start", "p50")),
    ("start p99", ("push_to_start", "p99")),
    ("jobs/s", ("throughput_jobs_per_s",)),
    ("collided", ("collisions", "share")),
    ("converge", ("convergence_s",)),
    ("B/job", ("doc_bytes_per_job",)),
    ("peak RSS", ("peak_rss_max_bytes",)),
)


def _get(result: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = result
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def growth(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """For each figure, the exponents a, b of figure ~ nodes^a * jobs^b.

    Each exponent is the mean slope of log(figure) over log(nodes) (at a fixed
    job count), or over log(jobs) (at a fixed node count).
    """

    def exponent(axis: str, other: str, path: tuple[str, ...]) -> float | None:
        groups: dict[int, list[tuple[float, float]]] = {}
        for r in results:
            value = _get(r, path)
            if isinstance(value, int | float) and value > 0:
                p = r["parameters"]
                groups.setdefault(p[other], []).append(
                    (math.log(p[axis]), math.log(value))
                )
        slopes = []
        for points in groups.values():
            xs = [x for x, _ in points]
            if len(set(xs)) < 2:
                continue
            mx, my = sum(xs) / len(xs), sum(y for _, y in points) / len(points)
            var = sum((x - mx) ** 2 for x in xs)
            slopes.append(sum((x - mx) * (y - my) for x, y in points) / var)
        return round(sum(slopes) / len(slopes), 3) if slopes else None

    return {
        label: {
            "nodes_exponent": exponent("nodes", "jobs", path),
            "jobs_exponent": exponent("jobs", "nodes", path),
        }
        for label, path in SWEEP_FIGURES
    }


def print_sweep(results: list[dict[str, Any]], grow: dict[str, Any]) -> None:
    def cell(label: str, value: Any) -> str:
        if value is None:
            return "-"
        if label.startswith(("claim", "start", "converge")):
            return f"{value * 1000:.0f}ms"
        if label == "collided":
            return f"{value:.1%}"
        if label == "peak RSS":
            return f"{value / 1048576:.0f}MiB"
        return f"{value:.0f}"

    labels = [label for label, _ in SWEEP_FIGURES]
    rows = []
    for r in results:
        p = r["parameters"]
        rows.append(
            [str(p["nodes"]), str(p["jobs"])]
            + [cell(label, _get(r, path)) for label, path in SWEEP_FIGURES]
            + [f"{r['duplicates']}/{r['lost']}"]
        )
    print("\nsweep:")
    print(table(rows, ["nodes", "jobs", *labels, "dup/lost"]))
    print("\nhow each figure grows (figure ~ nodes^a x jobs^b):")
    rows = [
        [label, str(g["nodes_exponent"]), str(g["jobs_exponent"])]
        for label, g in grow.items()
    ]
    print(table(rows, ["figure", "a (nodes)", "b (jobs)"]))


# Command line ----------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Claim collisions, latency, duplicates and throughput of a "
        "local amucrdt cluster, side by side with rq when redis-server is there.",
    )
    parser.add_argument("--nodes", type=int, default=3, metavar="N")
    parser.add_argument("--jobs", type=int, default=1000, metavar="M")
    parser.add_argument(
        "--slots",
        type=int,
        default=1,
        metavar="S",
        help="job slots per node; rq gets N x S workers",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        metavar="X",
        help="fixes node ids, job names and push order",
    )
    parser.add_argument("--topology", choices=["mesh", "chain"], default="mesh")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="JSON report (default bench/results/collision-TIME.json)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="run every N in --sweep-nodes with every M in --sweep-jobs",
    )
    parser.add_argument(
        "--sweep-nodes", type=_int_list, default=list(SWEEP_NODES), metavar="LIST"
    )
    parser.add_argument(
        "--sweep-jobs", type=_int_list, default=list(SWEEP_JOBS), metavar="LIST"
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=HEARTBEAT,
        metavar="S",
        help=f"heartbeat interval of the nodes (default {HEARTBEAT})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="seconds a run's jobs may take (default grows with the job count)",
    )
    parser.add_argument("--no-redis", action="store_true", help="skip the rq run")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run node0 under cProfile and print where its time went",
    )
    parser.add_argument(
        "--round-trips",
        type=int,
        default=2000,
        metavar="K",
        help="websocket echo round trips to measure",
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="copy data directories and logs here"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.jobs < 1 or args.slots < 1:
        parser.error("--nodes, --jobs and --slots must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress(args.quiet)
    out: Path = args.out or default_out("collision")
    skipped = None if args.no_redis else rq_side.unavailable()
    with_rq = not args.no_redis and skipped is None
    if skipped:
        progress.say(f"rq run skipped: {skipped}")

    progress.say(f"measuring {args.round_trips} websocket round trips")
    round_trip = quantiles(ws_echo.measure(args.round_trips))
    plan = (
        [(n, m) for n in args.sweep_nodes for m in args.sweep_jobs]
        if args.sweep
        else [(args.nodes, args.jobs)]
    )
    report: dict[str, Any] = {
        "benchmark": "collision_stress",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [
            Path(sys.argv[0]).name,
            *(argv if argv is not None else sys.argv[1:]),
        ],
        "machine": machine(),
        "versions": versions(),
        "parameters": {
            "plan": plan,
            "slots": args.slots,
            "seed": args.seed,
            "topology": args.topology,
            "heartbeat_s": args.heartbeat,
            "rq": with_rq,
            "profile": args.profile,
        },
        "ws_round_trip": round_trip | {"message_bytes": ws_echo.MESSAGE_BYTES},
        "runs": [],
    }
    if skipped:
        report["rq_skipped"] = skipped
    status = EXIT_OK
    for nodes, jobs in plan:
        profile = None
        if args.profile:
            profile = out.with_name(out.stem + f"-node0-{nodes}x{jobs}.prof")
            profile.parent.mkdir(parents=True, exist_ok=True)
        spec = RunSpec(
            nodes, jobs, args.slots, args.seed, args.topology, args.heartbeat,
            args.timeout,
        )  # fmt: skip
        try:
            result = run_once(spec, with_rq, profile, progress, args.keep)
        except (RunFailed, TimeoutError) as exc:
            progress.say(f"run {nodes} nodes x {jobs} jobs failed: {exc}")
            report["runs"].append({"parameters": {"nodes": nodes, "jobs": jobs},
                                   "error": str(exc)})  # fmt: skip
            status = EXIT_ERROR
            continue
        if result["claim_latency"]["p50"] and round_trip["p50"]:
            result["claim_latency_over_round_trip"] = {
                "p50": round(result["claim_latency"]["p50"] / round_trip["p50"], 1),
                "p99": round(result["claim_latency"]["p99"] / round_trip["p99"], 1),
            }
        if skipped:
            result["rq_skipped"] = skipped
        report["runs"].append(result)
        print_run(result, round_trip)
        if (result["duplicates"] or result["lost"]) and status == EXIT_OK:
            status = EXIT_BAD
        write_json(out, report)
    print(
        f"\nwebsocket round trip ({ws_echo.MESSAGE_BYTES} B): "
        f"p50 {ms(round_trip['p50'])}, p99 {ms(round_trip['p99'])}"
    )
    if args.sweep:
        good = [r for r in report["runs"] if "error" not in r]
        report["growth"] = growth(good)
        print_sweep(good, report["growth"])
    report["exit_status"] = status
    write_json(out, report)
    print(f"\nreport: {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
