"""The benchmarks run end to end on real nodes and report every figure.

Each benchmark runs as a subprocess, as a user would run it, on a small
workload. The tests check what must hold whatever the machine's speed: the
exit status, no duplicate and no lost job, and a value for every figure in the
JSON report. Timings are reported by the benchmarks, never asserted here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"


def _rq_installed() -> bool:
    if shutil.which("redis-server") is None:
        return False
    try:
        import redis  # noqa: F401
        import rq  # noqa: F401
    except ImportError:
        return False
    return True


def run_bench(script: str, *args: str, timeout: float = 240) -> dict[str, Any]:
    out = Path(args[args.index("--out") + 1])
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quiet", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def assert_values(obj: dict[str, Any], paths: list[str]) -> None:
    """Every dotted path in ``paths`` leads to a value that is not None."""
    for path in paths:
        value: Any = obj
        for key in path.split("."):
            assert isinstance(value, dict) and key in value, f"{path}: no {key!r}"
            value = value[key]
        assert value is not None, f"{path} is null"


MACHINE_AND_VERSIONS = [
    "machine.cpu_model",
    "machine.cores",
    "machine.memory_bytes",
    "machine.kernel",
    "versions.python",
    "versions.amucrdt",
    "versions.automerge_crate",
    "versions.websockets",
]

RUN_FIGURES = [
    "claim_latency.p50",
    "claim_latency.p95",
    "claim_latency.p99",
    "claim_latency.max",
    "push_to_start.p50",
    "push_to_start.p99",
    "throughput_jobs_per_s",
    "collisions.jobs",
    "collisions.by_claimants",
    "collisions.won_by_rule",
    "duplicates",
    "lost",
    "convergence_s",
    "doc_bytes_per_job",
    "peak_rss_max_bytes",
    "claim_latency_over_round_trip.p50",
    "parameters.seed",
    "parameters.nodes",
    "parameters.jobs",
]


def check_collision_run(run: dict[str, Any], jobs: int) -> None:
    assert "error" not in run, run.get("error")
    assert_values(run, RUN_FIGURES)
    assert run["duplicates"] == 0
    assert run["lost"] == 0
    assert run["claim_latency"]["count"] >= jobs
    assert run["push_to_start"]["count"] == jobs
    assert all(size for size in run["doc_bytes_after_compaction"])
    assert all(rss for rss in run["peak_rss_bytes"])
    # Every collision was settled by the winner rule, so ran exactly once.
    assert run["collisions"]["won_by_rule"] == run["collisions"]["jobs"]


def test_collision_stress_runs_every_job_once_without_rq(tmp_path: Path) -> None:
    out = tmp_path / "collision.json"
    report = run_bench(
        "collision_stress.py",
        *("--nodes", "3", "--jobs", "100", "--no-redis"),
        *("--round-trips", "300", "--seed", "7", "--out", str(out)),
    )
    assert_values(report, [*MACHINE_AND_VERSIONS, "ws_round_trip.p50"])
    assert report["exit_status"] == 0
    [run] = report["runs"]
    check_collision_run(run, 100)
    assert "rq" not in run


@pytest.mark.skipif(not _rq_installed(), reason="redis-server or rq not installed")
def test_collision_stress_runs_the_same_jobs_through_rq(tmp_path: Path) -> None:
    out = tmp_path / "collision-rq.json"
    report = run_bench(
        "collision_stress.py",
        *("--nodes", "3", "--jobs", "100", "--round-trips", "300"),
        *("--out", str(out)),
    )
    [run] = report["runs"]
    check_collision_run(run, 100)
    assert_values(
        run,
        [
            "rq.push_to_start.p50",
            "rq.push_to_start.p99",
            "rq.throughput_jobs_per_s",
            "comparison.push_to_start_p50_ratio",
            "comparison.throughput_ratio",
        ],
    )
    assert run["rq"]["workers"] == 3
    assert run["rq"]["finished"] == 100
    assert run["rq"]["duplicates"] == 0
    assert run["rq"]["lost"] == 0
    assert report["versions"]["redis_server"] is not None


def test_collision_sweep_reports_growth_of_each_figure(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    report = run_bench(
        "collision_stress.py",
        *("--sweep", "--sweep-nodes", "2", "--sweep-jobs", "10,30", "--no-redis"),
        *("--round-trips", "100", "--out", str(out)),
    )
    assert [r["parameters"]["jobs"] for r in report["runs"]] == [10, 30]
    for run in report["runs"]:
        check_collision_run(run, run["parameters"]["jobs"])
    growth = report["growth"]
    assert growth["claim p50"]["jobs_exponent"] is not None
    # One node count only: nothing to say about growth with nodes.
    assert growth["claim p50"]["nodes_exponent"] is None


def test_catchup_brings_a_fresh_node_in_sync(tmp_path: Path) -> None:
    out = tmp_path / "catchup.json"
    report = run_bench("catchup.py", "--jobs", "200", "--out", str(out))
    [run] = report["runs"]
    assert_values(
        run,
        [
            "process_start_to_connected_s",
            "process_start_to_in_sync_s",
            "poll_resolution_s",
            "peak_rss_bytes.fresh",
            "build.method",
        ],
    )
    assert run["jobs"] == 200
    assert run["build"]["method"] == "direct"


def test_soak_reports_slopes_and_loses_no_job(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    report = run_bench(
        "soak.py",
        *("--seconds", "6", "--rate", "3", "--sample", "1", "--idle", "2"),
        *("--out", str(out)),
    )
    assert report["duplicates"] == 0
    assert report["lost"] == 0
    # Whole batches of 3, one a second while the stream runs.
    assert report["jobs_pushed"] > 0
    assert report["jobs_pushed"] % 3 == 0
    assert len(report["samples"]) >= 2
    assert_values(
        report["slopes"],
        [
            "rss_kib_per_min",
            "rss_bytes_per_job",
            "idle_rss_kib_per_min",
            "store_bytes_per_job",
            "backlog_jobs_per_min",
        ],
    )
    for name in ("rss_kib_per_min", "idle_rss_kib_per_min", "store_bytes_per_job"):
        assert all(v is not None for v in report["slopes"][name]), name
