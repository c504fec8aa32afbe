"""The checksum workload: hash and compress every file of a corpus, one job each.

This is the queue that ``amucrdt demo`` runs and ``examples/checksums``
describes. Each job reads one source file and writes two outputs::

    <out>/<name>.sha256   the file's SHA-256, as ``sha256sum`` prints it
    <out>/<name>.gz       the file compressed with gzip

and, first of all, appends one line ``<job> <attempt> <node>`` to a shared
run log, so how many times each job really ran can be counted from outside
the cluster. The commands are plain POSIX shell (``sha256sum`` or
``shasum -a 256``, and ``gzip``), the way a user would write them.

:func:`verify` checks the outputs against a sequential run of the same work
done in this process with :mod:`hashlib` and :mod:`gzip`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shlex
import shutil
import sys
import sysconfig
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from amucrdt.errors import AmucrdtError
from amucrdt.formats import JobSpec, QueueSpec, load_queue

#: Files a queue holds unless told otherwise.
DEFAULT_LIMIT = 200

#: Name of the queue.
QUEUE_NAME = "checksums"

#: Seconds one job may run.
JOB_TIMEOUT = 120.0

# Directories of the standard library that are not its own sources.
_SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests"}

# Larger files would make one job dominate a small demo.
_MAX_FILE_BYTES = 512 * 1024


@dataclass(frozen=True)
class SourceFile:
    """One file of the corpus and the job name it is known by."""

    name: str
    path: Path


def stdlib_dir() -> Path:
    """The directory of this Python's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def find_corpus(root: Path, limit: int = DEFAULT_LIMIT) -> list[SourceFile]:
    """Pick up to ``limit`` ``.py`` files under ``root``, the same ones each time.

    Files nearer the top come first, then by path; test suites, installed
    packages and files over 512 KiB are left out. A file's name is its path
    below ``root`` with ``/`` turned into ``.`` (``json/decoder.py`` becomes
    ``json.decoder.py``), so every output sits directly in the output folder.

    Raises:
        AmucrdtError: ``limit`` is below 1, or ``root`` holds no such file.
    """
    if limit < 1:
        raise AmucrdtError(f"the number of files must be at least 1, not {limit}")
    found: list[tuple[int, str, Path]] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _SKIPPED_DIRS]
        for file_name in files:
            path = Path(directory) / file_name
            if not file_name.endswith(".py") or not path.is_file():
                continue
            if path.stat().st_size > _MAX_FILE_BYTES:
                continue
            relative = path.relative_to(root)
            found.append((len(relative.parts), relative.as_posix(), path))
    found.sort()
    corpus: list[SourceFile] = []
    names: set[str] = set()
    for _depth, relative_text, path in found:
        name = relative_text.replace("/", ".")
        if name in names:
            continue
        names.add(name)
        corpus.append(SourceFile(name, path))
        if len(corpus) == limit:
            break
    if not corpus:
        raise AmucrdtError(f"no .py files found under {root}; give another corpus")
    return corpus


def _hash_tool() -> str:
    """The command that prints a file's SHA-256 on this machine."""
    if shutil.which("sha256sum"):
        return "sha256sum"
    if shutil.which("shasum"):
        return "shasum -a 256"
    raise AmucrdtError(
        "neither sha256sum nor shasum is on PATH; install coreutils or perl"
    )


def job_command(
    source: SourceFile, out: Path, run_log: Path, hash_tool: str = "sha256sum"
) -> str:
    """The shell command of one job."""
    src = shlex.quote(str(source.path))
    stem = shlex.quote(str(out / source.name))
    return (
        'printf \'%s %s %s\\n\' "$AMUCRDT_JOB" "$AMUCRDT_ATTEMPT" "$AMUCRDT_NODE" '
        f">> {shlex.quote(str(run_log))} && "
        f"{hash_tool} {src} > {stem}.sha256 && "
        f"gzip -c -n {src} > {stem}.gz"
    )


def make_queue(
    corpus: Sequence[SourceFile], out: Path, run_log: Path | None = None
) -> QueueSpec:
    """The queue that hashes and compresses ``corpus`` into ``out``.

    ``run_log`` defaults to ``<out>/runs.log``. Paths are made absolute, since
    a job runs in its node's working directory.

    Raises:
        AmucrdtError: no SHA-256 tool is on PATH.
    """
    out = out.absolute()
    log_path = (run_log or out / "runs.log").absolute()
    tool = _hash_tool()
    jobs = tuple(
        JobSpec(
            name=source.name,
            cmd={"posix": job_command(source, out, log_path, tool)},
            timeout=JOB_TIMEOUT,
        )
        for source in corpus
    )
    return QueueSpec(QUEUE_NAME, jobs)


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string, except that TOML also wants DEL
    # escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def queue_toml(spec: QueueSpec, corpus_root: Path, out: Path) -> str:
    """``spec`` as a TOML queue file that ``amucrdt push queue`` reads back."""
    lines = [
        f"# {len(spec.jobs)} files of {corpus_root}: SHA-256 and gzip of each,",
        f"# written to {out}.",
        "# Made by: python -m amucrdt.checksums make",
        f"name = {_toml_string(spec.name)}",
        "",
    ]
    for job in spec.jobs:
        lines.append("[[job]]")
        lines.append(f"name = {_toml_string(job.name)}")
        lines.append(f"command.posix = {_toml_string(job.cmd['posix'])}")
        if job.timeout is not None:
            lines.append(f"timeout = {job.timeout:g}")
        lines.append("")
    return "\n".join(lines)


def corpus_manifest(corpus: Sequence[SourceFile]) -> str:
    """The corpus as JSON lines (name and path), for :func:`verify` later."""
    return "".join(
        json.dumps({"name": s.name, "path": str(s.path)}) + "\n" for s in corpus
    )


def read_manifest(path: Path) -> list[SourceFile]:
    """Read what :func:`corpus_manifest` wrote.

    Raises:
        AmucrdtError: the file cannot be read or a line is not a record.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AmucrdtError(f"cannot read {path}: {exc.strerror}") from None
    corpus = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
            corpus.append(SourceFile(record["name"], Path(record["path"])))
        except (ValueError, KeyError, TypeError):
            raise AmucrdtError(
                f"{path}:{number}: not a corpus record; make the queue again"
            ) from None
    return corpus


@dataclass
class Verdict:
    """How the outputs of a run compare with a sequential run.

    Attributes:
        checked: files compared.
        mismatches: one line per file whose outputs are missing or differ.
        runs: how many times each job name appears in the run log.
    """

    checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    runs: Counter[str] = field(default_factory=Counter)

    def run_problems(self, corpus: Sequence[SourceFile]) -> list[str]:
        """Jobs that the run log shows ran other than exactly once."""
        problems = []
        for source in corpus:
            count = self.runs.get(source.name, 0)
            if count != 1:
                problems.append(f"{source.name}: ran {count} times")
        return problems


def sequential_digest(path: Path) -> tuple[str, bytes]:
    """The work of one job done here: the SHA-256 and the gzip bytes of ``path``."""
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), gzip.compress(data, mtime=0)


def verify(
    corpus: Sequence[SourceFile], out: Path, run_log: Path | None = None
) -> Verdict:
    """Compare the outputs in ``out`` with a sequential run over ``corpus``.

    A file passes when its ``.sha256`` names the digest that :mod:`hashlib`
    computes here and its ``.gz`` decompresses to the source's exact bytes
    (the same bytes that this process's own compression round-trips to).
    The run log (default ``<out>/runs.log``) is read into
    :attr:`Verdict.runs`; a missing log counts as no runs.
    """
    verdict = Verdict()
    for source in corpus:
        verdict.checked += 1
        digest, compressed = sequential_digest(source.path)
        original = gzip.decompress(compressed)
        sha_path = out / f"{source.name}.sha256"
        gz_path = out / f"{source.name}.gz"
        try:
            fields = sha_path.read_text(encoding="utf-8").split()
        except OSError as exc:
            verdict.mismatches.append(f"{source.name}: {sha_path}: {exc.strerror}")
            continue
        if not fields or fields[0] != digest:
            got = fields[0] if fields else "nothing"
            verdict.mismatches.append(
                f"{source.name}: sha256 {got}, a sequential run gives {digest}"
            )
            continue
        try:
            unpacked = gzip.decompress(gz_path.read_bytes())
        except (OSError, EOFError, zlib.error) as exc:
            # OSError covers a missing file and a bad gzip header; EOFError
            # and zlib.error a cut or damaged stream.
            reason = getattr(exc, "strerror", None) or str(exc)
            verdict.mismatches.append(f"{source.name}: {gz_path}: {reason}")
            continue
        if unpacked != original:
            verdict.mismatches.append(
                f"{source.name}: {gz_path} does not decompress to the source bytes"
            )
    log_path = run_log or out / "runs.log"
    if log_path.exists():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            job_name = line.rsplit(" ", 2)[0]
            verdict.runs[job_name] += 1
    return verdict


# Command line: python -m amucrdt.checksums make|check -----------------------


def _cmd_make(args: argparse.Namespace) -> int:
    root = Path(args.corpus) if args.corpus else stdlib_dir()
    out = Path(args.out).absolute()
    corpus = find_corpus(root, args.files)
    spec = make_queue(corpus, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text(corpus_manifest(corpus), encoding="utf-8")
    queue_path = Path(args.queue)
    queue_path.write_text(queue_toml(spec, root, out), encoding="utf-8")
    load_queue(str(queue_path))  # what push will read must parse
    print(f"{queue_path}: queue {spec.name} of {len(spec.jobs)} jobs over {root}")
    print(f"outputs go to {out}; check them with: check --out {out}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    out = Path(args.out).absolute()
    corpus = read_manifest(out / "corpus.jsonl")
    verdict = verify(corpus, out)
    for line in verdict.mismatches[:20]:
        print(f"mismatch: {line}")
    run_problems = verdict.run_problems(corpus)
    for line in run_problems[:20]:
        print(f"run count: {line}")
    if verdict.mismatches or run_problems:
        print(
            f"FAIL: {len(verdict.mismatches)} of {verdict.checked} files differ "
            f"from a sequential run; {len(run_problems)} jobs did not run exactly "
            "once"
        )
        return 1
    print(
        f"OK: {verdict.checked} files match a sequential run "
        "(sha256 equal, gzip round-trips); every job ran exactly once"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m amucrdt.checksums``: make the queue, or check its outputs."""
    parser = argparse.ArgumentParser(
        prog="python -m amucrdt.checksums",
        description="Make the checksum queue for a corpus, or check its outputs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="write the queue file")
    make.add_argument("--out", required=True, help="where the jobs write outputs")
    make.add_argument("--queue", default="checksums.toml", help="queue file to write")
    make.add_argument("--corpus", help="folder of .py files (default: the stdlib)")
    make.add_argument("--files", type=int, default=DEFAULT_LIMIT, help="how many")
    make.set_defaults(func=_cmd_make)
    check = sub.add_parser("check", help="compare outputs with a sequential run")
    check.add_argument("--out", required=True, help="the folder given to make")
    check.set_defaults(func=_cmd_check)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (AmucrdtError, OSError) as exc:
        print(f"checksums: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
