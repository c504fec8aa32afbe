"""Multi-process tests of failures: crashes, restarts, signals, Automerge faults.

Jobs here record what they do in a file the test reads afterwards: one line
per start and per end, with the job's name, the node that ran it
($AMUCRDT_NODE) and the attempt ($AMUCRDT_ATTEMPT). Lines are short and
appended with ``>>`` (O_APPEND), so concurrent writers never interleave them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from amucrdt.testing import LocalCluster, LocalNode, wait_for

FAST = ["--heartbeat", "0.2", "--peer-timeout", "3", "--startup-grace", "0.5"]

#: Quick failure detection for the tests that kill a node mid-job.
LEASE = ["--heartbeat", "0.25", "--peer-timeout", "2", "--lease", "3"]


def recording_jobs(
    names: list[str], record: Path, seconds: float = 0
) -> list[dict[str, Any]]:
    """Jobs that log their start, sleep ``seconds``, and log their end."""
    line = '"$AMUCRDT_JOB $AMUCRDT_NODE $AMUCRDT_ATTEMPT'
    command = f'echo {line} start" >> {record}'
    if seconds:
        command += f"; sleep {seconds}"
    command += f'; echo {line} end" >> {record}'
    return [{"name": name, "cmd": {"posix": command}} for name in names]


def read_record(record: Path) -> list[tuple[str, str, int, str]]:
    """(job, node, attempt, "start" or "end") for each line of ``record``."""
    if not record.exists():
        return []
    rows = []
    for line in record.read_text().splitlines():
        job, node, attempt, event = line.split()
        rows.append((job, node, int(attempt), event))
    return rows


def ended_once(record: Path, names: list[str]) -> None:
    """Assert every job of ``names`` ran to its end exactly once."""
    ends = Counter(job for job, _, _, event in read_record(record) if event == "end")
    assert sorted(ends) == sorted(names)
    assert {job: n for job, n in ends.items() if n != 1} == {}


def running_jobs(node: LocalNode) -> list[str]:
    status = node.try_request("status")
    return [] if status is None else list(status["node"]["running"])


def offline_dump(node: LocalNode) -> dict[str, Any]:
    """``amucrdt dump --data-dir`` of a stopped node: what is on its disk."""
    result = subprocess.run(
        [sys.executable, "-m", "amucrdt", "dump", "--data-dir", str(node.data_dir),
         "--json"],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    dump: dict[str, Any] = orjson.loads(result.stdout)
    return dump


def results_of(document: dict[str, Any], node_id: str) -> dict[str, dict[str, Any]]:
    """The result records ``node_id`` wrote, by "attempt:job_id"."""
    out = {}
    for key, record in document["results"].items():
        attempt, node, job = key.split(":", 2)
        if node == node_id:
            out[f"{attempt}:{job}"] = record
    return out


@pytest.fixture
def closing() -> Iterator[list[LocalCluster]]:
    made: list[LocalCluster] = []
    yield made
    for cluster in made:
        cluster.close()


def test_acknowledged_queue_survives_sigkill_and_runs_after_restart(
    tmp_path: Path, closing: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 3, topology="chain", extra=[*FAST, "--slots", "2"])
    closing.append(cluster)
    cluster.start()
    cluster.wait_connected(timeout=60)
    victim = cluster.nodes[2]

    record = tmp_path / "record.txt"
    names = [f"j{i}" for i in range(6)]
    queue = {"name": "durable", "jobs": recording_jobs(names, record)}
    assert victim.request("push_queue", queue=queue)["new"] is True
    victim.kill()  # at once: the peers may not have heard of the queue yet

    victim.start()
    victim.wait_up(timeout=60)
    # The queue is there from the node's own disk, before any peer could
    # have handed it back.
    document = victim.request("dump")["document"]
    assert set(document["queues"]) == {"durable"}
    assert set(document["jobs"]) == {f"durable/{name}" for name in names}

    cluster.wait_connected(timeout=60)
    cluster.wait_queue_done("durable", timeout=90)
    cluster.wait_converged(timeout=60)
    ends = {job for job, _, _, event in read_record(record) if event == "end"}
    assert ends == set(names)


def test_jobs_of_a_killed_node_finish_elsewhere_once(
    tmp_path: Path, closing: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 3, topology="mesh", extra=[*LEASE, "--slots", "2"])
    closing.append(cluster)
    cluster.start()
    cluster.wait_connected(timeout=60)
    victim = cluster.nodes[0]
    survivors = cluster.nodes[1:]
    victim_id = victim.node_id

    record = tmp_path / "record.txt"
    names = [f"j{i}" for i in range(8)]
    queue = {"name": "slow", "jobs": recording_jobs(names, record, seconds=3)}
    survivors[0].request("push_queue", queue=queue)
    lost = wait_for(lambda: running_jobs(victim), 60, "the victim to run a job")
    victim.kill()  # the node and its jobs' process groups

    cluster.wait_queue_done("slow", timeout=120, nodes=survivors)
    rows = read_record(record)
    ended_once(record, names)
    assert not [row for row in rows if row[1] == victim_id and row[3] == "end"]
    # No job started on two survivors, nor twice on one.
    survivor_starts = Counter(
        job for job, node, _, event in rows if event == "start" and node != victim_id
    )
    assert {job: n for job, n in survivor_starts.items() if n != 1} == {}
    # The victim's jobs were taken over as new attempts after the lease.
    status = survivors[0].status()
    by_name = {job["name"]: job for job in status["jobs"]}
    for job_id in lost:
        view = by_name[job_id.split("/", 1)[1]]
        assert view["state"] == "done"
        assert view["attempt"] >= 2
        assert view["node"] != victim_id
    assert "took over job" in "".join(node.read_log() for node in survivors)


def group_alive(group: int) -> bool:
    """True while process group ``group`` has a process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == group:
            return True
    return False


def test_restarted_node_marks_its_running_jobs_interrupted_and_reruns_them(
    tmp_path: Path, closing: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 2, topology="mesh", extra=[*FAST, "--slots", "2"])
    closing.append(cluster)
    cluster.start()
    cluster.wait_connected(timeout=60)
    victim, other = cluster.nodes
    victim_id = victim.node_id

    record = tmp_path / "record.txt"
    names = [f"j{i}" for i in range(4)]
    # A first attempt on the victim would outlast the test; any other run
    # ends at once.
    line = '"$AMUCRDT_JOB $AMUCRDT_NODE $AMUCRDT_ATTEMPT'
    command = (
        f'echo {line} start" >> {record}; '
        f'if [ "$AMUCRDT_NODE.$AMUCRDT_ATTEMPT" = {victim_id}.1 ]; then sleep 300; fi; '
        f'echo {line} end" >> {record}'
    )
    jobs = [{"name": name, "cmd": {"posix": command}} for name in names]
    other.request("push_queue", queue={"name": "resume", "jobs": jobs})
    running = wait_for(lambda: running_jobs(victim), 60, "the victim to run a job")

    victim.kill_node_only()  # its jobs live on in their own sessions
    orphans = set(victim.orphans)
    assert orphans and all(group_alive(group) for group in orphans)
    victim.start()
    victim.wait_up(timeout=60)

    # The restarted node stopped what its predecessor left running...
    assert not [group for group in orphans if group_alive(group)]
    log = victim.read_log()
    assert log.count("left running by an earlier run of this node") == len(orphans)
    # ...and recorded those attempts as interrupted.
    mine = results_of(victim.request("dump")["document"], victim_id)
    for job_id in running:
        result = mine[f"1:{job_id}"]
        assert result["state"] == "interrupted"
        assert result["error"] == "node restarted while the job ran"

    cluster.wait_queue_done("resume", timeout=90)
    by_name = {job["name"]: job for job in victim.status()["jobs"]}
    for job_id in running:
        assert by_name[job_id.split("/", 1)[1]]["attempt"] == 2
    rows = read_record(record)
    ended_once(record, names)
    assert [row for row in rows if row[1:] == (victim_id, 1, "end")] == []


def saved_heads(node: LocalNode) -> list[str]:
    """The heads a stopped node's last log line says it saved."""
    for line in reversed(node.read_log().splitlines()):
        if "stopped; document saved with heads " in line:
            return line.rsplit("heads ", 1)[1].split()
    raise AssertionError(f"{node.name} did not log a clean stop")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_node_cleanly_and_its_jobs_rerun_elsewhere(
    tmp_path: Path, closing: list[LocalCluster], sig: signal.Signals
) -> None:
    cluster = LocalCluster(tmp_path, 2, topology="mesh", extra=[*FAST, "--slots", "2"])
    closing.append(cluster)
    cluster.start()
    cluster.wait_connected(timeout=60)
    stopping, staying = cluster.nodes
    stopping_id = stopping.node_id

    record = tmp_path / "record.txt"
    names = [f"j{i}" for i in range(4)]
    # Jobs on the node to be stopped run until stopped; elsewhere they end.
    line = '"$AMUCRDT_JOB $AMUCRDT_NODE $AMUCRDT_ATTEMPT'
    command = (
        f'echo {line} start" >> {record}; '
        f'if [ "$AMUCRDT_NODE" = {stopping_id} ]; then sleep 300; fi; '
        f'echo {line} end" >> {record}'
    )
    jobs = [{"name": name, "cmd": {"posix": command}} for name in names]
    staying.request("push_queue", queue={"name": "stop", "jobs": jobs})
    running = wait_for(lambda: running_jobs(stopping), 60, "a job on the node")

    assert stopping.stop(timeout=60, sig=sig) == 0
    # What it recorded before exiting is on its disk, under the heads it
    # logged: interrupted attempts for every job it was running.
    on_disk = offline_dump(stopping)
    assert on_disk["heads"] == saved_heads(stopping)
    mine = results_of(on_disk["document"], stopping_id)
    for job_id in running:
        assert mine[f"1:{job_id}"]["state"] == "interrupted"

    # The other node heard of the interruptions and reran those jobs.
    cluster.wait_queue_done("stop", timeout=90, nodes=[staying])
    ended_once(record, names)
    by_name = {job["name"]: job for job in staying.status()["jobs"]}
    for job_id in running:
        view = by_name[job_id.split("/", 1)[1]]
        assert (view["attempt"], view["node"]) == (2, staying.node_id)

    # Stopped and started again, a node shows exactly the heads it had.
    before = staying.status()["node"]["heads"]
    assert staying.stop(timeout=60, sig=sig) == 0
    assert saved_heads(staying) == before
    staying.start()
    staying.wait_up(timeout=60)
    assert staying.status()["node"]["heads"] == before


def test_automerge_panic_mid_run_is_logged_once_and_recovered(
    tmp_path: Path, closing: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 3, topology="mesh", extra=[*FAST, "--slots", "2"])
    faulty = cluster.nodes[1]
    # Start-up takes a handful of sync messages per peer; a queue of this
    # size takes hundreds, so call 80 comes in the middle of the run.
    faulty.env["AMUCRDT_FAULT"] = "receive_sync_message:80"
    closing.append(cluster)
    cluster.start()
    cluster.wait_connected(timeout=60)
    started = faulty.status()["stats"]
    assert started["rebuilds"] == 0

    record = tmp_path / "record.txt"
    names = [f"j{i:02d}" for i in range(60)]
    queue = {"name": "faulty", "jobs": recording_jobs(names, record, seconds=0.2)}
    cluster.nodes[0].request("push_queue", queue=queue)

    cluster.wait_queue_done("faulty", timeout=120)
    cluster.wait_converged(timeout=60)
    status = faulty.status()
    assert status["stats"]["rebuilds"] == 1
    assert status["node"]["accepting"] is True
    ended_once(record, names)
    starts = Counter(
        job for job, _, _, event in read_record(record) if event == "start"
    )
    assert {job: n for job, n in starts.items() if n != 1} == {}

    log = faulty.read_log()
    faults = [line for line in log.splitlines() if "automerge fault" in line]
    assert len(faults) == 1, faults
    assert "receive_sync_message" in faults[0]
    assert "fault injected by AMUCRDT_FAULT into call 80" in faults[0]
    assert "document rebuilt" in faults[0]
    # The fault struck while the queue was running, not before or after.
    assert "won job faulty/" in log[: log.index(faults[0])]
    assert "won job faulty/" in log[log.index(faults[0]) :]
