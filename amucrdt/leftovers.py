"""Job processes that outlived the node that started them.

A node stopped cleanly stops its jobs first. A node killed with SIGKILL (or
one whose machine ran out of memory) cannot: each job leads a session of its
own, so it runs on without the node. The restarted node records those
attempts as interrupted and the jobs run again, so the old processes must go
first or the same job would run twice at once.

Every job inherits ``AMUCRDT_NODE`` with the id of the node that started it;
that is how the restarted node finds its own leftovers and no one else's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL for a leftover process group.
LEFTOVER_GRACE = 5.0

_PROC = Path("/proc")


@dataclass(frozen=True)
class Leftover:
    """One process group of a job left running by an earlier run of a node.

    Attributes:
        group: the process group id.
        job_id: the job it ran ($AMUCRDT_JOB_ID), "" when unknown.
        attempt: the attempt it ran ($AMUCRDT_ATTEMPT), "" when unknown.
    """

    group: int
    job_id: str
    attempt: str


def find_leftovers(node_id: str) -> list[Leftover]:
    """The process groups of jobs that node ``node_id`` started, still alive.

    Reads ``/proc``; where there is none (not Linux) it finds nothing.
    Processes of other users, whose environment cannot be read, are skipped.
    """
    if not _PROC.is_dir():
        # Known shortcoming: without /proc a restarted node cannot find the
        # jobs its killed predecessor left running; they may then run twice.
        return []
    marker = f"AMUCRDT_NODE={node_id}".encode()
    own_group = os.getpgrp()
    found: dict[int, Leftover] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            variables = (entry / "environ").read_bytes().split(b"\0")
            group = os.getpgid(int(entry.name))
        except OSError:
            continue  # gone, a zombie, or not ours to read
        if marker not in variables or group == own_group or group in found:
            continue
        found[group] = Leftover(
            group,
            _variable(variables, b"AMUCRDT_JOB_ID="),
            _variable(variables, b"AMUCRDT_ATTEMPT="),
        )
    return sorted(found.values(), key=lambda leftover: leftover.group)


def stop_leftovers(node_id: str, grace: float = LEFTOVER_GRACE) -> list[Leftover]:
    """Stop the leftover jobs of ``node_id``: SIGTERM, then SIGKILL after
    ``grace`` seconds for any process still there. Returns what was found."""
    leftovers = find_leftovers(node_id)
    for leftover in leftovers:
        log.warning(
            "node %s: stopping job %s attempt %s (process group %d), left "
            "running by an earlier run of this node",
            node_id,
            leftover.job_id or "?",
            leftover.attempt or "?",
            leftover.group,
        )
        _signal_group(leftover.group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = [leftover.group for leftover in leftovers]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [group for group in alive if _group_alive(group)]
    for group in alive:
        _signal_group(group, signal.SIGKILL)
    return leftovers


def _variable(variables: list[bytes], prefix: bytes) -> str:
    for variable in variables:
        if variable.startswith(prefix):
            return variable[len(prefix) :].decode(errors="replace")
    return ""


def _group_alive(group: int) -> bool:
    """True while a process of ``group`` exists that is not a zombie."""
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parens.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == group:
            return True
    return False


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)
