"""Tests of the job runner, with real shells and real processes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from amucrdt.runner import (
    TAIL_BYTES,
    Runner,
    RunOutcome,
    RunSpec,
    local_os,
    shell_argv,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX shell commands")

# Upper bound for waits on conditions; reaching it fails the test.
DEADLINE_SECONDS = 30.0


def make_spec(tmp_path: Path, command: str, **changes: Any) -> RunSpec:
    spec = RunSpec(
        job_id="job-1",
        queue="nightly",
        name="build",
        attempt=1,
        node_id="ab" * 16,
        command=command,
        cwd=None,
        env={},
        # Long enough never to fire in a passing test; keeps a bug from hanging.
        timeout=DEADLINE_SECONDS,
        log_path=tmp_path / "logs" / "job-1.log",
    )
    return dataclasses.replace(spec, **changes)


def run(spec: RunSpec, runner: Runner | None = None) -> RunOutcome:
    return asyncio.run((runner or Runner()).run(spec))


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def async_wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def live_members(pgid: int) -> list[int]:
    """Pids of group ``pgid`` that are not zombies.

    A zombie has ended and only waits for its parent (here often init, once
    its shell died) to collect it, so it does not count as a survivor.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may itself hold spaces.
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(entry))
    return pids


def wait_group_gone(pgid: int) -> None:
    wait_until(lambda: not live_members(pgid), f"process group {pgid} to end")


def test_local_os_is_posix_here() -> None:
    assert local_os() == "posix"


def test_shell_argv_per_os() -> None:
    assert shell_argv("posix", "echo hi") == ["/bin/sh", "-c", "echo hi"]
    assert shell_argv("windows", "dir") == ["cmd.exe", "/d", "/s", "/c", "dir"]
    with pytest.raises(ValueError, match="unknown OS family 'plan9'"):
        shell_argv("plan9", "ls")


def test_outcome_ok_needs_exit_zero_no_timeout_no_error() -> None:
    base = RunOutcome(0, None, False, 1.0, 2.0, "", None)

    assert base.ok
    assert not dataclasses.replace(base, exit_code=1).ok
    assert not dataclasses.replace(base, exit_code=None, signal=9).ok
    assert not dataclasses.replace(base, timed_out=True).ok
    assert not dataclasses.replace(base, error="stopped").ok


@pytest.mark.parametrize("code", [0, 1, 3, 255])
def test_exit_code_is_reported(tmp_path: Path, code: int) -> None:
    outcome = run(make_spec(tmp_path, f"exit {code}"))

    assert outcome.exit_code == code
    assert outcome.signal is None
    assert outcome.ok == (code == 0)
    assert outcome.error is None
    assert not outcome.timed_out
    assert outcome.started <= outcome.ended


def test_command_ended_by_a_signal_reports_the_signal(tmp_path: Path) -> None:
    outcome = run(make_spec(tmp_path, "kill -KILL $$"))

    assert outcome.exit_code is None
    assert outcome.signal == signal.SIGKILL
    assert not outcome.ok


def test_stdout_and_stderr_go_to_log_and_tail(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "echo out; echo err >&2; echo out again")

    outcome = run(spec)

    assert outcome.tail == "out\nerr\nout again\n"
    assert spec.log_path.read_text() == "out\nerr\nout again\n"


def test_tail_keeps_last_bytes_while_log_keeps_everything(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "seq 1 100000")
    expected = "".join(f"{i}\n" for i in range(1, 100001))

    outcome = run(spec)

    assert outcome.ok
    assert spec.log_path.read_text() == expected
    assert len(expected) > 100 * TAIL_BYTES
    assert outcome.tail == expected[-TAIL_BYTES:]


def test_invalid_utf8_output_is_replaced_in_tail_and_kept_raw_in_log(
    tmp_path: Path,
) -> None:
    spec = make_spec(tmp_path, r"printf 'ok \377\376 end'")

    outcome = run(spec)

    assert outcome.tail == "ok \ufffd\ufffd end"
    assert spec.log_path.read_bytes() == b"ok \xff\xfe end"


def test_log_is_appended_to_across_runs(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "echo $AMUCRDT_ATTEMPT")

    run(spec)
    run(dataclasses.replace(spec, attempt=2))

    assert spec.log_path.read_text() == "1\n2\n"


def test_job_sees_its_variables_and_the_node_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMUCRDT_TEST_INHERITED", "from node")
    monkeypatch.setenv("AMUCRDT_TEST_OVERRIDDEN", "from node")
    spec = make_spec(
        tmp_path,
        'printf "%s|" "$AMUCRDT_JOB" "$AMUCRDT_QUEUE" "$AMUCRDT_JOB_ID" '
        '"$AMUCRDT_ATTEMPT" "$AMUCRDT_NODE" "$AMUCRDT_TEST_INHERITED" '
        '"$AMUCRDT_TEST_OVERRIDDEN" "$EXTRA"',
        attempt=7,
        env={"EXTRA": "a b", "AMUCRDT_TEST_OVERRIDDEN": "from job"},
    )

    outcome = run(spec)

    assert outcome.tail == (
        f"build|nightly|job-1|7|{'ab' * 16}|from node|from job|a b|"
    )


def test_stdin_is_empty(tmp_path: Path) -> None:
    outcome = run(make_spec(tmp_path, "cat; echo done"))

    assert outcome.ok
    assert outcome.tail == "done\n"


def test_working_directory_is_honoured(tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()

    outcome = run(make_spec(tmp_path, "pwd -P", cwd=str(workdir)))

    assert outcome.tail == f"{workdir.resolve()}\n"


def test_missing_working_directory_is_an_outcome_not_an_exception(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing"
    spec = make_spec(tmp_path, "echo never", cwd=str(missing))

    outcome = run(spec)

    assert outcome.error == f"working directory {missing} does not exist"
    assert outcome.exit_code is None and outcome.signal is None
    assert not outcome.ok
    assert not spec.log_path.exists()


def test_working_directory_that_is_a_file_is_an_outcome(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")

    outcome = run(make_spec(tmp_path, "echo never", cwd=str(afile)))

    assert outcome.error == f"working directory {afile} is not a directory"


def test_unstartable_command_is_an_outcome_not_an_exception(tmp_path: Path) -> None:
    # The operating system refuses an environment value holding a NUL byte.
    spec = make_spec(tmp_path, "echo never", env={"BAD": "a\0b"})

    outcome = run(spec)

    assert outcome.error is not None
    assert outcome.error.startswith("cannot start: ")
    assert outcome.exit_code is None
    assert not outcome.ok


def test_unwritable_log_is_an_outcome_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    log_path = tmp_path / "afile" / "job.log"

    outcome = run(make_spec(tmp_path, "echo never", log_path=log_path))

    assert outcome.error is not None
    assert outcome.error.startswith(f"cannot open log {log_path}: ")


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        "echo $$; sleep 1000 & echo $!; sleep 1000",
        timeout=0.5,
    )

    outcome = run(spec, Runner(kill_grace=2.0))

    pgid, grandchild = (int(line) for line in outcome.tail.split())
    assert outcome.timed_out
    assert outcome.exit_code is None
    assert outcome.signal == signal.SIGTERM
    assert outcome.error is None
    assert not outcome.ok
    assert os.getpgid(0) != pgid
    wait_group_gone(pgid)
    assert grandchild not in live_members(pgid)


def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        "trap '' TERM; echo $$; sleep 1000 & sleep 1000",
        timeout=0.2,
    )

    outcome = run(spec, Runner(kill_grace=0.5))

    pgid = int(outcome.tail)
    assert outcome.timed_out
    assert outcome.signal == signal.SIGKILL
    wait_group_gone(pgid)


def test_processes_left_behind_by_a_finished_job_are_stopped(
    tmp_path: Path,
) -> None:
    spec = make_spec(tmp_path, "echo $$; sleep 1000 & exit 0")

    outcome = run(spec, Runner(kill_grace=2.0))

    assert outcome.ok
    assert not outcome.timed_out
    wait_group_gone(int(outcome.tail))


def test_kill_all_stops_every_run_with_the_reason(tmp_path: Path) -> None:
    runner = Runner(kill_grace=2.0)
    specs = [
        make_spec(
            tmp_path,
            "echo $$; sleep 1000 & sleep 1000",
            job_id=f"job-{i}",
            log_path=tmp_path / f"job-{i}.log",
        )
        for i in range(3)
    ]

    async def scenario() -> list[RunOutcome]:
        tasks = [asyncio.create_task(runner.run(spec)) for spec in specs]
        await async_wait_until(
            lambda: all(s.log_path.exists() and s.log_path.read_text() for s in specs),
            "every job to start",
        )
        assert runner.running() == ["job-0", "job-1", "job-2"]
        await runner.kill_all("node shutting down")
        assert runner.running() == []
        return await asyncio.gather(*tasks)

    outcomes = asyncio.run(scenario())

    for spec, outcome in zip(specs, outcomes, strict=True):
        assert outcome.error == "node shutting down"
        assert outcome.exit_code is None
        assert outcome.signal == signal.SIGTERM
        assert not outcome.timed_out
        assert not outcome.ok
        wait_group_gone(int(spec.log_path.read_text()))


def test_kill_all_with_nothing_running_returns() -> None:
    runner = Runner()

    asyncio.run(runner.kill_all("idle"))

    assert runner.running() == []


def test_runs_proceed_concurrently(tmp_path: Path) -> None:
    # The first job can only finish once the second has run.
    flag = tmp_path / "flag"
    waiter = make_spec(
        tmp_path,
        f"while [ ! -e '{flag}' ]; do sleep 0.01; done; echo waited",
        job_id="waiter",
        log_path=tmp_path / "waiter.log",
    )
    setter = make_spec(
        tmp_path,
        f"touch '{flag}'; echo set",
        job_id="setter",
        log_path=tmp_path / "setter.log",
    )
    runner = Runner()

    async def scenario() -> tuple[RunOutcome, RunOutcome]:
        first = asyncio.create_task(runner.run(waiter))
        await async_wait_until(lambda: runner.running() == ["waiter"], "waiter")
        second = asyncio.create_task(runner.run(setter))
        return await asyncio.gather(first, second)

    first, second = asyncio.run(scenario())

    assert (first.ok, first.tail) == (True, "waited\n")
    assert (second.ok, second.tail) == (True, "set\n")
    assert runner.running() == []


def test_cancelled_run_kills_its_process_group(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "echo $$; sleep 1000 & sleep 1000")
    runner = Runner()

    async def scenario() -> None:
        task = asyncio.create_task(runner.run(spec))
        await async_wait_until(
            lambda: spec.log_path.exists() and spec.log_path.read_text() != "",
            "the job to start",
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())

    assert runner.running() == []
    wait_group_gone(int(spec.log_path.read_text()))
