"""Running a job's command as a local process.

The runner starts the command under the platform's shell in a process group
of its own, streams its combined output into a log file while keeping the
last few kilobytes for the result, and stops the whole group on a timeout or
when asked. It knows nothing of claims or the document: the node decides what
to run and records what the runner reports.

A job fault (a missing working directory, a command that cannot start, a
non-zero exit, a timeout) is reported in the :class:`RunOutcome`, never
raised, so one bad job cannot take the node down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "TAIL_BYTES",
    "RunOutcome",
    "RunSpec",
    "Runner",
    "local_os",
    "shell_argv",
]

log = logging.getLogger(__name__)

#: Bytes of output kept in a :class:`RunOutcome`'s tail.
TAIL_BYTES = 4096

# How often a stopping job's process group is checked for survivors; the
# kernel offers no notification when a process group empties.
_POLL_SECONDS = 0.05


def local_os() -> str:
    """The OS family of this machine as jobs name it: "windows" or "posix"."""
    return "windows" if os.name == "nt" else "posix"


def shell_argv(os_name: str, command: str) -> list[str]:
    """The argument vector that runs ``command`` under ``os_name``'s shell.

    Raises:
        ValueError: ``os_name`` is neither "posix" nor "windows".
    """
    if os_name == "posix":
        return ["/bin/sh", "-c", command]
    if os_name == "windows":
        return ["cmd.exe", "/d", "/s", "/c", command]
    raise ValueError(f"unknown OS family {os_name!r}; expected posix or windows")


@dataclass(frozen=True)
class RunSpec:
    """One attempt of one job, as the runner needs it.

    Attributes:
        job_id: the job's id in the document.
        queue: the queue the job belongs to.
        name: the job's name within its queue.
        attempt: the attempt number being run.
        node_id: the id of the node running it.
        command: the shell command line.
        cwd: working directory, None for the node's own.
        env: variables added to the node's environment for the job.
        timeout: seconds before the job is stopped, None for no limit.
        log_path: file the combined output is appended to.
    """

    job_id: str
    queue: str
    name: str
    attempt: int
    node_id: str
    command: str
    cwd: str | None
    env: Mapping[str, str]
    timeout: float | None
    log_path: Path


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended.

    Attributes:
        exit_code: the command's exit status; None when a signal ended it or
            it never started.
        signal: the number of the signal that ended it, else None.
        timed_out: True when the runner stopped it for exceeding its timeout.
        started: unix time the run began.
        ended: unix time the run ended.
        tail: the last :data:`TAIL_BYTES` of its output, decoded as UTF-8 with
            undecodable bytes replaced.
        error: why the job did not run to its own end, when the reason is not
            the command's: it could not start, or it was stopped (the reason
            given to :meth:`Runner.kill_all`).
    """

    exit_code: int | None
    signal: int | None
    timed_out: bool
    started: float
    ended: float
    tail: str
    error: str | None

    @property
    def ok(self) -> bool:
        """True when the command ran to its end and exited with status 0."""
        return self.exit_code == 0 and not self.timed_out and self.error is None


@dataclass(eq=False)
class _Run:
    spec: RunSpec
    # Set by kill_all to stop the run; `reason` says why.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None
    # Set when run() has stopped every process of the run and is returning.
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Runner:
    """Runs job commands; any number may run at once."""

    def __init__(self, kill_grace: float = 5.0) -> None:
        """``kill_grace``: seconds between SIGTERM and SIGKILL when stopping."""
        self.kill_grace = kill_grace
        self._runs: set[_Run] = set()

    def running(self) -> list[str]:
        """The job ids of the runs in progress, sorted."""
        return sorted(run.spec.job_id for run in self._runs)

    async def kill_all(self, reason: str) -> None:
        """Stop every run in progress and wait until their processes are gone.

        Each run's process group gets SIGTERM, then SIGKILL if any of it is
        still there ``kill_grace`` seconds later. The stopped runs' outcomes
        carry ``reason`` as their error.
        """
        runs = list(self._runs)
        for run in runs:
            run.reason = reason
            run.stop.set()
        if runs:
            log.info("stopping %d jobs: %s", len(runs), reason)
        await asyncio.gather(*(run.done.wait() for run in runs))

    async def run(self, spec: RunSpec) -> RunOutcome:
        """Run ``spec``'s command to its end and report how it ended.

        The command runs under the local shell in a new session (so a
        process group of its own), with stdin from /dev/null, the node's
        environment plus ``spec.env`` and the ``AMUCRDT_JOB``,
        ``AMUCRDT_QUEUE``, ``AMUCRDT_JOB_ID``, ``AMUCRDT_ATTEMPT`` and
        ``AMUCRDT_NODE`` variables. Its stdout and stderr go, interleaved as
        written, to ``spec.log_path`` (appended; parent directories created).

        When the command's shell exits, any process it left behind in its
        group is stopped too, so a finished job leaves nothing running. On
        timeout the whole group is stopped: SIGTERM, then SIGKILL after
        ``kill_grace`` seconds. If the calling task is cancelled, the group
        is killed at once and the cancellation propagates.

        Never raises for a fault of the job: see :class:`RunOutcome`.
        """
        started = time.time()
        if spec.cwd is not None and not Path(spec.cwd).is_dir():
            what = "is not a directory" if Path(spec.cwd).exists() else "does not exist"
            return self._not_started(
                spec, started, f"working directory {spec.cwd} {what}"
            )
        try:
            log_file = _open_log(spec.log_path)
        except OSError as exc:
            return self._not_started(
                spec, started, f"cannot open log {spec.log_path}: {exc.strerror}"
            )
        run = _Run(spec)
        self._runs.add(run)
        try:
            with log_file:
                return await self._run(run, log_file, started)
        finally:
            self._runs.discard(run)
            run.done.set()

    async def _run(self, run: _Run, log_file: BinaryIO, started: float) -> RunOutcome:
        spec = run.spec
        env = dict(os.environ)
        env.update(spec.env)
        env.update(
            AMUCRDT_JOB=spec.name,
            AMUCRDT_QUEUE=spec.queue,
            AMUCRDT_JOB_ID=spec.job_id,
            AMUCRDT_ATTEMPT=str(spec.attempt),
            AMUCRDT_NODE=spec.node_id,
        )
        loop = asyncio.get_running_loop()
        output = _Output(loop, spec, log_file)
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: output,
                *shell_argv(local_os(), spec.command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=spec.cwd,
                env=env,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            return self._not_started(spec, started, f"cannot start: {exc}")
        # A new session's leader also leads a new process group of its pid.
        pgid = transport.get_pid()
        log.info(
            "started job %s attempt %d of queue %s: pid %d",
            spec.job_id,
            spec.attempt,
            spec.queue,
            pgid,
        )

        stopped = asyncio.create_task(run.stop.wait())
        settled = False
        timed_out = False
        killed = False
        # Futures of different result types, awaited together.
        either: set[asyncio.Future[Any]] = {output.exited, stopped}
        try:
            done, _ = await asyncio.wait(
                either,
                timeout=spec.timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if output.exited not in done:
                killed = stopped in done
                timed_out = not killed
                why = "timed out" if timed_out else f"stopped ({run.reason})"
                log.warning("job %s %s; stopping its processes", spec.job_id, why)
            elif _group_alive(pgid):
                log.info("job %s exited; stopping processes it left", spec.job_id)
            await self._stop_group(pgid)
            await output.exited
            settled = True
            await self._drain(output)
        finally:
            stopped.cancel()
            if not settled:
                # Cancelled: no time for a grace period, and no orphans.
                _signal_group(pgid, signal.SIGKILL)
            transport.close()

        code = transport.get_returncode()
        assert code is not None
        outcome = RunOutcome(
            exit_code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            timed_out=timed_out,
            started=started,
            ended=time.time(),
            tail=bytes(output.tail).decode("utf-8", errors="replace"),
            error=run.reason if killed else None,
        )
        log.info(
            "finished job %s attempt %d: exit %s signal %s%s",
            spec.job_id,
            spec.attempt,
            outcome.exit_code,
            outcome.signal,
            " (timed out)" if timed_out else "",
        )
        return outcome

    async def _stop_group(self, pgid: int) -> None:
        """SIGTERM the group, then SIGKILL whatever survives the grace period."""
        # Known shortcoming: POSIX only. On Windows the command's children
        # would need a job object to be stopped together.
        if not _group_alive(pgid):
            return
        _signal_group(pgid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.kill_grace
        while _group_alive(pgid):
            if loop.time() >= deadline:
                _signal_group(pgid, signal.SIGKILL)
                return
            await asyncio.sleep(_POLL_SECONDS)

    async def _drain(self, output: _Output) -> None:
        """Wait for the output pipe to close, for at most the grace period.

        Every process of the group is gone by now, but one that moved to a
        session of its own could still hold the pipe open.
        """
        try:
            await asyncio.wait_for(asyncio.shield(output.closed), self.kill_grace)
        except TimeoutError:
            log.warning(
                "job %s: output pipe still open after its processes ended; "
                "stopped reading",
                output.spec.job_id,
            )

    def _not_started(self, spec: RunSpec, started: float, error: str) -> RunOutcome:
        log.warning(
            "job %s attempt %d not started: %s", spec.job_id, spec.attempt, error
        )
        return RunOutcome(
            exit_code=None,
            signal=None,
            timed_out=False,
            started=started,
            ended=time.time(),
            tail="",
            error=error,
        )


class _Output(asyncio.SubprocessProtocol):
    """Receives a job's output and exit.

    Output is appended to the log file as it arrives and the last TAIL_BYTES
    are kept in ``tail``, so memory stays bounded however much a job prints.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, spec: RunSpec, log_file: BinaryIO
    ) -> None:
        self.spec = spec
        self.log_file: BinaryIO | None = log_file
        self.tail = bytearray()
        # Resolved when the command's shell has exited (its group may live on).
        self.exited: asyncio.Future[None] = loop.create_future()
        # Resolved when the output pipe has closed: no process holds it.
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self.tail += data
        if len(self.tail) > TAIL_BYTES:
            del self.tail[:-TAIL_BYTES]
        if self.log_file is None:
            return
        try:
            # Flushed per chunk so the log can be followed while the job runs.
            self.log_file.write(data)
            self.log_file.flush()
        except OSError as exc:
            self.log_file = None
            log.warning(
                "job %s: cannot write log %s (%s); output kept in the tail only",
                self.spec.job_id,
                self.spec.log_path,
                exc.strerror,
            )

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


def _open_log(path: Path) -> BinaryIO:
    """Open ``path`` for appending, creating its parent directories."""
    # Log files are written inline on the event loop, here and in _Output: local
    # writes land in the page cache, and a thread hop per chunk would cost
    # more than the write itself.
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


def _group_alive(pgid: int) -> bool:
    """True while any process of group ``pgid`` exists (zombies included)."""
    # Known shortcoming: an orphan that has exited but waits for init to
    # collect it still counts, so stopping its group can take the whole grace
    # period (then a SIGKILL that finds nothing to kill) where init is slow.
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member changed its credentials (setuid); it is still there.
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
