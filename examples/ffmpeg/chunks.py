"""Encode a video in parallel chunks on an amucrdt cluster, then join and check it.

    python examples/ffmpeg/chunks.py make --out /shared/enc --chunks 8
    amucrdt push queue /shared/enc/queue.json
    amucrdt wait ffmpeg-chunks
    python examples/ffmpeg/chunks.py check --out /shared/enc

``make`` renders a test video with ffmpeg's built-in ``testsrc`` source (no
download) into ``<out>/source.mkv`` and writes ``<out>/queue.json``: one job
per chunk, each encoding its own ``-ss``/``-t`` segment of the source to
``<out>/chunk-NNN.mkv``. Chunk boundaries fall on whole frames, so the chunks
hold every frame of the source exactly once.

``check`` is the final step: it counts each chunk's frames with ffprobe,
joins the chunks with ffmpeg's concat demuxer (no re-encoding) into
``<out>/joined.mkv``, and checks the joined frame count and duration against
the source. It exits 0 when everything matches, 1 when something does not,
and 2 when it cannot run (ffmpeg missing, ``make`` not run).

Every node runs the jobs with its own ffmpeg and reads and writes ``<out>``,
so on several machines ``<out>`` must be a folder they all share (NFS, SMB).
Needs only the Python standard library and ffmpeg.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

QUEUE = "ffmpeg-chunks"
FPS = 25  # frames per second of the test video: 1/25 s is an exact decimal
MANIFEST = "chunks.json"


class Failure(Exception):
    """Something the user must fix before the step can run."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Failure(
            f"{name} not found on PATH; install it with: apt-get install ffmpeg"
        )
    return path


def _seconds(frames: int) -> str:
    # With 25 frames a second every frame boundary is an exact decimal.
    return f"{frames / FPS:.6f}"


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise Failure(f"{shlex.join(argv[:3])} ... failed ({done.returncode}): {last}")
    return done.stdout


def chunk_command(
    source: Path, target: Path, first: int, count: int, codec: str
) -> str:
    """The shell command that encodes frames [first, first + count) of source."""
    return shlex.join(
        [
            "ffmpeg", "-nostdin", "-y", "-loglevel", "error",
            "-ss", _seconds(first), "-t", _seconds(count), "-i", str(source),
            "-an", "-c:v", codec, "-pix_fmt", "yuv420p", str(target),
        ]
    )  # fmt: skip


def make(out: Path, chunks: int, seconds: int, size: str, codec: str) -> None:
    """Render the test video and write the queue and the manifest into ``out``."""
    if chunks < 1 or seconds < 1:
        raise Failure("--chunks and --seconds must be at least 1")
    total = seconds * FPS
    if chunks > total:
        raise Failure(f"--chunks {chunks}: the video has only {total} frames")
    ffmpeg = _tool("ffmpeg")
    out = out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    source = out / "source.mkv"
    # FFV1 is lossless and every frame is a key frame, so each chunk job can
    # seek straight to its first frame.
    _run(
        [
            ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi",
            "-i", f"testsrc=duration={seconds}:size={size}:rate={FPS}",
            "-c:v", "ffv1", str(source),
        ]
    )  # fmt: skip
    jobs, parts = [], []
    for index in range(chunks):
        first = index * total // chunks
        count = (index + 1) * total // chunks - first
        target = out / f"chunk-{index:03d}.mkv"
        name = f"chunk-{index:03d}"
        jobs.append(
            {
                "name": name,
                "command": {
                    "posix": chunk_command(source, target, first, count, codec)
                },
            }
        )
        parts.append(
            {"name": name, "file": target.name, "first": first, "frames": count}
        )
    queue = {"name": QUEUE, "defaults": {"timeout": 600}, "jobs": jobs}
    (out / "queue.json").write_text(json.dumps(queue, indent=2) + "\n")
    manifest = {"fps": FPS, "frames": total, "chunks": parts}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{source}: {total} frames, {seconds} s at {FPS} fps, {size}")
    print(f"{out / 'queue.json'}: queue {QUEUE} of {chunks} chunk jobs ({codec})")


def _probe(path: Path) -> tuple[int, float]:
    """The number of video frames in ``path`` and its duration in seconds."""
    text = _run(
        [
            _tool("ffprobe"), "-v", "error", "-select_streams", "v:0",
            "-count_frames", "-show_entries", "stream=nb_read_frames:format=duration",
            "-of", "json", str(path),
        ]
    )  # fmt: skip
    info = json.loads(text)
    return int(info["streams"][0]["nb_read_frames"]), float(info["format"]["duration"])


def check(out: Path) -> bool:
    """Join the chunks and check them; True when every count matches."""
    out = out.absolute()
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except OSError as exc:
        raise Failure(f"{out / MANIFEST}: {exc.strerror}; run make first") from None
    ok = True
    for part in manifest["chunks"]:
        path = out / part["file"]
        if not path.exists():
            print(f"missing: {path} (did job {part['name']} run?)")
            ok = False
            continue
        frames, _ = _probe(path)
        if frames != part["frames"]:
            print(f"wrong: {path}: {frames} frames, expected {part['frames']}")
            ok = False
    if not ok:
        return False

    # The final step: join without re-encoding.
    listing = out / "concat.txt"
    listing.write_text("".join(f"file '{p['file']}'\n" for p in manifest["chunks"]))
    joined = out / "joined.mkv"
    _run(
        [
            _tool("ffmpeg"), "-nostdin", "-y", "-loglevel", "error",
            "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(joined),
        ]
    )  # fmt: skip
    frames, duration = _probe(joined)
    expected_frames = manifest["frames"]
    expected_duration = expected_frames / manifest["fps"]
    print(
        f"joined {len(manifest['chunks'])} chunks into {joined}: {frames} frames, "
        f"{duration:.2f} s (expected {expected_frames} frames, "
        f"{expected_duration:.2f} s)"
    )
    # One frame of slack: containers round timestamps to their own time base.
    if frames != expected_frames or abs(duration - expected_duration) > 1 / FPS:
        print("FAIL: the joined video does not match the source")
        return False
    print("OK: every frame of the source is in the joined video exactly once")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Encode a test video in parallel chunks with amucrdt."
    )
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("make", help="render the test video, write the queue")
    p.add_argument("--out", required=True, type=Path, help="folder every node shares")
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--seconds", type=int, default=20, help="length of the video")
    p.add_argument("--size", default="640x360", help="WIDTHxHEIGHT")
    p.add_argument("--codec", default="libx264", help="ffmpeg video encoder")
    p = sub.add_parser("check", help="join the chunks and check frames and duration")
    p.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        if args.step == "make":
            make(args.out, args.chunks, args.seconds, args.size, args.codec)
            return 0
        return 0 if check(args.out) else 1
    except Failure as exc:
        print(f"chunks.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
