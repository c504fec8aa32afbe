"""The command line through its real entry point, against real node processes.

Every test runs ``amucrdt`` as a subprocess and asserts on its output and exit
status. Errors must be one line on stderr, ``amucrdt: error: ...``, with exit
status 2 and no traceback.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amucrdt import SCHEMA_VERSION, __version__
from amucrdt.state import ROOT_MAPS
from amucrdt.testing import LocalCluster, LocalNode, free_port

REPO = Path(__file__).resolve().parent.parent
FORMATS = REPO / "examples" / "formats"

# Seconds any one command may take: generous, the machines are shared.
COMMAND_TIMEOUT = 600


def amucrdt(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``amucrdt`` command of the Python that runs the tests."""
    script = Path(sys.executable).parent / "amucrdt"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "amucrdt"]
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=env,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    """Assert a command succeeded; returns its standard output."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """Assert a command failed with one clear line; returns that line."""
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("amucrdt: error: "), done.stderr
    return lines[0].removeprefix("amucrdt: error: ")


def on(node: LocalNode) -> list[str]:
    """Options that point a command at ``node`` (its address file and secret)."""
    return ["--data-dir", str(node.data_dir)]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("cluster")
    cluster = LocalCluster(root, 2)
    try:
        cluster.start()
        cluster.wait_connected()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def node(cluster: LocalCluster) -> LocalNode:
    return cluster.nodes[0]


def status_json(node: LocalNode) -> dict[str, Any]:
    result = json.loads(ok(amucrdt("status", "--json", *on(node))))
    assert isinstance(result, dict)
    return result


# Help and version -------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "",
        "init",
        "node",
        "push",
        "push queue",
        "push hosts",
        "status",
        "dump",
        "wait",
        "demo",
    ],
)
def test_every_command_help_shows_an_example(command: str) -> None:
    out = ok(amucrdt(*command.split(), "--help"))
    assert "usage: amucrdt" in out
    example = out[out.index("example:") :]
    assert re.search(r"^  amucrdt \w", example, re.MULTILINE), out


def test_version_prints_the_package_version() -> None:
    assert ok(amucrdt("--version")) == f"amucrdt {__version__}\n"


def test_no_command_prints_usage_and_exits_2() -> None:
    done = amucrdt()
    assert done.returncode == 2
    assert "usage: amucrdt" in done.stderr
    assert "Traceback" not in done.stderr


# init -------------------------------------------------------------------------


def test_init_creates_a_private_secret_and_is_idempotent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ok(amucrdt("init", "--data-dir", str(data)))
    node_id = json.loads((data / "node.json").read_text())["node_id"]
    assert first == (
        f"data directory {data} initialised; node id {node_id}\n"
        f"cluster secret: {data}/secret (copy it to every node, mode 0600)\n"
    )
    assert stat.S_IMODE((data / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    secret = (data / "secret").read_bytes()

    again = ok(amucrdt("init", "--data-dir", str(data)))
    assert again == first.replace("initialised;", "already initialised;")
    assert (data / "secret").read_bytes() == secret


def test_init_uses_the_default_data_dir_from_the_environment(tmp_path: Path) -> None:
    env = dict(os.environ, AMUCRDT_DATA_DIR=str(tmp_path / "env-dir"))
    out = ok(amucrdt("init", env=env))
    assert out.startswith(f"data directory {tmp_path / 'env-dir'} initialised;")


def test_init_keeps_a_secret_copied_in_before_it(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    ok(amucrdt("init", "--data-dir", str(first)))
    second.mkdir(mode=0o700)
    secret = (first / "secret").read_bytes()
    (second / "secret").write_bytes(secret)
    os.chmod(second / "secret", 0o600)
    out = ok(amucrdt("init", "--data-dir", str(second)))
    assert f"data directory {second} initialised;" in out
    assert (second / "secret").read_bytes() == secret


def test_init_on_a_file_is_one_clear_error(tmp_path: Path) -> None:
    blocker = write(tmp_path / "file", "not a directory")
    line = one_line_error(amucrdt("init", "--data-dir", str(blocker)))
    assert str(blocker) in line


# push queue --dry-run ---------------------------------------------------------


def documented_dry_run() -> object:
    """The dry-run output docs/formats.md shows for nightly.toml."""
    text = (REPO / "docs" / "formats.md").read_text(encoding="utf-8")
    match = re.search(
        r"For\s+`examples/formats/nightly.toml`:\s+```json\n(.*?)```", text, re.S
    )
    assert match, "docs/formats.md no longer shows the dry run of nightly.toml"
    return json.loads(match.group(1))


def job(name: str, posix: str, windows: str | None = None) -> dict[str, object]:
    cmd = {"posix": posix} if windows is None else {"posix": posix, "windows": windows}
    return {
        "cmd": cmd,
        "cwd": None,
        "env": {},
        "name": name,
        "retries": 0,
        "timeout": None,
    }


EXPECTED_DRY_RUN: dict[str, object] = {
    "nightly.amu": {
        "queue": "nightly",
        "jobs": [
            job("python-version", "python3 --version", "python3 --version"),
            job("disk-usage", "df -h .", "df -h ."),
            job("hello", "echo hello from amucrdt", "echo hello from amucrdt"),
        ],
    },
    "nightly.amu3": {
        "queue": "nightly",
        "jobs": [
            job("python-version", "python3 --version", "py --version"),
            job("disk-usage", "df -h .", "dir"),
            job("uptime", "uptime"),
        ],
    },
}


@pytest.mark.parametrize(
    "file", ["nightly.amu", "nightly.amu3", "nightly.toml", "nightly.json"]
)
def test_push_queue_dry_run_prints_the_documented_json(
    file: str, tmp_path: Path
) -> None:
    # No node and no data directory: a dry run talks to nobody.
    env = dict(os.environ, AMUCRDT_DATA_DIR=str(tmp_path / "none"))
    done = amucrdt("push", "queue", str(FORMATS / file), "--dry-run", env=env)
    expected = EXPECTED_DRY_RUN.get(file) or documented_dry_run()
    assert json.loads(ok(done)) == expected
    # Sorted keys, two spaces of indent: the form docs/formats.md shows.
    assert done.stdout == json.dumps(expected, indent=2, sort_keys=True) + "\n"
    assert not (tmp_path / "none").exists()


def test_push_queue_dry_run_reads_stdin_with_format_and_name() -> None:
    done = amucrdt(
        "push", "queue", "-", "--format", "amu", "--name", "piped", "--dry-run",
        stdin="a;echo a;b;echo b;",
    )  # fmt: skip
    assert json.loads(ok(done)) == {
        "queue": "piped",
        "jobs": [job("a", "echo a", "echo a"), job("b", "echo b", "echo b")],
    }


def test_push_queue_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    line = one_line_error(amucrdt("push", "queue", str(missing), "--dry-run"))
    assert line == f"{missing}: cannot read: No such file or directory"


# push queue to a node ---------------------------------------------------------


def test_push_queue_bad_file_reports_file_line_column_and_pushes_nothing(
    node: LocalNode, tmp_path: Path
) -> None:
    bad = write(
        tmp_path / "broken.toml",
        'name = "broken"\n\n[[job]]\nname = "ok"\ncommand = "true"\n\n'
        '[[job]]\nname = "bad"\ncommand = "true"\ntimeout = "soon"\n',
    )
    line = one_line_error(amucrdt("push", "queue", str(bad), *on(node)))
    assert re.fullmatch(rf"{re.escape(str(bad))}:10:1: job 'bad': timeout .+", line)
    assert "broken" not in status_json(node)["queues"]
    dump = json.loads(ok(amucrdt("dump", "--json", *on(node))))
    assert "broken" not in dump["document"]["queues"]
    assert not any(key.startswith("broken/") for key in dump["document"]["jobs"])


def test_push_queue_then_wait_reports_every_job_done(
    node: LocalNode, tmp_path: Path
) -> None:
    queue = write(tmp_path / "three.amu", "one;echo one;two;echo two;three;echo three;")
    assert ok(amucrdt("push", "queue", str(queue), *on(node))) == (
        "queue three: 3 jobs pushed\n"
    )
    assert ok(amucrdt("push", "queue", str(queue), *on(node))) == (
        "queue three: 3 jobs, already pushed\n"
    )
    done = amucrdt("wait", "three", "--timeout", "300", *on(node))
    assert ok(done) == "queue three: 3 done, 0 failed of 3\n"


def test_push_queue_with_the_same_name_and_other_jobs_is_refused(
    node: LocalNode, tmp_path: Path
) -> None:
    first = write(tmp_path / "same.amu", "a;true;")
    second = write(tmp_path / "other.amu", "b;true;")
    ok(amucrdt("push", "queue", str(first), *on(node)))
    line = one_line_error(
        amucrdt("push", "queue", str(second), "--name", "same", *on(node))
    )
    assert "queue 'same' already exists with other jobs" in line
    assert "--name" in line


def test_push_queue_json_reports_the_push(node: LocalNode, tmp_path: Path) -> None:
    queue = write(tmp_path / "pj.amu", "x;true;")
    out = ok(amucrdt("push", "queue", str(queue), "--json", *on(node)))
    assert json.loads(out) == {"queue": "pj", "jobs": 1, "new": True}


# wait -------------------------------------------------------------------------


def test_wait_exits_1_and_names_the_failed_job(node: LocalNode, tmp_path: Path) -> None:
    queue = write(tmp_path / "mixed.amu", "fine;true;broken;exit 7;")
    ok(amucrdt("push", "queue", str(queue), *on(node)))
    done = amucrdt("wait", "mixed", "--timeout", "300", *on(node))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == (
        "queue mixed: 1 done, 1 failed of 2\n"
        "  failed: broken (attempt 1, exit code 7)\n"
    )
    assert "Traceback" not in done.stderr


def test_wait_json_lists_the_jobs(node: LocalNode, tmp_path: Path) -> None:
    queue = write(tmp_path / "wj.amu", "only;exit 3;")
    ok(amucrdt("push", "queue", str(queue), *on(node)))
    done = amucrdt("wait", "wj", "--json", "--timeout", "300", *on(node))
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["queue"] == "wj"
    assert result["totals"]["failed"] == 1
    assert [(j["name"], j["state"], j["exit_code"]) for j in result["jobs"]] == [
        ("only", "failed", 3)
    ]


def test_wait_exits_3_on_timeout_while_a_job_runs(
    node: LocalNode, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    queue = write(
        tmp_path / "gated.amu",
        f"|held|while [ ! -e {gate} ]; do sleep 0.05; done|",
    )
    ok(amucrdt("push", "queue", str(queue), *on(node)))
    try:
        done = amucrdt("wait", "gated", "--timeout", "1", *on(node))
        assert done.returncode == 3, done.stdout + done.stderr
        assert done.stdout == ""
        last = done.stderr.splitlines()[-1]
        assert last.startswith("amucrdt: timed out after 1s; gated: 0/1 finished")
        assert "Traceback" not in done.stderr
    finally:
        gate.touch()
    assert ok(amucrdt("wait", "gated", "--timeout", "300", *on(node))) == (
        "queue gated: 1 done, 0 failed of 1\n"
    )


def test_wait_for_a_queue_nobody_pushed_times_out_saying_so(node: LocalNode) -> None:
    done = amucrdt("wait", "never-pushed", "--timeout", "0.5", *on(node))
    assert done.returncode == 3
    assert done.stderr.splitlines()[-1] == (
        "amucrdt: timed out after 0.5s; never-pushed: waiting for the queue to "
        "reach this node"
    )


# status and dump --------------------------------------------------------------


def test_status_shows_jobs_queues_and_peers(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    node, other = cluster.nodes
    queue = write(tmp_path / "shown.amu", "visible;echo visible;")
    ok(amucrdt("push", "queue", str(queue), *on(node)))
    ok(amucrdt("wait", "shown", "--timeout", "300", *on(node)))
    out = ok(amucrdt("status", "--queue", "shown", *on(node)))
    node_id = json.loads((node.data_dir / "node.json").read_text())["node_id"]
    other_id = json.loads((other.data_dir / "node.json").read_text())["node_id"]
    assert out.startswith(f"node {node_id[:12]} at {node.url}, amucrdt {__version__}")
    assert re.search(r"^JOB +STATE +NODE +ATTEMPT +EXIT +DURATION$", out, re.M)
    assert re.search(r"^shown/visible +done +[0-9a-f]{12} +1 +0 +\d", out, re.M)
    assert re.search(r"^shown +1 +0 +0 +0 +1 +0$", out, re.M)
    assert re.search(rf"^{other_id[:12]} +{other.url} +{__version__} +up ", out, re.M)


def test_status_json_has_the_stable_keys(node: LocalNode, tmp_path: Path) -> None:
    queue = write(tmp_path / "keys.amu", "k;true;")
    ok(amucrdt("push", "queue", str(queue), *on(node)))
    ok(amucrdt("wait", "keys", "--timeout", "300", *on(node)))
    status = status_json(node)
    assert {"node", "peers", "queues", "jobs", "stats"} <= set(status)
    assert {
        "id", "address", "version", "newest_version_seen", "schema", "slots",
        "running", "accepting", "heads",
    } <= set(status["node"])  # fmt: skip
    assert status["node"]["schema"] == SCHEMA_VERSION
    assert status["queues"]["keys"] == {
        "total": 1, "pending": 0, "claimed": 0, "running": 0, "done": 1, "failed": 0,
    }  # fmt: skip
    row = next(j for j in status["jobs"] if j["queue"] == "keys")
    assert set(row) == {
        "job", "queue", "name", "state", "node", "attempt", "exit_code",
        "started", "ended", "duration", "error",
    }  # fmt: skip
    assert (row["job"], row["state"], row["exit_code"]) == ("keys/k", "done", 0)
    # The columns of `status` and the extra keys docs/operations.md lists.
    peer = status["peers"][0]
    assert {
        "node", "address", "version", "up", "last_heard", "in_sync",
        "connected", "hostname", "os", "running",
    } <= set(peer)  # fmt: skip
    assert {
        "claims", "won", "lost", "withdrawn", "takeovers", "started", "finished",
        "resets", "rebuilds", "settle_p50", "settle_p99", "settle_max",
    } <= set(status["stats"])  # fmt: skip


def test_dump_json_is_the_merged_document(node: LocalNode, tmp_path: Path) -> None:
    queue = write(tmp_path / "dumped.amu", "d;true;")
    ok(amucrdt("push", "queue", str(queue), *on(node)))
    ok(amucrdt("wait", "dumped", "--timeout", "300", *on(node)))
    dump = json.loads(ok(amucrdt("dump", "--json", *on(node))))
    assert set(dump) == {"node", "schema", "heads", "document"}
    assert dump["schema"] == SCHEMA_VERSION
    assert all(re.fullmatch(r"[0-9a-f]{64}", head) for head in dump["heads"])
    document = dump["document"]
    assert set(ROOT_MAPS) <= set(document)
    assert document["queues"]["dumped"]["jobs"] == ["d"]
    results = [k for k in document["results"] if k.endswith(":dumped/d")]
    assert len(results) == 1
    assert document["results"][results[0]]["state"] == "done"


def test_dump_data_dir_reads_a_stopped_node(tmp_path: Path) -> None:
    solo = LocalCluster(tmp_path / "solo", 1)
    node = solo.nodes[0]
    try:
        solo.start()
        queue = write(tmp_path / "kept.amu", "saved;echo saved;")
        ok(amucrdt("push", "queue", str(queue), *on(node)))
        ok(amucrdt("wait", "kept", "--timeout", "300", *on(node)))
        assert node.stop() == 0
    finally:
        solo.close()
    data = str(node.data_dir)
    dump = json.loads(ok(amucrdt("dump", "--data-dir", data, "--json")))
    assert dump["node"] is None
    assert dump["document"]["queues"]["kept"]["jobs"] == ["saved"]
    assert [r["state"] for r in dump["document"]["results"].values()] == ["done"]

    text = ok(amucrdt("dump", "--data-dir", data))
    assert text.startswith(f"schema {SCHEMA_VERSION}, heads ")
    assert "\nqueues (1)\n  kept: " in text
    assert "\nresults (1)\n" in text
    assert re.search(r"^  1:[0-9a-f]{32}:kept/saved: \{", text, re.MULTILINE)


def test_dump_data_dir_of_an_empty_folder_is_one_clear_error(tmp_path: Path) -> None:
    line = one_line_error(amucrdt("dump", "--data-dir", str(tmp_path), "--json"))
    assert line.startswith(f"{tmp_path}: no document")


# Reaching a node --------------------------------------------------------------


def test_unreachable_node_is_one_clear_line(node: LocalNode) -> None:
    port = free_port()  # nothing listens there
    secret = str(node.data_dir / "secret")
    done = amucrdt("status", "--to", f"127.0.0.1:{port}", "--secret-file", secret)
    line = one_line_error(done)
    assert line.startswith(f"cannot reach node at ws://127.0.0.1:{port}: ")
    assert line.endswith("is `amucrdt node` running there?")


def test_wrong_secret_is_one_clear_line(node: LocalNode, tmp_path: Path) -> None:
    wrong = write(tmp_path / "wrong.secret", os.urandom(32).hex() + "\n")
    os.chmod(wrong, 0o600)
    done = amucrdt("status", "--to", node.url, "--secret-file", str(wrong))
    line = one_line_error(done)
    assert node.url in line
    assert "secret" in line


def test_no_data_dir_says_how_to_make_one(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    line = one_line_error(amucrdt("status", "--data-dir", str(missing)))
    assert line == (
        f"data directory {missing} does not exist; "
        f"run `amucrdt init --data-dir {missing}`"
    )


def test_debug_shows_the_traceback(node: LocalNode) -> None:
    port = free_port()
    secret = str(node.data_dir / "secret")
    done = amucrdt(
        "--debug", "status", "--to", f"127.0.0.1:{port}", "--secret-file", secret
    )
    assert done.returncode != 0
    assert "Traceback" in done.stderr


# push hosts -------------------------------------------------------------------


def test_push_hosts_bad_file_names_the_line(node: LocalNode, tmp_path: Path) -> None:
    hosts = write(tmp_path / "hosts.txt", "# peers\n127.0.0.1:1\n127.0.0.1:70000\n")
    line = one_line_error(amucrdt("push", "hosts", str(hosts), *on(node)))
    assert re.fullmatch(rf"{re.escape(str(hosts))}:3:\d+: port 70000 .+", line)
    dump = json.loads(ok(amucrdt("dump", "--json", *on(node))))
    assert "ws://127.0.0.1:1" not in dump["document"]["addresses"]


def test_push_hosts_adds_canonical_addresses(node: LocalNode, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there; the node keeps trying
    hosts = write(tmp_path / "more.txt", f"# spare\n127.0.0.1:{port}\n")
    out = ok(amucrdt("push", "hosts", str(hosts), *on(node)))
    assert out.startswith("1 new of 1 hosts; cluster knows:\n")
    assert f"\n  ws://127.0.0.1:{port}\n" in out
    again = json.loads(ok(amucrdt("push", "hosts", str(hosts), "--json", *on(node))))
    assert again["added"] == []
    assert f"ws://127.0.0.1:{port}" in again["known"]


# node -------------------------------------------------------------------------


def test_node_with_a_bad_listen_address_is_one_line_and_creates_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "never"
    done = amucrdt("node", "--data-dir", str(data), "--listen", "nowhere")
    assert one_line_error(done) == (
        "--listen 'nowhere': expected HOST:PORT, e.g. 127.0.0.1:7077"
    )
    assert not data.exists()


def test_node_on_a_data_dir_in_use_is_one_clear_error(node: LocalNode) -> None:
    done = amucrdt(
        "node",
        *on(node),
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--log-level",
        "error",
    )
    line = one_line_error(done)
    assert line.startswith(f"data directory {node.data_dir} is in use by another node")
