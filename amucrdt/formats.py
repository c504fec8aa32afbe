"""Queue files: the formats a user hands to ``amucrdt push queue``.

A queue file lists jobs: a name and a shell command (one for POSIX systems,
one for Windows, or one for both), with optional timeout, retries, working
directory and environment. Four formats are read:

``amu``
    Amu-chan's classic flat list ``name;command;name;command;...``. When the
    first non-blank character is not a letter, digit or underscore, it is the
    delimiter for the whole file instead of ``;``.
``amu3``
    The same with triplets ``name;posix command;windows command``.
``toml``
    Optional ``name``, optional ``[defaults]``, and ``[[job]]`` tables.
``json``
    ``{"name": ..., "defaults": {...}, "jobs": [...]}`` or a bare job list.

Parsing is all or nothing: a file with any fault yields no queue, and the
:class:`~amucrdt.errors.FormatError` raised names the file, line and column
of the first fault and, for a fault in a job, the job. When a file has more
than one fault, :class:`FormatErrors` carries them all.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
import tomllib
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from amucrdt.errors import FormatError
from amucrdt.textpos import (
    TOML_KEY,
    DocPath,
    Lines,
    Pos,
    Where,
    json_where,
    toml_where,
)

__all__ = [
    "FORMATS",
    "MAX_JOB_NAME",
    "MAX_RETRIES",
    "OS_NAMES",
    "QUEUE_NAME_RE",
    "FormatErrors",
    "JobSpec",
    "QueueSpec",
    "decode_utf8",
    "detect_format",
    "load_queue",
    "parse_queue",
    "validate_queue_name",
]

#: A queue name: 1 to 64 characters, starting with a letter or digit. Match
#: it with ``fullmatch``.
QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: The queue file formats, as accepted by ``--format``.
FORMATS = ("amu", "amu3", "toml", "json")

#: The operating system families a job may carry a command for.
OS_NAMES = ("posix", "windows")

#: Longest job name, in characters.
MAX_JOB_NAME = 256

#: Most retries a job may ask for.
MAX_RETRIES = 100

# How many faults FormatErrors prints; it keeps them all.
_SHOWN_FAULTS = 20

_EXTENSIONS = {
    ".amu": "amu",
    ".amu3": "amu3",
    ".toml": "toml",
    ".json": "json",
    ".txt": "amu",
}

# Keys of a job in a TOML or JSON queue file, and of its defaults.
_JOB_KEYS = ("name", "command", "timeout", "retries", "cwd", "env")
_DEFAULT_KEYS = ("timeout", "retries", "cwd", "env")

# Keys of a job as JobSpec.to_json writes it.
_WIRE_KEYS = ("name", "cmd", "timeout", "retries", "cwd", "env")


class FormatErrors(FormatError):
    """Several faults found in one file.

    It reads as its first fault: ``path``, ``line``, ``column`` and
    ``reason`` are those of the fault that comes first in the file, so code
    that handles one :class:`~amucrdt.errors.FormatError` needs nothing more.
    ``errors`` holds every fault, in file order, and ``str()`` lists them one
    per line.
    """

    def __init__(self, errors: Sequence[FormatError]) -> None:
        first = errors[0]
        super().__init__(first.path, first.reason, first.line, first.column)
        self.errors: tuple[FormatError, ...] = tuple(errors)

    def __str__(self) -> str:
        shown = [str(error) for error in self.errors[:_SHOWN_FAULTS]]
        hidden = len(self.errors) - len(shown)
        if hidden:
            shown.append(f"... and {hidden} more")
        return "\n".join(shown)


@dataclass(frozen=True)
class JobSpec:
    """One job of a queue, as the user described it.

    The constructor trusts its arguments; the parsers and :meth:`from_json`
    are what check them.

    Attributes:
        name: non-empty, at most 256 characters, no control characters and no
            surrounding whitespace; unique within its queue.
        cmd: the shell command per OS family, keyed by ``"posix"`` and/or
            ``"windows"``; at least one, never empty.
        timeout: seconds the command may run, > 0; None for no limit.
        retries: how many times a failed run is tried again, 0 to 100.
        cwd: the directory the command runs in on the node; None for the
            node's own working directory.
        env: variables added to the node's environment for the command.
    """

    name: str
    cmd: dict[str, str]
    timeout: float | None = None
    retries: int = 0
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """Return the job as a JSON-ready dict, always with every key."""
        return {
            "name": self.name,
            "cmd": dict(self.cmd),
            "timeout": self.timeout,
            "retries": self.retries,
            "cwd": self.cwd,
            "env": dict(self.env),
        }

    @classmethod
    def from_json(cls, obj: object, where: str) -> JobSpec:
        """Build a job from the dict :meth:`to_json` made, checking every field.

        Meant for data that came from elsewhere (a peer, a stored document):
        ``timeout``, ``retries``, ``cwd`` and ``env`` may be missing and take
        their defaults; ``name`` and ``cmd`` are required.

        Raises:
            FormatError: with ``where`` as its path, when ``obj`` is not a
                valid job; :class:`FormatErrors` when it has several faults.
        """
        faults = _Faults(where)
        job = _job_from_wire(obj, faults, "job")
        faults.check()
        assert job is not None  # no fault means a job was built
        return job


@dataclass(frozen=True)
class QueueSpec:
    """A parsed queue: its name and its jobs in file order."""

    name: str
    jobs: tuple[JobSpec, ...]

    def to_json(self) -> dict[str, object]:
        """Return ``{"name": ..., "jobs": [job.to_json(), ...]}``."""
        return {"name": self.name, "jobs": [job.to_json() for job in self.jobs]}

    @classmethod
    def from_json(cls, obj: object, where: str) -> QueueSpec:
        """Build a queue from the dict :meth:`to_json` made, checking it all.

        Raises:
            FormatError: with ``where`` as its path, when the queue name, a
                job, or the uniqueness of job names is wrong.
        """
        faults = _Faults(where)
        if not isinstance(obj, dict):
            raise FormatError(where, f"a queue must be an object, not {_kind(obj)}")
        for key in obj:
            if key not in ("name", "jobs"):
                faults.add(f"unknown queue key {_q(key)}")
        name = obj.get("name")
        if not isinstance(name, str):
            faults.add(f"queue name must be a string, not {_kind(name)}")
        else:
            problem = _queue_name_problem(name)
            if problem:
                faults.add(problem)
        raw_jobs = obj.get("jobs")
        jobs: list[JobSpec] = []
        if not isinstance(raw_jobs, list):
            faults.add(f"queue jobs must be a list, not {_kind(raw_jobs)}")
            raw_jobs = []
        seen: set[str] = set()
        for index, raw in enumerate(raw_jobs):
            job = _job_from_wire(raw, faults, f"job #{index + 1}")
            if job is None:
                continue
            if job.name in seen:
                faults.add(f"duplicate job name {_q(job.name)}")
            seen.add(job.name)
            jobs.append(job)
        if not raw_jobs and not faults.items:
            faults.add("empty queue: no jobs")
        faults.check()
        assert isinstance(name, str)
        return cls(name, tuple(jobs))


def validate_queue_name(name: str, where: str) -> str:
    """Return ``name`` if it is a valid queue name.

    A queue name is 1 to 64 ASCII letters, digits, ``.``, ``_`` or ``-``,
    starting with a letter or digit.

    Raises:
        FormatError: with ``where`` as its path, saying what is wrong.
    """
    problem = _queue_name_problem(name)
    if problem:
        raise FormatError(where, problem)
    return name


def decode_utf8(data: bytes, path: str) -> str:
    """Decode a file's bytes as UTF-8, dropping a leading byte order mark.

    Raises:
        FormatError: at the line and column (in characters) of the first byte
            that is not valid UTF-8.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FormatError(path, "the file is UTF-16; save it as UTF-8", 1, 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        # Everything before the bad byte decoded, so this cannot fail.
        before = data[line_start : exc.start].decode("utf-8")
        if line == 1:
            before = before.removeprefix("\ufeff")
        message = (
            f"invalid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        )
        raise FormatError(path, message, line, len(before) + 1) from None
    return text.removeprefix("\ufeff")


def detect_format(path: str, data: bytes) -> str:
    """Guess the format of a queue file; always returns one of :data:`FORMATS`.

    The extension decides first: ``.amu`` and ``.txt`` are amu, ``.amu3``,
    ``.toml`` and ``.json`` are what they say. Otherwise the first line that
    is neither blank nor a ``#`` comment decides: a TOML table header
    (``[[job]]``, ``[defaults]``) or a ``key = value`` line means toml, a
    line starting with ``{`` or ``[`` means json, anything else amu. amu3 is
    never guessed: a triplet file is a valid pair file too.
    """
    if path != "-":
        by_extension = _EXTENSIONS.get(PurePath(path).suffix.lower())
        if by_extension:
            return by_extension
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    for line in text.split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if _TOML_HEADER_LINE_RE.fullmatch(line):
            return "toml"
        if line[0] in "{[":
            return "json"
        if _looks_like_toml_pair(line):
            return "toml"
        return "amu"
    return "amu"


def parse_queue(
    data: bytes, path: str, fmt: str | None = None, name: str | None = None
) -> QueueSpec:
    """Parse a queue file's bytes.

    Args:
        data: the file's contents.
        path: the file as the user named it ("-" for standard input); used
            in messages, for detection by extension and for the queue name.
        fmt: one of :data:`FORMATS`, or None to call :func:`detect_format`.
        name: the queue name; when None, a top-level ``name`` in a TOML or
            JSON file, else the file name without its extension.

    Returns:
        The queue, every job checked.

    Raises:
        FormatError: for the first fault in the file (or in ``fmt`` or
            ``name``); :class:`FormatErrors` when there are several.
    """
    if fmt is None:
        fmt = detect_format(path, data)
    elif fmt not in FORMATS:
        raise FormatError(
            path, f"unknown queue format {fmt!r}; use one of {', '.join(FORMATS)}"
        )
    if name is not None:
        validate_queue_name(name, path)

    text = decode_utf8(data, path)
    faults = _Faults(path)
    file_name: str | None = None
    if fmt == "amu":
        jobs = _parse_amu(text, faults, 2)
    elif fmt == "amu3":
        jobs = _parse_amu(text, faults, 3)
    elif fmt == "toml":
        file_name, jobs = _parse_toml(text, faults)
    else:
        file_name, jobs = _parse_json(text, faults)

    queue_name = name or file_name
    if queue_name is None and not faults.items:
        # Only a file that reads cleanly is known to hold no name of its own.
        queue_name = _name_from_path(path, faults)
    faults.check()
    assert queue_name is not None  # no fault means a name was found
    return QueueSpec(queue_name, tuple(jobs))


#: Largest queue file read; a node refuses larger pushes anyway (--max-frame).
MAX_QUEUE_FILE = 32 * 1024 * 1024


def load_queue(path: str, fmt: str | None = None, name: str | None = None) -> QueueSpec:
    """Read and parse a queue file; ``"-"`` reads standard input.

    See :func:`parse_queue` for ``fmt`` and ``name``.

    Raises:
        FormatError: when the file cannot be read (naming the file and the
            reason) or has any fault.
    """
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_QUEUE_FILE + 1)
        else:
            with open(path, "rb") as file:
                data = file.read(MAX_QUEUE_FILE + 1)
    except OSError as exc:
        raise FormatError(path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_QUEUE_FILE:
        raise FormatError(
            path,
            f"larger than {MAX_QUEUE_FILE // (1024 * 1024)} MiB; split the queue "
            "into several files",
        )
    return parse_queue(data, path, fmt, name)


# ---------------------------------------------------------------------------
# Faults


class _Faults:
    """The faults found so far in one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.items: list[FormatError] = []

    def add(self, message: str, pos: Pos = None) -> None:
        line, column = pos if pos else (None, None)
        self.items.append(FormatError(self.path, message, line, column))

    def check(self) -> None:
        """Raise what was found, if anything, the first fault in the file first."""
        if not self.items:
            return
        # Faults without a line concern the whole file: they go last.
        ordered = sorted(
            self.items,
            key=lambda e: (e.line is None, e.line or 0, e.column or 0),
        )
        raise ordered[0] if len(ordered) == 1 else FormatErrors(ordered)


class _Invalid(Exception):
    """A value is wrong; the message says why, the caller says where."""


def _q(text: str) -> str:
    """Quote a name for a message, shortening a long one."""
    if len(text) > 60:
        text = text[:57] + "..."
    return repr(text)


def _kind(value: object, table: str = "an object") -> str:
    """Describe a value's type for a message, with the value when short."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        text = repr(value)
        return f"a number ({text})" if len(text) <= 20 else "a number"
    if isinstance(value, str):
        return f"a string ({_q(value)})"
    if isinstance(value, dict):
        return table
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return "a date or time"


# Names people reach for that spelling alone would not lead back to.
_ALIASES = {"cmd": "command", "commands": "command", "jobs": "job", "job": "jobs"}


def _suggest(word: str, choices: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for a close choice, else nothing."""
    choices = list(choices)
    if _ALIASES.get(word) in choices:
        return f"; did you mean {_ALIASES[word]!r}?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# Characters a job name may not hold: control characters (Cc), the line and
# paragraph separators, which break a line as a control character does, and
# lone surrogates, reachable through JSON escapes, which cannot be stored.
_BAD_NAME_CHAR_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


def _bad_char(text: str) -> str | None:
    """Name the first character a job name may not hold, if any."""
    match = _BAD_NAME_CHAR_RE.search(text)
    if not match:
        return None
    char = match.group()
    what = {
        "Zl": "the line separator",
        "Zp": "the paragraph separator",
        "Cs": "the lone surrogate",
    }.get(unicodedata.category(char), "the control character")
    return f"{what} U+{ord(char):04X}"


_QUEUE_NAME_RULE = (
    "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
)


def _queue_name_problem(name: str) -> str | None:
    if QUEUE_NAME_RE.fullmatch(name):
        return None
    if len(name) > 64:
        return f"queue name {_q(name)} is {len(name)} characters long; the limit is 64"
    return f"invalid queue name {_q(name)}: {_QUEUE_NAME_RULE}"


def _job_name_problem(name: str) -> str | None:
    if not name:
        return "empty job name"
    if len(name) > MAX_JOB_NAME:
        return (
            f"job name {_q(name)} is {len(name)} characters long; "
            f"the limit is {MAX_JOB_NAME}"
        )
    bad = _bad_char(name)
    if bad:
        return f"job name {_q(name)} contains {bad}"
    if name != name.strip():
        return f"job name {_q(name)} has leading or trailing whitespace"
    return None


def _text_problem(text: str) -> str | None:
    """Why a command, directory or variable cannot be handed to the OS."""
    if "\x00" in text:
        return "contains a NUL character"
    if _SURROGATE_RE.search(text):
        return "contains a lone surrogate"
    return None


# ---------------------------------------------------------------------------
# Options shared by TOML, JSON and the wire form. Each returns the checked
# value or raises _Invalid with what is wrong.


def _check_timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(
            f"timeout must be a positive number of seconds, not {_kind(value)}"
        )
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise _Invalid(f"timeout must be a positive number of seconds, not {value}")
    try:
        return float(value)
    except OverflowError:
        raise _Invalid("timeout is too large") from None


def _check_retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(
            f"retries must be a whole number from 0 to {MAX_RETRIES}, "
            f"not {_kind(value)}"
        )
    if not 0 <= value <= MAX_RETRIES:
        raise _Invalid(
            f"retries must be a whole number from 0 to {MAX_RETRIES}, not {value}"
        )
    return value


def _check_cwd(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"cwd must be a string, not {_kind(value)}")
    if not value:
        raise _Invalid("cwd is empty; leave it out to run in the node's directory")
    problem = _text_problem(value)
    if problem:
        raise _Invalid(f"cwd {problem}")
    return value


def _check_env(value: object, table: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Invalid(f"env must be {table} of strings, not {_kind(value, table)}")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not key or "=" in key or _text_problem(key):
            raise _Invalid(f"env has an invalid variable name {_q(key)}")
        if not isinstance(item, str):
            raise _Invalid(
                f"env {_q(key)} must be a string, not {_kind(item, table)} "
                "(quote the value)"
            )
        problem = _text_problem(item)
        if problem:
            raise _Invalid(f"env {_q(key)} {problem}")
        env[key] = item
    return env


def _check_command(value: object, table: str, key: str = "command") -> dict[str, str]:
    """Check a command: a string for every OS, or a per-OS table."""
    if isinstance(value, str):
        commands = {os_name: value for os_name in OS_NAMES}
    elif isinstance(value, dict):
        for os_name in value:
            if os_name not in OS_NAMES:
                raise _Invalid(
                    f"unknown {key} key {_q(os_name)}; use 'posix' and/or 'windows'"
                )
        if not value:
            empty = "an empty table" if table == "a table" else "an empty object"
            raise _Invalid(f"{key} is {empty}; give 'posix' and/or 'windows'")
        commands = {os_name: value[os_name] for os_name in OS_NAMES if os_name in value}
    else:
        raise _Invalid(
            f"{key} must be a string or {table} with 'posix' and/or 'windows', "
            f"not {_kind(value, table)}"
        )
    for os_name, command in commands.items():
        label = key if isinstance(value, str) else f"{key}.{os_name}"
        if not isinstance(command, str):
            raise _Invalid(f"{label} must be a string, not {_kind(command, table)}")
        if not command.strip():
            raise _Invalid(f"{label} is empty")
        problem = _text_problem(command)
        if problem:
            raise _Invalid(f"{label} {problem}")
    return commands


_OPTION_CHECKS: dict[str, Callable[[object], object]] = {
    "timeout": _check_timeout,
    "retries": _check_retries,
    "cwd": _check_cwd,
}


def _job_from_wire(obj: object, faults: _Faults, label: str) -> JobSpec | None:
    """Check one job in the wire form; add faults and return None if wrong."""
    if not isinstance(obj, dict):
        faults.add(f"{label} must be an object, not {_kind(obj)}")
        return None
    before = len(faults.items)
    name = obj.get("name")
    if not isinstance(name, str):
        faults.add(f"{label}: name must be a string, not {_kind(name)}")
    else:
        problem = _job_name_problem(name)
        if problem:
            faults.add(problem if name else f"{label}: {problem}")
        else:
            label = f"job {_q(name)}"
    for key in obj:
        if key not in _WIRE_KEYS:
            faults.add(f"{label}: unknown key {_q(key)}{_suggest(key, _WIRE_KEYS)}")
    values: dict[str, object] = {}
    try:
        values["cmd"] = _check_command(obj.get("cmd"), "an object", "cmd")
    except _Invalid as exc:
        faults.add(f"{label}: {exc}")
    for key, check in _OPTION_CHECKS.items():
        if obj.get(key) is not None:
            try:
                values[key] = check(obj[key])
            except _Invalid as exc:
                faults.add(f"{label}: {exc}")
    try:
        values["env"] = _check_env(obj.get("env", {}), "an object")
    except _Invalid as exc:
        faults.add(f"{label}: {exc}")
    if len(faults.items) > before:
        return None
    assert isinstance(name, str)
    return _make_job(name, values)


def _make_job(name: str, values: Mapping[str, object]) -> JobSpec:
    """Build a job from checked values."""
    cmd = values["cmd"]
    timeout = values.get("timeout")
    retries = values.get("retries", 0)
    cwd = values.get("cwd")
    env = values.get("env", {})
    assert isinstance(cmd, dict) and isinstance(env, dict)
    assert timeout is None or isinstance(timeout, float)
    assert isinstance(retries, int) and (cwd is None or isinstance(cwd, str))
    return JobSpec(name, cmd, timeout, retries, cwd, env)


def _name_from_path(path: str, faults: _Faults) -> str | None:
    """The queue name a file name gives, or a fault asking for --name."""
    if path == "-":
        faults.add("a queue read from standard input needs a name: pass --name")
        return None
    stem = PurePath(path).stem
    if not QUEUE_NAME_RE.fullmatch(stem):
        faults.add(
            f"the queue would be named after the file, but {_q(stem)} is not a "
            f"valid queue name ({_QUEUE_NAME_RULE}); pass --name"
        )
        return None
    return stem


# ---------------------------------------------------------------------------
# amu and amu3


def _parse_amu(text: str, faults: _Faults, width: int) -> list[JobSpec]:
    """Parse a flat delimited list of ``width`` fields per job."""
    lines = Lines(text)
    start = len(text) - len(text.lstrip())
    if start == len(text):
        faults.add("empty queue: the file has no jobs")
        return []
    delimiter = ";"
    if not (text[start].isalnum() or text[start] == "_"):
        delimiter = text[start]
        start += 1

    # Each field with the offset of its first non-blank character (or, for a
    # blank field, of where it starts).
    fields: list[tuple[str, int]] = []
    offset = start
    while True:
        end = text.find(delimiter, offset)
        raw = text[offset : len(text) if end < 0 else end]
        stripped = raw.strip()
        lead = len(raw) - len(raw.lstrip()) if stripped else 0
        fields.append((stripped, offset + lead))
        if end < 0:
            break
        offset = end + 1
    if not fields[-1][0]:
        fields.pop()  # the usual trailing delimiter
    if not fields:
        faults.add("empty queue: the file has no jobs")
        return []

    extra = len(fields) % width
    if extra:
        last, last_at = fields[len(fields) - extra]
        faults.add(
            _short_job_message(last, len(fields), width, delimiter, fields, lines),
            lines.at(last_at),
        )
        del fields[len(fields) - extra :]

    jobs: list[JobSpec] = []
    first_line: dict[str, int] = {}
    for index in range(0, len(fields), width):
        (name, name_at), *commands = fields[index : index + width]
        name_pos = lines.at(name_at)
        problem = _job_name_problem(name)
        if problem:
            faults.add(problem, name_pos)
            continue
        label = f"job {_q(name)}"
        if name in first_line:
            faults.add(
                f"duplicate job name {_q(name)} (first defined on line "
                f"{first_line[name]})",
                name_pos,
            )
            continue
        first_line[name] = name_pos[0]
        if width == 2:
            cmd = {os_name: commands[0][0] for os_name in OS_NAMES}
            if not commands[0][0]:
                faults.add(f"{label}: empty command", lines.at(commands[0][1]))
                continue
        else:
            cmd = {
                os_name: command
                for os_name, (command, _) in zip(OS_NAMES, commands, strict=True)
                if command
            }
            if not cmd:
                faults.add(
                    f"{label}: no command: the posix and windows fields are both empty",
                    name_pos,
                )
                continue
        bad = [(_text_problem(command), at) for command, at in commands]
        bad = [(why, at) for why, at in bad if why]
        if bad:
            faults.add(f"{label}: command {bad[0][0]}", lines.at(bad[0][1]))
            continue
        jobs.append(JobSpec(name, cmd))
    return jobs


def _short_job_message(
    name: str,
    count: int,
    width: int,
    delimiter: str,
    fields: Sequence[tuple[str, int]],
    lines: Lines,
) -> str:
    """Explain a field count that does not divide into whole jobs."""
    if width == 2:
        if not name:
            what = "an empty field after the last job (a doubled delimiter?)"
        else:
            what = f"job {_q(name)} has a name but no command"
        message = f"{what}: the file has an odd number of fields ({count})"
    else:
        have = count % 3
        shape = delimiter.join(("name", "posix command", "windows command"))
        who = f"job {_q(name)}" if name else "the last job"
        message = (
            f"{who} has {have} of its 3 fields ({shape}): the file has "
            f"{count} fields, not a multiple of 3"
        )
    # The usual causes: a line without its closing delimiter, which joins two
    # fields across the line break, or a delimiter inside a command.
    for text, at in fields:
        if "\n" in text:
            line = lines.at(at)[0]
            return (
                f"{message}; a field runs from line {line} onto the next: "
                f"does line {line} lack its closing {delimiter!r}?"
            )
    if delimiter == ";":
        message += (
            "; if a command contains ';', start the file with another "
            "delimiter, e.g. '|'"
        )
    return message


# ---------------------------------------------------------------------------
# TOML and JSON share one model: optional name, optional defaults, jobs.


def _read_document(
    doc: object, where: Where, faults: _Faults, fmt: str
) -> tuple[str | None, list[JobSpec]]:
    """Check a parsed TOML or JSON queue; return its name and jobs."""
    table = "a table" if fmt == "toml" else "an object"
    jobs_key = "job" if fmt == "toml" else "jobs"
    name: str | None = None
    defaults: dict[str, object] = {}
    raw_jobs: list[object] = []
    base: DocPath = ()

    if isinstance(doc, dict):
        top_keys = ("name", "defaults", jobs_key)
        for key in doc:
            if key not in top_keys:
                faults.add(
                    f"unknown top-level key {_q(key)}{_suggest(key, top_keys)}",
                    where.key((key,)),
                )
        name = _read_queue_name(doc, where, faults, table)
        if "defaults" in doc:
            defaults = _read_defaults(doc["defaults"], where, faults, table)
        found = doc.get(jobs_key)
        if isinstance(found, list):
            raw_jobs = found
        elif found is not None:
            shape = "[[job]] tables" if fmt == "toml" else "a list of job objects"
            faults.add(
                f"{jobs_key!r} must be {shape}, not {_kind(found, table)}",
                where.value((jobs_key,)),
            )
            return name, []
        base = (jobs_key,)
    elif isinstance(doc, list):
        raw_jobs = doc
    else:
        faults.add(
            "a JSON queue is an object with a 'jobs' list, or a list of job "
            f"objects; found {_kind(doc)}",
            where.value(()),
        )
        return None, []

    if not raw_jobs:
        hint = "add [[job]] tables" if fmt == "toml" else "add job objects"
        faults.add(f"empty queue: the file has no jobs ({hint})")
        return name, []

    jobs: list[JobSpec] = []
    first_at: dict[str, tuple[int, Pos]] = {}
    for index, raw in enumerate(raw_jobs):
        path = (*base, index)
        job = _read_job(raw, index, path, defaults, where, faults, table)
        if job is None:
            continue
        pos = where.value((*path, "name"))
        if job.name in first_at:
            first_index, first_pos = first_at[job.name]
            # Jobs written inline share a position; their numbers tell them apart.
            if first_pos and first_pos != pos:
                origin = f"on line {first_pos[0]}"
            else:
                origin = f"as job #{first_index + 1}"
            faults.add(
                f"duplicate job name {_q(job.name)} (first defined {origin})", pos
            )
            continue
        first_at[job.name] = (index, pos)
        jobs.append(job)
    return name, jobs


def _read_queue_name(
    doc: dict[str, object], where: Where, faults: _Faults, table: str
) -> str | None:
    if "name" not in doc:
        return None
    name = doc["name"]
    pos = where.value(("name",))
    if not isinstance(name, str):
        faults.add(f"queue name must be a string, not {_kind(name, table)}", pos)
        return None
    problem = _queue_name_problem(name)
    if problem:
        faults.add(problem, pos)
        return None
    return name


def _read_defaults(
    raw: object, where: Where, faults: _Faults, table: str
) -> dict[str, object]:
    """Check the defaults; return the valid ones (a wrong one is reported once)."""
    if not isinstance(raw, dict):
        faults.add(
            f"defaults must be {table}, not {_kind(raw, table)}",
            where.value(("defaults",)),
        )
        return {}
    defaults: dict[str, object] = {}
    for key, value in raw.items():
        pos = where.value(("defaults", key))
        if key not in _DEFAULT_KEYS:
            if key in ("name", "command"):
                message = f"defaults cannot set {key!r}: each job gives its own"
            else:
                message = f"unknown option {_q(key)} in defaults"
                message += _suggest(key, _DEFAULT_KEYS)
            faults.add(message, where.key(("defaults", key)))
            continue
        try:
            if key == "env":
                defaults[key] = _check_env(value, table)
            else:
                defaults[key] = _OPTION_CHECKS[key](value)
        except _Invalid as exc:
            faults.add(f"defaults: {exc}", pos)
    return defaults


def _read_job(
    raw: object,
    index: int,
    path: DocPath,
    defaults: Mapping[str, object],
    where: Where,
    faults: _Faults,
    table: str,
) -> JobSpec | None:
    """Check one TOML or JSON job; add faults and return None if it is wrong."""
    label = f"job #{index + 1}"
    if not isinstance(raw, dict):
        faults.add(
            f"{label} must be {table}, not {_kind(raw, table)}", where.value(path)
        )
        return None
    before = len(faults.items)

    name = raw.get("name")
    if name is None:
        faults.add(f"{label} has no name", where.value(path))
    elif not isinstance(name, str):
        faults.add(
            f"{label}: name must be a string, not {_kind(name, table)}",
            where.value((*path, "name")),
        )
    else:
        problem = _job_name_problem(name)
        if problem:
            message = problem if name else f"{label}: {problem}"
            faults.add(message, where.value((*path, "name")))
        else:
            label = f"job {_q(name)}"

    for key in raw:
        if key not in _JOB_KEYS:
            faults.add(
                f"unknown option {_q(key)} in {label}{_suggest(key, _JOB_KEYS)}",
                where.key((*path, key)),
            )

    values: dict[str, object] = {
        key: value for key, value in defaults.items() if key != "env"
    }
    if "command" not in raw:
        faults.add(f"{label} has no command", where.value(path))
    else:
        try:
            values["command"] = _check_command(raw["command"], table)
        except _Invalid as exc:
            faults.add(f"{label}: {exc}", where.value((*path, "command")))
    for key, check in _OPTION_CHECKS.items():
        if key in raw:
            try:
                values[key] = check(raw[key])
            except _Invalid as exc:
                faults.add(f"{label}: {exc}", where.value((*path, key)))
    env = defaults.get("env", {})
    assert isinstance(env, dict)
    if "env" in raw:
        try:
            env = {**env, **_check_env(raw["env"], table)}
        except _Invalid as exc:
            faults.add(f"{label}: {exc}", where.value((*path, "env")))
    values["env"] = env

    if len(faults.items) > before:
        return None
    assert isinstance(name, str)
    values["cmd"] = values.pop("command")
    return _make_job(name, values)


# ---------------------------------------------------------------------------
# TOML

_TOML_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_TOML_KEY = rf"{_TOML_KEY_PART}(?:[ \t]*\.[ \t]*{_TOML_KEY_PART})*"
_TOML_KEY_PART_RE = re.compile(_TOML_KEY_PART)
_TOML_HEADER_RE = re.compile(rf"[ \t]*(\[\[?)[ \t]*({TOML_KEY})[ \t]*\]\]?")
_TOML_PAIR_RE = re.compile(rf"[ \t]*({TOML_KEY})[ \t]*=")
_TOML_HEADER_LINE_RE = re.compile(
    rf"(?:\[\[[ \t]*{TOML_KEY}[ \t]*\]\]|\[[ \t]*{TOML_KEY}[ \t]*\])"
    r"[ \t]*(?:#.*)?"
)
# What may follow "key =" in TOML: a string, array, table, number or boolean.
_TOML_PAIR_LINE_RE = re.compile(
    rf"{TOML_KEY}[ \t]*=[ \t]*"
    r"(?:[\"'\[{]|[+-]?(?:\d|inf\b|nan\b)|true\b|false\b)"
)
_TOML_STRINGS_RE = re.compile(r""""(?:[^"\\]|\\.)*"|'[^']*'""")
_TOML_ERROR_AT_RE = re.compile(
    r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)$"
)


def _looks_like_toml_pair(line: str) -> bool:
    # An amu line such as "a=1;echo" starts like a TOML pair; a ';' outside
    # quotes tells them apart.
    if not _TOML_PAIR_LINE_RE.match(line):
        return False
    return ";" not in _TOML_STRINGS_RE.sub("", line)


def _parse_toml(text: str, faults: _Faults) -> tuple[str | None, list[JobSpec]]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_ERROR_AT_RE.search(message)
        pos: Pos = None
        if match:
            message = message[: match.start()]
            if match.group(1):
                pos = (int(match.group(1)), int(match.group(2)))
            else:
                pos = Lines(text).at(len(text))
        faults.add(f"TOML syntax error: {message}", pos)
        return None, []
    except RecursionError:
        faults.add("TOML syntax error: values are nested too deeply")
        return None, []
    return _read_document(doc, toml_where(text), faults, "toml")


# ---------------------------------------------------------------------------
# JSON


def _parse_json(text: str, faults: _Faults) -> tuple[str | None, list[JobSpec]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        faults.add(f"JSON syntax error: {exc.msg}", (exc.lineno, exc.colno))
        return None, []
    except RecursionError:
        faults.add("JSON error: values are nested too deeply")
        return None, []
    except ValueError as exc:
        # Only limits end up here, such as the digits allowed in an integer.
        faults.add(f"JSON error: {exc}")
        return None, []
    where, repeats = json_where(text)
    for key, offset, first in repeats:
        faults.add(
            f"duplicate key {_q(key)} (first on line {where.at(first)[0]})",
            where.at(offset),
        )
    return _read_document(doc, where, faults, "json")
