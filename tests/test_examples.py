"""The examples do real work on real input, through real nodes.

Each example's README is executed as written (its ```` ```sh test ```` blocks),
with ``/tmp/`` moved into a temporary folder and ports 7071 to 7073 moved to
free ports on 127.0.0.1. The checks of each example are also shown to catch
a wrong result, so that their "OK" means something.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from markdown_blocks import BlockRunner, free_port, read_blocks

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
CHECKSUMS = EXAMPLES / "checksums" / "checksums.py"
CHUNKS = EXAMPLES / "ffmpeg" / "chunks.py"

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg and ffprobe are not on PATH (apt-get install ffmpeg)",
)


def local_substitute(tmp: Path) -> Callable[[str, str | None], str]:
    ports = {n: free_port() for n in range(1, 10)}

    def substitute(text: str, machine: str | None) -> str:
        text = text.replace("/tmp/", f"{tmp}/")
        for n, port in ports.items():
            text = text.replace(f"127.0.0.1:707{n}", f"127.0.0.1:{port}")
        return text

    return substitute


def run_readme(readme: Path, tmp: Path) -> None:
    blocks = read_blocks(readme)
    runner = BlockRunner(tmp, REPO, local_substitute(tmp))
    try:
        ran = runner.run_all(blocks)
    finally:
        runner.close()
    assert ran >= 3, f"{readme}: expected tested blocks, ran {ran}"


def run(
    script: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an example script with this Python; never a traceback."""
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_checksums_readme_runs_on_three_local_nodes(tmp_path: Path) -> None:
    run_readme(EXAMPLES / "checksums" / "README.md", tmp_path)
    out = tmp_path / "checksums"
    assert len(list(out.glob("*.gz"))) == 200
    runs = (out / "runs.log").read_text().splitlines()
    assert len(runs) == 200
    assert len({line.split()[0] for line in runs}) == 200


@needs_ffmpeg
def test_ffmpeg_readme_encodes_chunks_on_three_nodes_and_joins_them(
    tmp_path: Path,
) -> None:
    run_readme(EXAMPLES / "ffmpeg" / "README.md", tmp_path)
    assert (tmp_path / "enc" / "joined.mkv").stat().st_size > 0


def _run_queue_by_hand(queue: Path) -> None:
    """Run every job's command of a queue under /bin/sh, as a node would."""
    from amucrdt.formats import load_queue

    for job in load_queue(str(queue)).jobs:
        env = dict(os.environ, AMUCRDT_JOB=job.name, AMUCRDT_ATTEMPT="1")
        env["AMUCRDT_NODE"] = "by-hand"
        subprocess.run(["/bin/sh", "-c", job.cmd["posix"]], env=env, check=True)


def test_checksums_check_catches_a_wrong_output_and_a_double_run(
    tmp_path: Path,
) -> None:
    out, queue = tmp_path / "out", tmp_path / "q.toml"
    make = ["make", "--out", str(out), "--queue", str(queue), "--files", "3"]
    made = run(CHECKSUMS, *make)
    assert made.returncode == 0, made.stderr
    _run_queue_by_hand(queue)
    good = run(CHECKSUMS, "check", "--out", str(out))
    assert good.returncode == 0, good.stdout
    assert good.stdout.startswith("OK: 3 files match a sequential run")

    first = sorted(out.glob("*.gz"))[0]
    first.write_bytes(first.read_bytes()[:-12] + b"\0" * 12)
    runs = out / "runs.log"
    runs.write_text(runs.read_text() + runs.read_text().splitlines()[1] + "\n")
    bad = run(CHECKSUMS, "check", "--out", str(out))
    assert bad.returncode == 1
    name = first.name.removesuffix(".gz")
    assert f"mismatch: {name}: " in bad.stdout
    assert "ran 2 times" in bad.stdout
    assert "FAIL: 1 of 3 files differ" in bad.stdout


def test_checksums_check_without_make_says_what_to_do(tmp_path: Path) -> None:
    done = run(CHECKSUMS, "check", "--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "corpus.jsonl" in done.stderr


@needs_ffmpeg
def test_ffmpeg_check_reports_a_chunk_that_was_never_encoded(tmp_path: Path) -> None:
    made = run(
        CHUNKS, "make", "--out", str(tmp_path), "--chunks", "2", "--seconds", "1"
    )
    assert made.returncode == 0, made.stderr
    done = run(CHUNKS, "check", "--out", str(tmp_path))
    assert done.returncode == 1
    assert f"missing: {tmp_path / 'chunk-000.mkv'} (did job chunk-000 run?)" in (
        done.stdout
    )


def test_ffmpeg_make_without_ffmpeg_says_how_to_install_it(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = run(
        CHUNKS,
        "make",
        "--out",
        str(tmp_path / "enc"),
        env=dict(os.environ, PATH=str(empty)),
    )
    assert done.returncode == 2
    assert done.stderr == (
        "chunks.py: error: ffmpeg not found on PATH; install it with: "
        "apt-get install ffmpeg\n"
    )
