"""``amucrdt demo`` runs to a verdict through the real entry point."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def amucrdt(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``amucrdt`` command of the Python that runs the tests."""
    script = Path(sys.executable).parent / "amucrdt"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "amucrdt"]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=900, check=False
    )


def folder_of(stdout: str) -> Path:
    match = re.search(r"^  folder : (.+)$", stdout, re.MULTILINE)
    assert match, stdout
    return Path(match.group(1))


def ports_of(stdout: str) -> list[int]:
    ports = [int(p) for p in re.findall(r"at ws://127\.0\.0\.1:(\d+)$", stdout, re.M)]
    assert len(ports) == 3, stdout
    return ports


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_demo_runs_every_job_once_matches_sequential_run_and_cleans_up() -> None:
    done = amucrdt("demo")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Traceback" not in done.stderr
    assert "corpus : 200 .py files of " in out
    assert "pushed queue checksums (200 jobs) to node0" in out
    assert "checksums: 200/200 finished (200 done, 0 failed" in out
    counts = [int(n) for n in re.findall(r"^  node\d  +(\d+) jobs$", out, re.M)]
    assert len(counts) == 3 and sum(counts) == 200, out
    assert "  ok    every job ran exactly once (document and run log)" in out
    assert "  ok    every result matches a sequential run (200 files)" in out
    assert "  ok    all 3 replicas hold the same document" in out
    assert out.rstrip().endswith(
        "PASS: 200 jobs ran exactly once across 3 nodes and every result "
        "matches a sequential run"
    )
    assert not folder_of(out).exists(), "the temporary folder was left behind"
    assert not any(accepts(port) for port in ports_of(out)), "a node still runs"


def test_demo_keep_leaves_logs_data_and_outputs() -> None:
    done = amucrdt("demo", "--jobs", "12", "--keep")
    folder = folder_of(done.stdout)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "PASS: 12 jobs ran exactly once across 3 nodes" in done.stdout
        assert f"kept {folder} (node logs node*.log" in done.stdout
        assert len(list((folder / "out").glob("*.sha256"))) == 12
        assert sorted(p.name for p in folder.glob("node*.log")) == [
            "node0.log",
            "node1.log",
            "node2.log",
        ]
        assert (folder / "checksums.toml").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("jobs", ["0", "-3"])
def test_demo_with_no_jobs_is_one_clear_error(jobs: str) -> None:
    done = amucrdt("demo", "--jobs", jobs)
    assert done.returncode == 2
    assert done.stderr == (
        f"amucrdt: error: --jobs {jobs}: the demo needs at least 1 job\n"
    )
    assert done.stdout == ""
