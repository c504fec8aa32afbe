"""Shared parts of the benchmarks: the machine, versions, figures, clusters.

The benchmark scripts in this directory import this module by name (the
script's own directory is first on ``sys.path`` when it runs), so it must
stay importable without the package being installed in a special way.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from amucrdt import __version__ as amucrdt_version
from amucrdt.client import Client
from amucrdt.testing import LocalCluster, LocalNode

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

#: Node options for benchmark clusters: a short heartbeat so that a dead peer
#: is noticed quickly, and a short start-up grace so runs do not idle.
HEARTBEAT = 0.2
PEER_TIMEOUT = 3.0
STARTUP_GRACE = 1.0

#: The job every benchmark runs: it records which node ran which attempt of
#: which job, one line each, appended with ``>>`` (atomic for short lines).
RECORD_COMMAND = 'echo "$AMUCRDT_JOB $AMUCRDT_NODE $AMUCRDT_ATTEMPT" >> {path}'


# Reporting -------------------------------------------------------------------


class Progress:
    """Progress lines on stderr, each stamped with the seconds since start."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.start = time.monotonic()
        self._last_update = 0.0
        self._tty = sys.stderr.isatty()
        self._open_line = False

    def say(self, text: str) -> None:
        """One line of progress."""
        if self.quiet:
            return
        if self._open_line:
            sys.stderr.write("\n")
            self._open_line = False
        sys.stderr.write(f"[{time.monotonic() - self.start:7.1f}s] {text}\n")
        sys.stderr.flush()

    def update(self, text: str) -> None:
        """A line that replaces the previous update, at most once a second."""
        now = time.monotonic()
        if self.quiet or now - self._last_update < 1.0:
            return
        self._last_update = now
        line = f"[{now - self.start:7.1f}s] {text}"
        if self._tty:
            sys.stderr.write("\r\x1b[K" + line)
            self._open_line = True
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def quantiles(values: Iterable[float], digits: int = 6) -> dict[str, Any]:
    """Count, mean, p50, p95, p99 and max of ``values`` (nearest rank).

    Every figure is None when there are no values.
    """
    ordered = sorted(values)
    if not ordered:
        return {k: None for k in ("count", "mean", "p50", "p95", "p99", "max")} | {
            "count": 0
        }

    def rank(q: float) -> float:
        index = max(0, math.ceil(q * len(ordered)) - 1)
        return round(ordered[index], digits)

    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), digits),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": round(ordered[-1], digits),
    }


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``ys`` over ``xs``; None with fewer than 2 points."""
    if len(xs) < 2 or len(xs) != len(ys):
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def ms(seconds: float | None) -> str:
    """Seconds shown as milliseconds for a table; "-" for no value."""
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def mib(size: float | None) -> str:
    return "-" if size is None else f"{size / 1048576:.1f} MiB"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A plain text table with columns padded to their widest cell."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def default_out(kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"{kind}-{stamp}.json"


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


# Machine and versions --------------------------------------------------------


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor() or None,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_bytes": memory,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def automerge_crate_version() -> str | None:
    """The automerge crate the binding was built from, read from Cargo.lock."""
    lock = REPO_DIR / "native" / "Cargo.lock"
    try:
        text = lock.read_text()
    except OSError:
        return None
    found = re.search(r'name = "automerge"\nversion = "([^"]+)"', text)
    return found.group(1) if found else None


def redis_server_version() -> str | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    found = re.search(r"v=(\S+)", out)
    return found.group(1) if found else out.strip() or None


def source_revision() -> dict[str, Any]:
    """The commit the package was run from, and whether its files differed."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(REPO_DIR), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "amucrdt", "native")
    return {
        "commit": git("rev-parse", "HEAD"),
        "package_modified": None if changed is None else bool(changed),
    }


def versions() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "amucrdt": amucrdt_version,
        "source": source_revision(),
        "automerge_crate": automerge_crate_version(),
        "websockets": _dist_version("websockets"),
        "orjson": _dist_version("orjson"),
        "redis_server": redis_server_version(),
        "rq": _dist_version("rq"),
        "redis_py": _dist_version("redis"),
    }


# Processes -------------------------------------------------------------------


def proc_status_bytes(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM) in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def store_bytes(data_dir: Path) -> dict[str, int]:
    """Sizes of a node's document files (snapshot and log)."""
    sizes = {}
    for name in ("doc.snapshot", "doc.log"):
        path = data_dir / name
        sizes[name] = path.stat().st_size if path.exists() else 0
    return sizes


# Clusters --------------------------------------------------------------------


@dataclass
class ProfiledNode(LocalNode):
    """A node process run under cProfile, which writes ``profile_path`` on exit.

    The node stops on SIGTERM by returning from its main function, so cProfile
    gets to write its file.
    """

    profile_path: Path | None = None

    def start(self) -> None:
        assert self.profile_path is not None
        self.log_path = self.data_dir.parent / f"{self.name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives with the process
        profiler = [sys.executable, "-m", "cProfile", "-o", str(self.profile_path)]
        self.process = subprocess.Popen(
            [*profiler, "-m", "amucrdt", "node", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **self.env},
        )


def seed_node_ids(root: Path, count: int, seed: int) -> list[str]:
    """Write node ids drawn from ``seed`` into the data directories to come.

    The winner rule hashes node ids, so fixing them makes the outcome of a
    given set of claims the same from run to run.
    """
    rng = random.Random(seed)
    ids = []
    for i in range(count):
        path = root / f"node{i}"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        node_id = f"{rng.getrandbits(128):032x}"
        record = {"node_id": node_id, "created": int(time.time())}
        (path / "node.json").write_text(json.dumps(record) + "\n")
        ids.append(node_id)
    return ids


def make_cluster(
    root: Path,
    nodes: int,
    slots: int,
    seed: int,
    topology: str = "mesh",
    profile_path: Path | None = None,
    heartbeat: float = HEARTBEAT,
) -> LocalCluster:
    """A cluster of benchmark nodes (not started); node0 profiled if asked."""
    seed_node_ids(root, nodes, seed)
    extra = [
        "--slots",
        str(slots),
        "--heartbeat",
        str(heartbeat),
        "--peer-timeout",
        str(PEER_TIMEOUT),
        "--startup-grace",
        str(STARTUP_GRACE),
        "--log-level",
        "warning",
    ]
    cluster = LocalCluster(root, nodes, topology=topology, extra=extra)
    if profile_path is not None:
        first = cluster.nodes[0]
        copied = {f.name: getattr(first, f.name) for f in fields(first) if f.init}
        cluster.nodes[0] = ProfiledNode(**copied, profile_path=profile_path)
    return cluster


def record_jobs(prefix: str, count: int, path: Path) -> list[dict[str, Any]]:
    """``count`` jobs named ``prefix-NNNNNN`` that run :data:`RECORD_COMMAND`."""
    command = RECORD_COMMAND.format(path=path)
    return [
        {"name": f"{prefix}-{i:06d}", "cmd": {"posix": command}} for i in range(count)
    ]


def read_record_file(path: Path) -> list[tuple[str, str, str]]:
    """The (job, node, attempt) lines the jobs appended to ``path``."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
    return out


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(
                chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b"")
            )
    except FileNotFoundError:
        return 0


class Controls:
    """One open control connection per node, for use inside one event loop."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.clients: list[Client] = []

    async def __aenter__(self) -> Controls:
        for node in self.cluster.nodes:
            client = Client(node.url, node.secret)
            await client.__aenter__()
            self.clients.append(client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients:
            await client.__aexit__(None, None, None)

    async def all(self, op: str, timeout: float = 60.0, **fields: Any) -> list[Any]:
        """Send ``op`` to every node at once; their results in node order."""
        async with asyncio.timeout(timeout):
            return list(
                await asyncio.gather(*(c.request(op, **fields) for c in self.clients))
            )

    async def heads(self, timeout: float = 60.0) -> list[list[str]]:
        return [s["node"]["heads"] for s in await self.all("status", timeout)]
