"""Run the shell blocks of a Markdown file, so the documentation cannot rot.

A fenced block is run when its info string has the word ``test`` after the
language: ```` ```sh test ````. GitHub shows such a block as plain ``sh``;
the extra words only matter here. More words set how it runs:

``background``
    each line is a long-running command (a node): it is started, left
    running, and stopped when the runner closes; a trailing ``&`` is
    dropped. The runner waits until every ``--listen HOST:PORT`` of the
    block accepts connections.
``machine=A[,B...]``
    the block runs once on each named machine: with ``HOME`` set to that
    machine's own folder, so each has its own default data directory.

A block tagged ```` ```json output ```` (or any language then ``output``)
right after a tested block holds that block's exact standard output; with
``output contains``, each of its lines must be a line of that output.

Blocks may name paths under ``/tmp/`` and ports 7071 to 7079 or 7077 on
machines 10.0.0.N; the caller's ``substitute`` maps them onto a temporary
folder and free ports on 127.0.0.1, so a run touches nothing else.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(r"^```(.*)$")

#: Seconds one foreground block may take; the machines are small and shared.
BLOCK_TIMEOUT = 900.0


@dataclass
class Block:
    """One fenced block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    info: list[str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def tested(self) -> bool:
        return "test" in self.info[1:]

    @property
    def is_output(self) -> bool:
        return "output" in self.info[1:]

    @property
    def background(self) -> bool:
        return "background" in self.info[1:]

    @property
    def machines(self) -> list[str | None]:
        for word in self.info[1:]:
            if word.startswith("machine="):
                return list(word.removeprefix("machine=").split(","))
        return [None]

    def commands(self) -> list[str]:
        """The block's lines that are commands: no blanks, no comments."""
        return [
            line.strip()
            for line in self.text.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, in order."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        info = match.group(1).split() or [""]
        blocks.append(Block(path, start + 1, info, "\n".join(body) + "\n"))
        i += 1
    return blocks


def machine_home(root: Path, machine: str | None) -> Path:
    """The home folder of a simulated machine. Dots become dashes, so an
    address never appears in a path that a substitution could rewrite."""
    return root / "machines" / (machine or "local").replace(".", "-")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class _Background:
    process: subprocess.Popen[bytes]
    command: str
    log: Path


@dataclass
class BlockRunner:
    """Runs tested blocks in order, on simulated machines where asked.

    Args:
        root: a temporary folder: machine homes and logs go in it.
        cwd: the folder blocks run in (the repository).
        substitute: maps a block's text, for a machine (or None), to the
            text that runs here.
    """

    root: Path
    cwd: Path
    substitute: Callable[[str, str | None], str]
    background: list[_Background] = field(default_factory=list)

    def home(self, machine: str | None) -> Path:
        home = machine_home(self.root, machine)
        home.mkdir(parents=True, exist_ok=True)
        return home

    def env(self, machine: str | None) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("AMUCRDT_DATA_DIR", "XDG_DATA_HOME"):
            env.pop(name, None)
        env["HOME"] = str(self.home(machine))
        # `amucrdt` and `python` of the Python that runs the tests come first.
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        return env

    def text(self, block: Block, machine: str | None) -> str:
        text = self.substitute(block.text, machine)
        # Nothing may listen on or dial anything but 127.0.0.1.
        for outside in ("0.0.0.0", "10.0.0."):
            assert outside not in text, f"{block.where}: {outside!r} left in {text!r}"
        return text

    def run_all(self, blocks: list[Block]) -> int:
        """Run every tested block of ``blocks`` in order; returns how many ran.

        An ``output`` block after a tested one is compared with its output.
        """
        ran = 0
        previous: str | None = None
        for block in blocks:
            if block.is_output:
                assert previous is not None, f"{block.where}: output of nothing"
                expected = self.substitute(block.text, None)
                if "contains" in block.info:
                    missing = set(expected.splitlines()) - set(previous.splitlines())
                    assert not missing, (
                        f"{block.where}: {sorted(missing)} not printed; "
                        f"the command above printed\n{previous}"
                    )
                else:
                    assert previous == expected, (
                        f"{block.where}: the command above printed\n{previous}"
                    )
                previous = None
                continue
            previous = None
            if not block.tested:
                continue
            for machine in block.machines:
                if block.background:
                    self.start(block, machine)
                else:
                    previous = self.run(block, machine)
                ran += 1
        return ran

    def run(self, block: Block, machine: str | None) -> str:
        """Run a foreground block with ``sh -e``; returns its standard output."""
        done = subprocess.run(
            ["/bin/sh", "-e", "-c", self.text(block, machine)],
            cwd=self.cwd,
            env=self.env(machine),
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
        on = f" on {machine}" if machine else ""
        assert done.returncode == 0, (
            f"{block.where}{on} exited with {done.returncode}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\n{self.logs()}"
        )
        assert "Traceback" not in done.stderr, f"{block.where}: {done.stderr}"
        return done.stdout

    def start(self, block: Block, machine: str | None) -> None:
        """Start each line of a background block; wait for its listeners."""
        text = self.text(block, machine)
        for line in Block(block.path, block.line, block.info, text).commands():
            command = line.removesuffix("&").strip()
            log = self.root / f"background-{len(self.background)}.log"
            with open(log, "wb") as log_file:
                process = subprocess.Popen(
                    ["/bin/sh", "-c", "exec " + command],
                    cwd=self.cwd,
                    env=self.env(machine),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            self.background.append(_Background(process, command, log))
            for host, port in re.findall(r"--listen\s+(\S+):(\d+)", command):
                self._wait_listening(host, int(port), self.background[-1])

    def _wait_listening(self, host: str, port: int, bg: _Background) -> None:
        deadline = time.monotonic() + 120
        while not _accepts(host, port):
            assert bg.process.poll() is None, (
                f"{bg.command} exited with {bg.process.returncode}: "
                f"{bg.log.read_text(errors='replace')}"
            )
            assert time.monotonic() < deadline, f"{bg.command}: port {port} not open"
            time.sleep(0.05)

    def logs(self) -> str:
        parts = []
        for bg in self.background:
            tail = bg.log.read_text(errors="replace")[-3000:]
            parts.append(f"--- {bg.command}\n{tail}")
        return "\n".join(parts)

    def close(self) -> None:
        """Stop every background process (SIGTERM, then SIGKILL) and reap it."""
        for bg in self.background:
            if bg.process.poll() is None:
                bg.process.send_signal(signal.SIGTERM)
        for bg in self.background:
            try:
                bg.process.wait(30)
            except subprocess.TimeoutExpired:
                bg.process.kill()
                bg.process.wait(30)
        self.background.clear()
