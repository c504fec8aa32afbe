"""``amucrdt demo``: three real nodes on 127.0.0.1 share out a real workload.

The demo starts three ``amucrdt node`` processes in a temporary directory,
pushes the checksum queue (:mod:`amucrdt.checksums`) over this Python's own
standard library sources to one of them, shows progress while the nodes share
the jobs out, and then checks the run from the outside:

- every job has exactly one result record in the merged document, and the
  run log the jobs append to names every job exactly once;
- every output matches a sequential run of the same work done in-process;
- all three replicas end with the same document heads.

It prints a verdict and exits 0 only when all of that holds.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from amucrdt.checksums import (
    DEFAULT_LIMIT,
    find_corpus,
    make_queue,
    queue_toml,
    stdlib_dir,
    verify,
)
from amucrdt.datadir import DataDir
from amucrdt.errors import AmucrdtError
from amucrdt.formats import load_queue
from amucrdt.state import DONE, job_id
from amucrdt.testing import LocalCluster, LocalNode

#: Nodes the demo starts.
NODES = 3

#: Seconds the queue may go without a single job finishing before the demo
#: gives up. Generous: the machines that run the demo may be small and busy.
STALL_TIMEOUT = 180.0

#: Seconds to wait for nodes to start, connect and converge.
SETUP_TIMEOUT = 120.0

#: Rows of the sample table.
SAMPLE_ROWS = 5

# How often the demo asks a node for the queue's progress.
_POLL_SECONDS = 0.25


@dataclass
class _Progress:
    """Writes the progress line: rewritten in place on a terminal, else plain
    lines at most once a second."""

    stream: TextIO
    tty: bool
    last: str = ""
    printed: str = ""
    printed_at: float = 0.0

    def show(self, line: str) -> None:
        if line == self.last:
            return
        self.last = line
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self.printed_at >= 1.0:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.printed, self.printed_at = line, now

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
        elif self.last != self.printed:
            # The once-a-second limit may have held the final count back.
            self.stream.write(self.last + "\n")
        self.stream.flush()


@dataclass
class _Checks:
    """What the demo found; each list holds one line per problem."""

    runs: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not (self.runs or self.results or self.replicas)


def run_demo(keep: bool = False, jobs: int | None = None) -> int:
    """Run the demo; returns the process exit status (0 when every check holds).

    Args:
        keep: leave the temporary directory (node logs, data, outputs) in place.
        jobs: how many files of the standard library to hash and compress;
            :data:`~amucrdt.checksums.DEFAULT_LIMIT` when None.

    Raises:
        AmucrdtError: the corpus or a tool is missing, or the nodes cannot
            be started; the message says which.
        TimeoutError: the nodes stopped making progress.
    """
    if jobs is not None and jobs < 1:
        raise AmucrdtError(f"--jobs {jobs}: the demo needs at least 1 job")
    limit = DEFAULT_LIMIT if jobs is None else jobs
    root = stdlib_dir()
    corpus = find_corpus(root, limit)
    work = Path(tempfile.mkdtemp(prefix="amucrdt-demo-"))
    cluster: LocalCluster | None = None
    try:
        out = work / "out"
        out.mkdir()
        spec = make_queue(corpus, out)
        queue_file = work / "checksums.toml"
        queue_file.write_text(queue_toml(spec, root, out), encoding="utf-8")
        # Read back through the parser, as `amucrdt push queue` would.
        spec = load_queue(str(queue_file))

        print(f"amucrdt demo: {NODES} nodes on 127.0.0.1 share one queue")
        print(f"  corpus : {len(corpus)} .py files of {root}")
        print("  work   : sha256 and gzip of each file, one shell command per job")
        print(f"  folder : {work}")
        cluster = LocalCluster(work, NODES)
        _start(cluster, keep)
        names: dict[str, str] = {}  # node id -> node0, node1, ...
        for node in cluster.nodes:
            node_id = DataDir.open(node.data_dir).node_id
            names[node_id] = node.name
            print(f"  {node.name}  : {node_id[:12]} at {node.url}")

        first = cluster.nodes[0]
        started = time.monotonic()
        pushed = first.request("push_queue", queue=spec.to_json())
        print(
            f"pushed queue {pushed['queue']} ({pushed['jobs']} jobs) to "
            f"{first.name}; the nodes share it out"
        )
        progress = _Progress(sys.stdout, sys.stdout.isatty())
        status = _wait_finished(first, spec.name, progress.show)
        progress.end()
        elapsed = time.monotonic() - started
        print(f"finished in {elapsed:.1f}s")

        checks = _Checks()
        try:
            cluster.wait_converged(SETUP_TIMEOUT)
        except TimeoutError as exc:
            checks.replicas.append(str(exc))
        rows = [j for j in status["jobs"] if j["queue"] == spec.name]
        _print_placement(rows, names)
        expected = {job_id(spec.name, job.name) for job in spec.jobs}
        _check_document(first.request("dump"), spec.name, expected, rows, checks)
        verdict = verify(corpus, out)
        checks.runs += verdict.run_problems(corpus)
        checks.results += verdict.mismatches
        return _print_verdict(checks, len(corpus), verdict.checked)
    finally:
        if cluster is not None:
            cluster.close()
        if keep:
            print(f"kept {work} (node logs node*.log, data node*/, outputs out/)")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _start(cluster: LocalCluster, keep: bool) -> None:
    """Start the nodes and wait until each has the others as peers.

    Raises:
        AmucrdtError: in one line, naming the node and where its log is.
    """
    try:
        cluster.start(SETUP_TIMEOUT)
        cluster.wait_connected(SETUP_TIMEOUT)
    except (AmucrdtError, TimeoutError) as exc:
        # The node's own message may carry its whole log; keep the first line.
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = f"logs in {cluster.root}" if keep else "rerun with --keep for the logs"
        raise AmucrdtError(f"the demo nodes did not start: {first}; {where}") from exc


def _wait_finished(
    node: LocalNode, queue: str, show: Callable[[str], None]
) -> dict[str, Any]:
    """Poll ``node`` until every job of ``queue`` is done or failed.

    Raises:
        TimeoutError: no job finished for :data:`STALL_TIMEOUT` seconds.
    """
    finished_before = -1
    progress_at = time.monotonic()
    while True:
        status: dict[str, Any] = node.request("status")
        totals = status["queues"].get(queue)
        if totals is None:
            line = f"{queue}: waiting for the queue to appear"
            finished = 0
        else:
            finished = totals["done"] + totals["failed"]
            line = (
                f"{queue}: {finished}/{totals['total']} finished "
                f"({totals['done']} done, {totals['failed']} failed, "
                f"{totals['running']} running, {totals['claimed']} claimed, "
                f"{totals['pending']} pending)"
            )
        show(line)
        if totals is not None and finished == totals["total"]:
            return status
        now = time.monotonic()
        if finished != finished_before:
            finished_before, progress_at = finished, now
        elif now - progress_at > STALL_TIMEOUT:
            raise TimeoutError(
                f"no job of queue {queue} finished for {STALL_TIMEOUT:g}s; "
                "run the demo with --keep and read the node logs"
            )
        time.sleep(_POLL_SECONDS)


def _print_placement(rows: list[dict[str, Any]], names: dict[str, str]) -> None:
    counts = Counter(names.get(row["node"] or "", "?") for row in rows)
    print("\nwhere the jobs ran:")
    for name in sorted(set(names.values())):
        print(f"  {name}  {counts.get(name, 0):4d} jobs")
    if counts.get("?"):
        print(f"  ?      {counts['?']:4d} jobs (no node recorded)")

    step = max(1, len(rows) // SAMPLE_ROWS)
    sample = rows[::step][:SAMPLE_ROWS]
    width = max(len("JOB"), *(len(row["name"]) for row in sample))
    print("\nsample:")
    print(f"  {'JOB'.ljust(width)}  NODE   STATE  EXIT  DURATION")
    for row in sample:
        duration = "" if row["duration"] is None else f"{row['duration']:.2f}s"
        exit_code = "" if row["exit_code"] is None else str(row["exit_code"])
        node = names.get(row["node"] or "", "?")
        print(
            f"  {row['name'].ljust(width)}  {node:5}  {row['state']:5}  "
            f"{exit_code:4}  {duration}"
        )


def _check_document(
    dump: dict[str, Any],
    queue: str,
    expected: set[str],
    rows: list[dict[str, Any]],
    checks: _Checks,
) -> None:
    """The status lists the ``expected`` job ids, each with exactly one result
    record in the document, and each done."""
    missing = {job_id(queue, row["name"]) for row in rows} ^ expected
    for job in sorted(missing):
        checks.runs.append(f"{job}: in the queue pushed or in the status, not both")
    records: Counter[str] = Counter()
    for key in dump["document"].get("results", {}):
        _attempt, _node, job = key.split(":", 2)
        records[job] += 1
    for row in rows:
        count = records.get(job_id(queue, row["name"]), 0)
        if count != 1:
            checks.runs.append(f"{row['name']}: {count} result records")
        if row["state"] != DONE:
            reason = row["error"] or f"exit code {row['exit_code']}"
            checks.results.append(f"{row['name']}: {row['state']} ({reason})")


def _print_verdict(checks: _Checks, jobs: int, checked: int) -> int:
    print("\nchecks:")
    _print_check("every job ran exactly once (document and run log)", checks.runs)
    _print_check(
        f"every result matches a sequential run ({checked} files)", checks.results
    )
    _print_check(f"all {NODES} replicas hold the same document", checks.replicas)
    if checks.ok():
        print(
            f"PASS: {jobs} jobs ran exactly once across {NODES} nodes and every "
            "result matches a sequential run"
        )
        return 0
    print("FAIL: see the checks above; run with --keep to read the node logs")
    return 1


def _print_check(what: str, problems: list[str]) -> None:
    print(f"  {'ok  ' if not problems else 'FAIL'}  {what}")
    for line in problems[:10]:
        print(f"          {line}")
    if len(problems) > 10:
        print(f"          ... and {len(problems) - 10} more")


__all__ = ["run_demo"]
