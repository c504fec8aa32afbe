"""Real node processes on 127.0.0.1, for tests, the demo and the benchmarks.

A :class:`LocalCluster` starts ``amucrdt node`` subprocesses, each with its own
data directory and port and one shared secret, and talks to them through the
real control connection. Waiting is always on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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


@dataclass
class LocalNode:
    """One node process of a :class:`LocalCluster`."""

    name: str
    data_dir: Path
    port: int
    args: list[str]
    secret: bytes
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

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
        )

    def request(self, op: str, timeout: float = 30.0, **fields: Any) -> Any:
        """One control request to this node."""

        async def go() -> Any:
            async with asyncio.timeout(timeout), Client(self.url, self.secret) as c:
                return await c.request(op, **fields)

        return asyncio.run(go())

    def try_request(self, op: str, **fields: Any) -> Any:
        """Like :meth:`request`, None when the node cannot be reached."""
        try:
            return self.request(op, **fields)
        except (AmucrdtError, OSError, TimeoutError):
            return None

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

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the node and wait for it; returns its exit status."""
        assert self.process is not None
        self.signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._close_log()
        return code

    def kill(self) -> None:
        """SIGKILL the node and every process of its session (its jobs too)."""
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self._close_log()

    def kill_node_only(self) -> None:
        """SIGKILL the node process alone; its jobs' process groups live on."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)
        self._close_log()

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
        topology: "chain" (each node is given the previous one as --peer) or
            "mesh" (each node is given all others).
        extra: arguments added to every node's command line.
    """

    def __init__(
        self,
        root: Path,
        size: int,
        topology: str = "chain",
        extra: list[str] | None = None,
        secret: bytes | None = None,
    ) -> None:
        self.root = root
        self.secret = secret or os.urandom(32)
        ports = [free_port() for _ in range(size)]
        self.nodes: list[LocalNode] = []
        for i, port in enumerate(ports):
            data_dir = root / f"node{i}"
            DataDir.init(data_dir, self.secret)
            if topology == "chain":
                peers = [f"ws://127.0.0.1:{ports[i - 1]}"] if i else []
            else:
                peers = [f"ws://127.0.0.1:{p}" for p in ports if p != port]
            args = ["--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"]
            for peer in peers:
                args += ["--peer", peer]
            args += extra or []
            self.nodes.append(
                LocalNode(f"node{i}", data_dir, port, args, self.secret)
            )

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_up(timeout)

    def wait_connected(self, timeout: float = 60.0) -> None:
        """Wait until every node has every other node up and in sync."""
        others = len(self.nodes) - 1

        def connected() -> bool:
            for node in self.nodes:
                status = node.try_request("status")
                if status is None:
                    return False
                up = [p for p in status["peers"] if p["up"]]
                if len(up) < others:
                    return False
            return True

        wait_for(connected, timeout, "a fully connected cluster", interval=0.2)

    def heads(self) -> list[list[str] | None]:
        out: list[list[str] | None] = []
        for node in self.nodes:
            status = node.try_request("status")
            out.append(None if status is None else status["node"]["heads"])
        return out

    def wait_converged(self, timeout: float = 60.0, nodes: list[LocalNode] | None = None) -> None:
        """Wait until the given nodes (default: all) report the same heads."""
        members = nodes or self.nodes

        def same() -> bool:
            heads = []
            for node in members:
                status = node.try_request("status")
                if status is None:
                    return False
                heads.append(status["node"]["heads"])
            return all(h == heads[0] for h in heads)

        wait_for(same, timeout, "every replica to reach the same heads", interval=0.2)

    def close(self) -> None:
        """Stop every node still running (SIGKILL after a grace period)."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(15)
            node._close_log()
