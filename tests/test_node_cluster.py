"""Multi-process tests of a cluster: discovery, convergence, exactly-once runs.

Every test runs real ``amucrdt node`` processes on 127.0.0.1 through
:class:`amucrdt.testing.LocalCluster` (or the real CLI) and waits on
conditions with deadlines, never on the clock.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from amucrdt.testing import LocalCluster, free_port, wait_for

#: Timing options that keep a test cluster quick without making it flap on a
#: busy two-core machine.
FAST = [
    "--heartbeat",
    "0.2",
    "--peer-timeout",
    "3",
    "--startup-grace",
    "0.5",
    "--slots",
    "2",
]


def append_jobs(names: list[str], out: Path) -> list[dict[str, object]]:
    """Jobs that each append their own name, one line, to ``out``."""
    return [{"name": name, "cmd": {"posix": f"echo {name} >> {out}"}} for name in names]


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[list[LocalCluster]]:
    made: list[LocalCluster] = []
    yield made
    for cluster in made:
        cluster.close()


def test_chain_of_peers_becomes_full_mesh_and_shares_queue(
    tmp_path: Path, cluster_factory: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 3, topology="chain", extra=FAST)
    cluster_factory.append(cluster)
    cluster.start()

    # node0 and node2 were never told of each other; the host records in the
    # document bring them together.
    cluster.wait_connected(timeout=60)
    for node in cluster.nodes:
        peers = node.status()["peers"]
        assert len(peers) == 2
        assert all(peer["connected"] and peer["up"] for peer in peers)

    out = tmp_path / "out.txt"
    jobs = append_jobs(["a", "b", "c"], out)
    reply = cluster.nodes[1].request(
        "push_queue", queue={"name": "chain", "jobs": jobs}
    )
    assert reply == {"queue": "chain", "jobs": 3, "new": True}

    def in_every_dump() -> bool:
        for node in cluster.nodes:
            document = node.request("dump")["document"]
            if "chain" not in document["queues"]:
                return False
            if set(document["jobs"]) != {"chain/a", "chain/b", "chain/c"}:
                return False
        return True

    wait_for(in_every_dump, 60, "the queue in every node's dump", interval=0.2)
    cluster.wait_queue_done("chain", timeout=60)
    assert sorted(out.read_text().split()) == ["a", "b", "c"]


def test_queue_pushed_to_four_nodes_at_once_runs_each_job_once(
    tmp_path: Path, cluster_factory: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 4, topology="chain", extra=FAST)
    cluster_factory.append(cluster)
    cluster.start()
    cluster.wait_connected(timeout=60)

    out = tmp_path / "out.txt"
    names = [f"job{i:03d}" for i in range(300)]
    queue = {"name": "burst", "jobs": append_jobs(names, out)}
    replies: list[object] = [None] * 4
    barrier = threading.Barrier(4)

    def push(i: int) -> None:
        barrier.wait()
        replies[i] = cluster.nodes[i].request("push_queue", timeout=60, queue=queue)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert all(reply is not None for reply in replies), replies
    assert {reply["queue"] for reply in replies} == {"burst"}  # type: ignore[index]

    cluster.wait_queue_done("burst", timeout=180)
    counts = Counter(out.read_text().split())
    assert sorted(counts) == names
    assert [name for name, n in counts.items() if n != 1] == []
    for node in cluster.nodes:
        totals = node.status()["queues"]["burst"]
        assert totals["done"] == totals["total"] == 300


def amucrdt_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real ``amucrdt`` command line."""
    return subprocess.run(
        [sys.executable, "-m", "amucrdt", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_pushed_hosts_file_reaches_every_node_and_connects_newcomer(
    tmp_path: Path, cluster_factory: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 3, topology="chain", extra=FAST)
    cluster_factory.append(cluster)
    # The fourth node knows no one, and no one knows it.
    loner = cluster.add_node()
    cluster.start()
    cluster.wait_connected(timeout=60, nodes=cluster.nodes[:3])
    assert loner.status()["peers"] == []

    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"# the render farm\n{loner.url}\n{cluster.nodes[0].url}\n")
    first = cluster.nodes[0]
    result = amucrdt_cli(
        "push",
        "hosts",
        str(hosts),
        "--to",
        first.url,
        "--secret-file",
        str(first.data_dir / "secret"),
        "--json",
    )
    assert result.returncode == 0, result.stderr

    cluster.wait_connected(timeout=60)
    for node in cluster.nodes:
        addresses = node.request("dump")["document"]["addresses"]
        assert {loner.url, first.url} <= set(addresses)
        peers = node.status()["peers"]
        assert len(peers) == 3
        assert all(peer["up"] for peer in peers)


def count_connections(ports: set[int]) -> int:
    """Established TCP connections accepted on ``ports`` (IPv4, /proc)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port in ports and fields[3] == "01":
            count += 1
    return count


def test_simultaneous_dials_keep_one_connection_per_pair(
    tmp_path: Path, cluster_factory: list[LocalCluster]
) -> None:
    # Every node dials every other at start-up, so each pair dials twice.
    cluster = LocalCluster(tmp_path, 3, topology="mesh", extra=FAST)
    cluster_factory.append(cluster)
    cluster.start()
    cluster.wait_connected(timeout=60)
    cluster.wait_converged(timeout=60)

    ports = {node.port for node in cluster.nodes}
    # Three pairs, one connection each; control connections of the status
    # requests above are closed by the time they return.
    wait_for(lambda: count_connections(ports) == 3, 30, "one connection per pair")
    for node in cluster.nodes:
        peers = node.status()["peers"]
        assert sorted(p["node"] for p in peers) == sorted(
            other.node_id for other in cluster.nodes if other is not node
        )
        assert all(p["connected"] and p["up"] for p in peers)
    # Still one per pair after the redials settled: a kept duplicate would
    # hold this at 4 or more.
    wait_for(lambda: count_connections(ports) == 3, 30, "one connection per pair")


def test_second_node_on_a_data_directory_in_use_refuses_to_start(
    tmp_path: Path, cluster_factory: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 1, extra=FAST)
    cluster_factory.append(cluster)
    cluster.start()
    node = cluster.nodes[0]

    result = amucrdt_cli(
        "node",
        "--data-dir",
        str(node.data_dir),
        "--listen",
        f"127.0.0.1:{free_port()}",
    )
    assert result.returncode == 2
    assert str(node.data_dir) in result.stderr
    assert f"in use by another node (pid {node.process.pid})" in result.stderr  # type: ignore[union-attr]
    # The running node is untouched.
    assert node.status()["node"]["id"] == node.node_id


def test_unreachable_peer_is_named_in_one_warning(
    tmp_path: Path, cluster_factory: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 1, extra=FAST)
    cluster_factory.append(cluster)
    nobody = f"ws://127.0.0.1:{free_port()}"
    cluster.nodes[0].args += ["--peer", nobody]
    cluster.start()
    node = cluster.nodes[0]

    def warned() -> list[str]:
        return [
            line
            for line in node.read_log().splitlines()
            if f"cannot reach {nobody}" in line
        ]

    lines = wait_for(warned, 60, "a warning naming the unreachable peer")
    assert "WARNING" in lines[0]
    # The node itself is fine, and keeps retrying quietly.
    assert node.status()["peers"] == []
    assert len(warned()) == 1
