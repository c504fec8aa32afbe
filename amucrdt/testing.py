"""Real node processes on 127.0.0.1, for tests, the demo and the benchmarks.

A :class:`LocalCluster` starts ``amucrdt node`` subprocesses, each with its own
data directory and port and one shared secret, and talks to them through the
real control connection. Waiting is always on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from amucrdt.client import Client
from amucrdt.datadir import DataDir
from amucrdt.errors import AmucrdtError

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """Poll ``condition`` until it returns a true value; return that value.

    Raises:
        TimeoutError: naming ``what`` when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class TlsFiles:
    """A certificate, its key, and the CA file peers and clients verify with."""

    cert: Path
    key: Path
    ca: Path

    def args(self) -> list[str]:
        """The ``amucrdt node`` options that use these files."""
        return [
            "--tls-cert",
            str(self.cert),
            "--tls-key",
            str(self.key),
            "--tls-ca",
            str(self.ca),
        ]


@dataclass
class LocalNode:
    """One node process of a :class:`LocalCluster`.

    Attributes:
        env: variables added to the node's environment (and so its jobs').
        tls_ca: set when the node serves wss://; clients verify it with this.
        orphans: process groups of jobs left running by
            :meth:`kill_node_only`, stopped by :meth:`reap_orphans`.
    """

    name: str
    data_dir: Path
    port: int
    args: list[str]
    secret: bytes
    env: dict[str, str] = field(default_factory=dict)
    tls_ca: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    orphans: set[int] = field(default_factory=set)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        scheme = "wss" if self.tls_ca is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def node_id(self) -> str:
        return DataDir.open(self.data_dir).node_id

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process (again, after a stop or a kill)."""
        self.log_path = self.data_dir.parent / f"{self.name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amucrdt", "node", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **self.env},
        )

    def request(self, op: str, timeout: float = 30.0, **fields: Any) -> Any:
        """One control request to this node."""

        async def go() -> Any:
            client = Client(self.url, self.secret, self.tls_ca)
            async with asyncio.timeout(timeout), client as c:
                return await c.request(op, **fields)

        return asyncio.run(go())

    def try_request(self, op: str, **fields: Any) -> Any:
        """Like :meth:`request`, None when the node cannot be reached."""
        try:
            return self.request(op, **fields)
        except (AmucrdtError, OSError, TimeoutError):
            return None

    def status(self) -> dict[str, Any]:
        """The node's ``status`` reply."""
        result: dict[str, Any] = self.request("status")
        return result

    def wait_up(self, timeout: float = 60.0) -> None:
        """Wait until the node answers a status request."""

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AmucrdtError(
                    f"node {self.name} exited with {self.process.returncode}; "
                    f"log: {self.read_log()[-2000:]}"
                )
            return self.try_request("status") is not None

        wait_for(up, timeout, f"node {self.name} to answer")

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0, sig: int | None = None) -> int:
        """Send ``sig`` (SIGTERM) to the node, wait for it; its exit status."""
        assert self.process is not None
        self.signal(signal.SIGTERM if sig is None else sig)
        code = self.process.wait(timeout)
        self._close_log()
        return code

    def job_groups(self) -> set[int]:
        """Process groups of the jobs the node runs now.

        The runner starts each job as the leader of a session of its own, so
        a job is a child of the node whose process group id is its pid.
        """
        if self.process is None:
            return set()
        return set(_children(self.process.pid))

    def kill(self) -> None:
        """SIGKILL the node and every job it runs, with their processes."""
        assert self.process is not None
        if self.process.poll() is None:
            # Stopped first, so it cannot start a job between the look at its
            # children and the kill.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGSTOP)
            for group in self.job_groups():
                _kill_group(group)
            _kill_group(self.process.pid)
        self.process.wait(30)
        self._close_log()

    def kill_node_only(self) -> None:
        """SIGKILL the node process alone; its jobs' process groups live on.

        The jobs' groups are kept in :attr:`orphans` for :meth:`reap_orphans`.
        """
        assert self.process is not None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGSTOP)
            self.orphans |= self.job_groups()
            self.process.kill()
        self.process.wait(30)
        self._close_log()

    def reap_orphans(self) -> None:
        """SIGKILL the job groups left behind by :meth:`kill_node_only`."""
        for group in self.orphans:
            _kill_group(group)
        self.orphans.clear()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def read_log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


class LocalCluster:
    """Several node processes on 127.0.0.1 sharing one secret.

    Args:
        root: a directory for the data directories and logs.
        size: number of nodes.
        topology: "chain" (each node is given the previous one as --peer),
            "mesh" (each node is given all others) or "none" (no --peer).
        extra: arguments added to every node's command line.
        secret: the cluster secret (random when not given).
        env: variables added to every node's environment.
        tls: serve wss:// with these files, and dial peers over wss://.
    """

    def __init__(
        self,
        root: Path,
        size: int,
        topology: str = "chain",
        extra: list[str] | None = None,
        secret: bytes | None = None,
        env: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        if topology not in ("chain", "mesh", "none"):
            raise ValueError(f"unknown topology {topology!r}")
        self.root = root
        self.secret = secret or os.urandom(32)
        self.extra = list(extra or [])
        self.env = dict(env or {})
        self.tls = tls
        ports = [free_port() for _ in range(size)]
        scheme = "wss" if tls else "ws"
        self.nodes: list[LocalNode] = []
        for i, port in enumerate(ports):
            if topology == "chain":
                peers = [f"{scheme}://127.0.0.1:{ports[i - 1]}"] if i else []
            elif topology == "mesh":
                peers = [f"{scheme}://127.0.0.1:{p}" for p in ports if p != port]
            else:
                peers = []
            self._make_node(f"node{i}", port, peers, [], {}, self.secret)

    def _make_node(
        self,
        name: str,
        port: int,
        peers: list[str],
        extra: list[str],
        env: Mapping[str, str],
        secret: bytes,
    ) -> LocalNode:
        data_dir = self.root / name
        DataDir.init(data_dir, secret)
        args = ["--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"]
        for peer in peers:
            args += ["--peer", peer]
        if self.tls is not None:
            args += self.tls.args()
        args += self.extra + extra
        node = LocalNode(
            name,
            data_dir,
            port,
            args,
            secret,
            env={**self.env, **env},
            tls_ca=self.tls.ca if self.tls else None,
        )
        self.nodes.append(node)
        return node

    def add_node(
        self,
        peers: list[str] | None = None,
        extra: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        secret: bytes | None = None,
    ) -> LocalNode:
        """Add a node (not started) with its own --peer list and options.

        ``secret`` gives it a cluster secret other than the cluster's.
        """
        return self._make_node(
            f"node{len(self.nodes)}",
            free_port(),
            list(peers or []),
            list(extra or []),
            env or {},
            secret or self.secret,
        )

    def start(self, timeout: float = 60.0) -> None:
        """Start every node not running yet; wait until each answers."""
        started = [node for node in self.nodes if not node.running]
        for node in started:
            node.start()
        for node in started:
            node.wait_up(timeout)

    def wait_connected(
        self, timeout: float = 60.0, nodes: list[LocalNode] | None = None
    ) -> None:
        """Wait until each of ``nodes`` (default: all) has all others up."""
        members = nodes or self.nodes
        ids = {node.node_id for node in members}

        def connected() -> bool:
            for node in members:
                status = node.try_request("status")
                if status is None:
                    return False
                up = {p["node"] for p in status["peers"] if p["up"]}
                if not ids - {status["node"]["id"]} <= up:
                    return False
            return True

        wait_for(connected, timeout, "a fully connected cluster", interval=0.2)

    def heads(self) -> list[list[str] | None]:
        out: list[list[str] | None] = []
        for node in self.nodes:
            status = node.try_request("status")
            out.append(None if status is None else status["node"]["heads"])
        return out

    def wait_converged(
        self, timeout: float = 60.0, nodes: list[LocalNode] | None = None
    ) -> list[str]:
        """Wait until the given nodes (default: all) report the same heads.

        Returns those heads.
        """
        members = nodes or self.nodes

        def same() -> list[str] | None:
            heads = []
            for node in members:
                status = node.try_request("status")
                if status is None:
                    return None
                heads.append(status["node"]["heads"])
            return heads[0] if all(h == heads[0] for h in heads) else None

        return wait_for(
            same, timeout, "every replica to reach the same heads", interval=0.2
        )

    def wait_queue_done(
        self,
        queue: str,
        timeout: float = 60.0,
        nodes: list[LocalNode] | None = None,
    ) -> None:
        """Wait until every one of ``nodes`` (default: all running) sees every
        job of ``queue`` done."""
        members = nodes or [node for node in self.nodes if node.running]

        def done() -> bool:
            for node in members:
                status = node.try_request("status")
                if status is None:
                    return False
                totals = status["queues"].get(queue)
                if totals is None or totals["done"] != totals["total"]:
                    return False
            return True

        wait_for(done, timeout, f"every job of queue {queue} done", interval=0.2)

    def close(self) -> None:
        """Stop every node still running (SIGKILL after a grace period)."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(15)
                except subprocess.TimeoutExpired:
                    node.kill()
                node._close_log()
            node.reap_orphans()


def _children(pid: int) -> list[int]:
    """Pids of the children of ``pid`` (Linux /proc)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found += [int(child) for child in text.split()]
    return found


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)
