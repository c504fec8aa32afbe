"""Queue files: every format's happy path, every fault with its position."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from markdown_blocks import read_blocks

from amucrdt.errors import FormatError
from amucrdt.formats import (
    FORMATS,
    QUEUE_NAME_RE,
    FormatErrors,
    JobSpec,
    QueueSpec,
    detect_format,
    load_queue,
    parse_queue,
    validate_queue_name,
)
from amucrdt.textpos import json_where, toml_where

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "formats"


def both(command: str) -> dict[str, str]:
    return {"posix": command, "windows": command}


def parse(text: str | bytes, fmt: str | None, path: str = "q.x") -> QueueSpec:
    data = text.encode() if isinstance(text, str) else text
    return parse_queue(data, path, fmt, name="q")


def fault(text: str | bytes, fmt: str | None, path: str = "q.x") -> FormatError:
    with pytest.raises(FormatError) as info:
        parse(text, fmt, path)
    return info.value


# ---------------------------------------------------------------------------
# Happy paths

HAPPY = [
    pytest.param(
        "amu",
        "build;make;\ntest;make test;\n",
        [JobSpec("build", both("make")), JobSpec("test", both("make test"))],
        id="amu-one-job-per-line",
    ),
    pytest.param(
        "amu",
        "build;make;test;make test",
        [JobSpec("build", both("make")), JobSpec("test", both("make test"))],
        id="amu-one-line-no-trailing-delimiter",
    ),
    pytest.param(
        "amu",
        "|build|make -j4; make test|lint|ruff .",
        [
            JobSpec("build", both("make -j4; make test")),
            JobSpec("lint", both("ruff .")),
        ],
        id="amu-delimiter-override-keeps-semicolons",
    ),
    pytest.param(
        "amu",
        "\n  !a!echo a; echo b!\n  b!echo c!\n",
        [JobSpec("a", both("echo a; echo b")), JobSpec("b", both("echo c"))],
        id="amu-delimiter-after-leading-blank",
    ),
    pytest.param(
        "amu",
        "\r\n  render 1 ;\r\n  blender -b a.blend ;\r\n\r\n  render 2;\r\n"
        "  blender -b b.blend;\r\n",
        [
            JobSpec("render 1", both("blender -b a.blend")),
            JobSpec("render 2", both("blender -b b.blend")),
        ],
        id="amu-multi-line-crlf-fields-stripped",
    ),
    pytest.param(
        "amu",
        "_x;echo ok",
        [JobSpec("_x", both("echo ok"))],
        id="amu-underscore-is-not-a-delimiter",
    ),
    pytest.param(
        "amu",
        "\ufeffa;b;",
        [JobSpec("a", both("b"))],
        id="amu-byte-order-mark-dropped",
    ),
    pytest.param(
        "amu3",
        "list;ls -l;dir;\ncopy;cp a b;copy a b;\n",
        [
            JobSpec("list", {"posix": "ls -l", "windows": "dir"}),
            JobSpec("copy", {"posix": "cp a b", "windows": "copy a b"}),
        ],
        id="amu3-triplets",
    ),
    pytest.param(
        "amu3",
        "winonly;;dir;\nposixonly;ls;;\n",
        [
            JobSpec("winonly", {"windows": "dir"}),
            JobSpec("posixonly", {"posix": "ls"}),
        ],
        id="amu3-one-os-only",
    ),
    pytest.param(
        "amu3",
        "|a|make; make test|nmake & nmake test|",
        [JobSpec("a", {"posix": "make; make test", "windows": "nmake & nmake test"})],
        id="amu3-delimiter-override",
    ),
    pytest.param(
        "toml",
        """\
name = "ignored-because-name-is-passed"

[defaults]
timeout = 60
retries = 2
cwd = "/srv/build"
env = { LANG = "C", JOBS = "4" }

[[job]]
name = "build"
command = "make -j$JOBS"

[[job]]
name = "test"
command = { posix = "make test", windows = "nmake test" }
timeout = 600.5
retries = 0
env = { JOBS = "1", CI = "1" }

[[job]]
name = "clean"
command.windows = "del /q out"
cwd = "C:\\\\work"
""",
        [
            JobSpec(
                "build",
                both("make -j$JOBS"),
                60.0,
                2,
                "/srv/build",
                {"LANG": "C", "JOBS": "4"},
            ),
            JobSpec(
                "test",
                {"posix": "make test", "windows": "nmake test"},
                600.5,
                0,
                "/srv/build",
                {"LANG": "C", "JOBS": "1", "CI": "1"},
            ),
            JobSpec(
                "clean",
                {"windows": "del /q out"},
                60.0,
                2,
                "C:\\work",
                {"LANG": "C", "JOBS": "4"},
            ),
        ],
        id="toml-defaults-merge",
    ),
    pytest.param(
        "toml",
        """\
[[job]]
name = "script"
command = '''
set -e
make
'''
[job.env]
A = "1"
""",
        [JobSpec("script", both("set -e\nmake\n"), env={"A": "1"})],
        id="toml-multiline-command-and-env-subtable",
    ),
    pytest.param(
        "json",
        json.dumps(
            {
                "name": "nightly",
                "defaults": {"timeout": 30, "env": {"A": "1"}},
                "jobs": [
                    {"name": "a", "command": "echo a"},
                    {
                        "name": "b",
                        "command": {"windows": "echo b"},
                        "timeout": 5,
                        "retries": 3,
                        "cwd": "C:\\tmp",
                        "env": {"B": "2"},
                    },
                ],
            },
            indent=2,
        ),
        [
            JobSpec("a", both("echo a"), 30.0, env={"A": "1"}),
            JobSpec(
                "b", {"windows": "echo b"}, 5.0, 3, "C:\\tmp", {"A": "1", "B": "2"}
            ),
        ],
        id="json-object-defaults-merge",
    ),
    pytest.param(
        "json",
        '[{"name": "a", "command": "x"}, {"name": "b", "command": {"posix": "y"}}]',
        [JobSpec("a", both("x")), JobSpec("b", {"posix": "y"})],
        id="json-bare-list",
    ),
]


@pytest.mark.parametrize(("fmt", "text", "jobs"), HAPPY)
def test_queue_file_parses_to_jobs(fmt: str, text: str, jobs: list[JobSpec]) -> None:
    queue = parse(text, fmt)
    assert queue == QueueSpec("q", tuple(jobs))


@pytest.mark.parametrize(("fmt", "text", "jobs"), HAPPY)
def test_format_is_detected_from_extension(
    fmt: str, text: str, jobs: list[JobSpec]
) -> None:
    queue = parse_queue(text.encode(), f"jobs.{fmt}")
    assert queue.jobs == tuple(jobs)


def test_command_spanning_lines_in_amu_is_kept_whole() -> None:
    queue = parse("|setup|mkdir out\ncd out|", "amu")
    assert queue.jobs == (JobSpec("setup", both("mkdir out\ncd out")),)


def test_toml_job_values_override_defaults_and_env_merges() -> None:
    text = """\
[defaults]
timeout = 10
env = { A = "default", B = "default" }
[[job]]
name = "a"
command = "x"
timeout = 20
env = { B = "job", C = "job" }
"""
    (job,) = parse(text, "toml").jobs
    assert job.timeout == 20.0
    assert job.env == {"A": "default", "B": "job", "C": "job"}


# ---------------------------------------------------------------------------
# Queue names


def test_name_argument_wins_over_file_name_and_stem() -> None:
    data = b'name = "in-file"\n[[job]]\nname = "a"\ncommand = "x"\n'
    assert parse_queue(data, "stem.toml", name="given").name == "given"
    assert parse_queue(data, "stem.toml").name == "in-file"


def test_queue_name_comes_from_file_stem() -> None:
    assert parse_queue(b"a;b", "dir/nightly.v2.amu").name == "nightly.v2"


def test_stem_that_is_no_queue_name_asks_for_name() -> None:
    error = fault_without_name(b"a;b", "my jobs.amu")
    assert error.reason == (
        "the queue would be named after the file, but 'my jobs' is not a valid "
        "queue name (use 1 to 64 letters, digits, '.', '_' or '-', starting with "
        "a letter or digit); pass --name"
    )


def test_standard_input_without_name_asks_for_name() -> None:
    error = fault_without_name(b"a;b", "-")
    assert (error.path, error.line) == ("-", None)
    assert error.reason == "a queue read from standard input needs a name: pass --name"


def test_syntax_error_on_standard_input_is_reported_alone() -> None:
    error = fault_without_name(b'{"name": "piped", "jobs": [}', "-")
    assert type(error) is FormatError
    assert (error.line, error.column) == (1, 28)


def test_standard_input_takes_name_from_json() -> None:
    data = b'{"name": "piped", "jobs": [{"name": "a", "command": "x"}]}'
    assert parse_queue(data, "-").name == "piped"


def fault_without_name(data: bytes, path: str) -> FormatError:
    with pytest.raises(FormatError) as info:
        parse_queue(data, path)
    return info.value


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("nightly", True),
        ("0", True),
        ("a.b_c-d", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("-a", False),
        (".a", False),
        ("a b", False),
        ("a/b", False),
        ("é", False),
    ],
)
def test_queue_name_rule(name: str, valid: bool) -> None:
    assert bool(QUEUE_NAME_RE.fullmatch(name)) is valid
    if valid:
        assert validate_queue_name(name, "--name") == name
    else:
        with pytest.raises(FormatError) as info:
            validate_queue_name(name, "--name")
        assert info.value.path == "--name"
        assert info.value.reason == (
            f"queue name {name[:57] + '...'!r} is 65 characters long; the limit is 64"
            if len(name) > 64
            else f"invalid queue name {name!r}: {RULE}"
        )


def test_invalid_name_argument_is_reported_before_parsing() -> None:
    with pytest.raises(FormatError) as info:
        parse_queue(b"not json", "q.json", name="a b")
    assert info.value.reason.startswith("invalid queue name 'a b'")


# ---------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize(
    ("path", "text", "fmt"),
    [
        ("jobs.amu", "[[job]]", "amu"),
        ("jobs.AMU3", "a;b;c", "amu3"),
        ("jobs.toml", "{", "toml"),
        ("jobs.json", "a;b", "json"),
        ("jobs.txt", "[[job]]", "amu"),
        ("jobs", '{"jobs": []}', "json"),
        ("-", '\n  [{"name": "a"}]', "json"),
        ("jobs", "[\n", "json"),
        ("jobs", "# nightly\n\n[[job]]\nname = 'a'\n", "toml"),
        ("jobs", "[defaults]  # shared\n", "toml"),
        ("jobs", "[ job . env ]\n", "toml"),
        ("jobs", 'name = "nightly"\n', "toml"),
        ("jobs", "timeout = 30\n", "toml"),
        ("jobs", 'command.posix = "make; make test"\n', "toml"),
        ("jobs", "build;make;\n", "amu"),
        ("jobs", "a=1;echo $a\n", "amu"),
        ("jobs", "|a|b|", "amu"),
        ("jobs", "#a#echo hi#\n#b#echo ho#\n", "amu"),
        ("jobs", "", "amu"),
        ("-", "list;ls;dir", "amu"),
    ],
)
def test_format_detection(path: str, text: str, fmt: str) -> None:
    assert detect_format(path, text.encode()) == fmt


def test_unknown_format_is_refused() -> None:
    with pytest.raises(FormatError) as info:
        parse_queue(b"a;b", "q.x", "yaml", "q")
    assert info.value.reason == (
        "unknown queue format 'yaml'; use one of amu, amu3, toml, json"
    )


# ---------------------------------------------------------------------------
# Faults: the first one, at its line and column

TOML_JOB = '[[job]]\nname = "a"\ncommand = "x"\n'
RULE = "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
SEMI_HINT = (
    "; if a command contains ';', start the file with another delimiter, e.g. '|'"
)

FAULTS = [
    # Encoding, shared by all formats.
    pytest.param(
        "amu",
        b"build;make\nt\xc3\xa9st;ok\nx\xff;y",
        3,
        2,
        "invalid UTF-8 (byte 0xff); save the file as UTF-8",
        id="utf8-bad-byte",
    ),
    pytest.param(
        "toml",
        b"a = 1\n\xc3\xa9\xc3\xa9\xe9",
        2,
        3,
        "invalid UTF-8 (byte 0xe9); save the file as UTF-8",
        id="utf8-column-counts-characters",
    ),
    pytest.param(
        "json",
        b"\xef\xbb\xbf\xff",
        1,
        1,
        "invalid UTF-8 (byte 0xff); save the file as UTF-8",
        id="utf8-after-byte-order-mark",
    ),
    pytest.param(
        "json",
        "\ufeff[]".encode("utf-16-le"),
        1,
        1,
        "the file is UTF-16; save it as UTF-8",
        id="utf16",
    ),
    # amu and amu3.
    pytest.param(
        "amu",
        "build;make;\ntest;\n",
        2,
        1,
        "job 'test' has a name but no command: the file has an odd number of "
        "fields (3)" + SEMI_HINT,
        id="amu-odd-fields",
    ),
    pytest.param(
        "amu",
        "build;make -j4; make test;\nlint;ruff .;\n",
        2,
        6,
        "job 'ruff .' has a name but no command: the file has an odd number of "
        "fields (5)" + SEMI_HINT,
        id="amu-semicolon-in-command",
    ),
    pytest.param(
        "amu",
        "|a|b|\n  c|",
        2,
        3,
        "job 'c' has a name but no command: the file has an odd number of fields (3)",
        id="amu-odd-fields-custom-delimiter",
    ),
    pytest.param(
        "amu",
        "a;b;;",
        1,
        5,
        "an empty field after the last job (a doubled delimiter?): the file has an "
        "odd number of fields (3)" + SEMI_HINT,
        id="amu-doubled-final-delimiter",
    ),
    pytest.param(
        "amu3",
        "a;b;c;\nd;e;\n",
        2,
        1,
        "job 'd' has 2 of its 3 fields (name;posix command;windows command): the "
        "file has 5 fields, not a multiple of 3" + SEMI_HINT,
        id="amu3-field-count",
    ),
    pytest.param(
        "amu3",
        "list;ls -l;dir\ncopy;cp a b;copy a b;\n",
        2,
        6,
        "job 'cp a b' has 2 of its 3 fields (name;posix command;windows command): "
        "the file has 5 fields, not a multiple of 3; a field runs from line 1 onto "
        "the next: does line 1 lack its closing ';'?",
        id="amu3-missing-delimiter-at-line-end",
    ),
    pytest.param(
        "amu3",
        "|a|b|c|d|",
        1,
        8,
        "job 'd' has 1 of its 3 fields (name|posix command|windows command): the "
        "file has 4 fields, not a multiple of 3",
        id="amu3-field-count-custom-delimiter",
    ),
    pytest.param("amu", "a;x;;y", 1, 5, "empty job name", id="amu-empty-name"),
    pytest.param(
        "amu",
        "a;x;\nb;y;\n  a;z;\n",
        3,
        3,
        "duplicate job name 'a' (first defined on line 1)",
        id="amu-duplicate-name",
    ),
    pytest.param(
        "amu", "a;;b;c", 1, 3, "job 'a': empty command", id="amu-empty-command"
    ),
    pytest.param(
        "amu3",
        "ok;ls;dir;\na;;;\n",
        2,
        1,
        "job 'a': no command: the posix and windows fields are both empty",
        id="amu3-no-command",
    ),
    pytest.param(
        "amu",
        "ok;x;\nb\x07c;x",
        2,
        1,
        "job name 'b\\x07c' contains the control character U+0007",
        id="amu-control-character",
    ),
    pytest.param(
        "amu",
        "ok;x;\nb\u2028c;x",
        2,
        1,
        "job name 'b\\u2028c' contains the line separator U+2028",
        id="amu-line-separator",
    ),
    pytest.param(
        "amu",
        "x" * 257 + ";y",
        1,
        1,
        "job name '" + "x" * 57 + "...' is 257 characters long; the limit is 256",
        id="amu-name-too-long",
    ),
    pytest.param(
        "amu",
        "a;make\x00",
        1,
        3,
        "job 'a': command contains a NUL character",
        id="amu-nul-in-command",
    ),
    pytest.param(
        "amu",
        "  \n\t\n",
        None,
        None,
        "empty queue: the file has no jobs",
        id="amu-empty",
    ),
    pytest.param(
        "amu",
        "|",
        None,
        None,
        "empty queue: the file has no jobs",
        id="amu-only-delimiter",
    ),
    # TOML.
    pytest.param(
        "toml",
        'name = "q"\n[[job]]\nname = "a"\ncommand = \n',
        4,
        11,
        "TOML syntax error: Invalid value",
        id="toml-syntax",
    ),
    pytest.param(
        "toml",
        '[[job]]\nname = "a"\ncommand = "x',
        3,
        13,
        "TOML syntax error: Unterminated string",
        id="toml-syntax-at-end",
    ),
    pytest.param(
        "toml",
        TOML_JOB + "  timout = 3\n",
        4,
        3,
        "unknown option 'timout' in job 'a'; did you mean 'timeout'?",
        id="toml-unknown-option-close-match",
    ),
    pytest.param(
        "toml",
        '[[job]]\nname = "a"\ncmd = "x"\n',
        1,
        1,
        "job 'a' has no command",
        id="toml-command-missing",
    ),
    pytest.param(
        "toml",
        TOML_JOB + 'colour = "red"\n',
        4,
        1,
        "unknown option 'colour' in job 'a'",
        id="toml-unknown-option",
    ),
    pytest.param(
        "toml",
        '[[jobs]]\nname = "a"\ncommand = "x"\n',
        1,
        1,
        "unknown top-level key 'jobs'; did you mean 'job'?",
        id="toml-unknown-top-level",
    ),
    pytest.param(
        "toml",
        TOML_JOB + "timeout = -1\n",
        4,
        1,
        "job 'a': timeout must be a positive number of seconds, not -1",
        id="toml-timeout-negative",
    ),
    pytest.param(
        "toml",
        TOML_JOB + "timeout = true\n",
        4,
        1,
        "job 'a': timeout must be a positive number of seconds, not a boolean (true)",
        id="toml-timeout-boolean",
    ),
    pytest.param(
        "toml",
        TOML_JOB + "timeout = nan\n",
        4,
        1,
        "job 'a': timeout must be a positive number of seconds, not nan",
        id="toml-timeout-nan",
    ),
    pytest.param(
        "toml",
        TOML_JOB + "retries = 1.5\n",
        4,
        1,
        "job 'a': retries must be a whole number from 0 to 100, not a number (1.5)",
        id="toml-retries-float",
    ),
    pytest.param(
        "toml",
        TOML_JOB + "retries = 101\n",
        4,
        1,
        "job 'a': retries must be a whole number from 0 to 100, not 101",
        id="toml-retries-too-many",
    ),
    pytest.param(
        "toml",
        TOML_JOB + "retries = -1\n",
        4,
        1,
        "job 'a': retries must be a whole number from 0 to 100, not -1",
        id="toml-retries-negative",
    ),
    pytest.param(
        "toml",
        TOML_JOB + 'env = "A=1"\n',
        4,
        1,
        "job 'a': env must be a table of strings, not a string ('A=1')",
        id="toml-env-not-table",
    ),
    pytest.param(
        "toml",
        TOML_JOB + "[job.env]\nA = 1\n",
        4,
        1,
        "job 'a': env 'A' must be a string, not a number (1) (quote the value)",
        id="toml-env-value-not-string",
    ),
    pytest.param(
        "toml",
        TOML_JOB + 'env = { "A=B" = "1" }\n',
        4,
        1,
        "job 'a': env has an invalid variable name 'A=B'",
        id="toml-env-bad-variable-name",
    ),
    pytest.param(
        "toml",
        TOML_JOB + 'cwd = ""\n',
        4,
        1,
        "job 'a': cwd is empty; leave it out to run in the node's directory",
        id="toml-cwd-empty",
    ),
    pytest.param(
        "toml",
        '[[job]]\nname = "a"\ncommand = { linux = "x" }\n',
        3,
        1,
        "job 'a': unknown command key 'linux'; use 'posix' and/or 'windows'",
        id="toml-command-unknown-os",
    ),
    pytest.param(
        "toml",
        '[[job]]\nname = "a"\ncommand = "  "\n',
        3,
        1,
        "job 'a': command is empty",
        id="toml-command-empty",
    ),
    pytest.param(
        "toml",
        '[[job]]\nname = "a"\ncommand = {}\n',
        3,
        1,
        "job 'a': command is an empty table; give 'posix' and/or 'windows'",
        id="toml-command-empty-table",
    ),
    pytest.param(
        "toml",
        '[[job]]\nname = "a"\ncommand = { windows = 3 }\n',
        3,
        1,
        "job 'a': command.windows must be a string, not a number (3)",
        id="toml-command-os-not-string",
    ),
    pytest.param(
        "toml",
        '[[job]]\nname = "a"\ncommand = ["make", "test"]\n',
        3,
        1,
        "job 'a': command must be a string or a table with 'posix' and/or "
        "'windows', not an array",
        id="toml-command-array",
    ),
    pytest.param(
        "toml",
        '[[job]]\ncommand = "x"\n',
        1,
        1,
        "job #1 has no name",
        id="toml-name-missing",
    ),
    pytest.param(
        "toml",
        '[[job]]\nname = 3\ncommand = "x"\n',
        2,
        1,
        "job #1: name must be a string, not a number (3)",
        id="toml-name-not-string",
    ),
    pytest.param(
        "toml",
        TOML_JOB + '[[job]]\nname = ""\ncommand = "x"\n',
        5,
        1,
        "job #2: empty job name",
        id="toml-name-empty",
    ),
    pytest.param(
        "toml",
        '[[job]]\nname = "a\\tb"\ncommand = "x"\n',
        2,
        1,
        "job name 'a\\tb' contains the control character U+0009",
        id="toml-name-control-character",
    ),
    pytest.param(
        "toml",
        '[[job]]\nname = "a "\ncommand = "x"\n',
        2,
        1,
        "job name 'a ' has leading or trailing whitespace",
        id="toml-name-whitespace",
    ),
    pytest.param(
        "toml",
        TOML_JOB + "\n# again\n" + TOML_JOB,
        7,
        1,
        "duplicate job name 'a' (first defined on line 2)",
        id="toml-duplicate-name",
    ),
    pytest.param(
        "toml",
        'job = [\n  {name = "a", command = "x"},\n  {name = "a", command = "y"},\n]\n',
        1,
        1,
        "duplicate job name 'a' (first defined as job #1)",
        id="toml-duplicate-name-inline",
    ),
    pytest.param(
        "toml",
        "job = [1]\n",
        1,
        1,
        "job #1 must be a table, not a number (1)",
        id="toml-job-not-table",
    ),
    pytest.param(
        "toml",
        'job = "x"\n',
        1,
        1,
        "'job' must be [[job]] tables, not a string ('x')",
        id="toml-job-not-array",
    ),
    pytest.param(
        "toml",
        "[defaults]\ntimeout = 30\n",
        None,
        None,
        "empty queue: the file has no jobs (add [[job]] tables)",
        id="toml-empty",
    ),
    pytest.param(
        "toml",
        "[defaults]\n\n  timeout = 0\n" + TOML_JOB,
        3,
        3,
        "defaults: timeout must be a positive number of seconds, not 0",
        id="toml-defaults-bad-value",
    ),
    pytest.param(
        "toml",
        '[defaults]\ncommand = "x"\n' + TOML_JOB,
        2,
        1,
        "defaults cannot set 'command': each job gives its own",
        id="toml-defaults-command",
    ),
    pytest.param(
        "toml",
        "[defaults]\nretry = 3\n" + TOML_JOB,
        2,
        1,
        "unknown option 'retry' in defaults; did you mean 'retries'?",
        id="toml-defaults-unknown-option",
    ),
    pytest.param(
        "toml",
        "defaults = 3\n" + TOML_JOB,
        1,
        1,
        "defaults must be a table, not a number (3)",
        id="toml-defaults-not-table",
    ),
    pytest.param(
        "toml",
        'name = "a b"\n' + TOML_JOB,
        1,
        1,
        f"invalid queue name 'a b': {RULE}",
        id="toml-queue-name-invalid",
    ),
    pytest.param(
        "toml",
        "name = 7\n" + TOML_JOB,
        1,
        1,
        "queue name must be a string, not a number (7)",
        id="toml-queue-name-not-string",
    ),
    pytest.param(
        "toml",
        '[[job]]\nname = "a"\ncommand = """\n[[job]]\ntimeout = -1\n"""\n'
        '[[job]]\nname = "b"\ncommand = "y"\ntimeout = -1\n',
        10,
        1,
        "job 'b': timeout must be a positive number of seconds, not -1",
        id="toml-headers-inside-strings-are-not-counted",
    ),
    # JSON.
    pytest.param(
        "json",
        '{"jobs": [\n  {"name": "a", "command": "x"},\n]}',
        3,
        1,
        "JSON syntax error: Expecting value",
        id="json-syntax-trailing-comma",
    ),
    pytest.param(
        "json",
        '{"jobs": [\n  {"name": "é", "command": "x" "timeout": 3}]}',
        2,
        32,
        "JSON syntax error: Expecting ',' delimiter",
        id="json-syntax-column-counts-characters",
    ),
    pytest.param(
        "json",
        '  "x"',
        1,
        3,
        "a JSON queue is an object with a 'jobs' list, or a list of job objects; "
        "found a string ('x')",
        id="json-scalar",
    ),
    pytest.param(
        "json",
        '{"jobs": [{"name": "é", "command": 1}]}',
        1,
        36,
        "job 'é': command must be a string or an object with 'posix' and/or "
        "'windows', not a number (1)",
        id="json-type-error-points-at-value",
    ),
    pytest.param(
        "json",
        '[{"name": "a", "command": "x",\n  "timout": 3}]',
        2,
        3,
        "unknown option 'timout' in job 'a'; did you mean 'timeout'?",
        id="json-unknown-option-points-at-key",
    ),
    pytest.param(
        "json",
        '[{"name": "a", "cmd": "x"}]',
        1,
        2,
        "job 'a' has no command",
        id="json-command-missing",
    ),
    pytest.param(
        "json",
        '[{"name": "a", "command": "x", "timeout": "30s"}]',
        1,
        43,
        "job 'a': timeout must be a positive number of seconds, not a string ('30s')",
        id="json-timeout-string",
    ),
    pytest.param(
        "json",
        '[{"name": "a", "command": "x", "timeout": NaN}]',
        1,
        43,
        "job 'a': timeout must be a positive number of seconds, not nan",
        id="json-timeout-nan",
    ),
    pytest.param(
        "json",
        '[{"name": "a", "command": "x", "timeout": 1e999}]',
        1,
        43,
        "job 'a': timeout must be a positive number of seconds, not inf",
        id="json-timeout-infinite",
    ),
    pytest.param(
        "json",
        '[{"name": "a", "command": "x", "retries": true}]',
        1,
        43,
        "job 'a': retries must be a whole number from 0 to 100, not a boolean (true)",
        id="json-retries-boolean",
    ),
    pytest.param(
        "json",
        '[{"name": "a", "command": "x", "env": ["A=1"]}]',
        1,
        39,
        "job 'a': env must be an object of strings, not an array",
        id="json-env-not-object",
    ),
    pytest.param(
        "json",
        '[{"name": "a", "command": "x", "env": {"A": null}}]',
        1,
        39,
        "job 'a': env 'A' must be a string, not null (quote the value)",
        id="json-env-null",
    ),
    pytest.param(
        "json",
        '[{"name": "a", "command": "x", "cwd": "/tmp\\u0000"}]',
        1,
        39,
        "job 'a': cwd contains a NUL character",
        id="json-cwd-nul",
    ),
    pytest.param(
        "json",
        '[{"name": "a\\ud800", "command": "x"}]',
        1,
        11,
        "job name 'a\\ud800' contains the lone surrogate U+D800",
        id="json-name-lone-surrogate",
    ),
    pytest.param(
        "json",
        '[\n {"name": "a", "command": "x"},\n {"name": "a", "command": "y"}\n]',
        3,
        11,
        "duplicate job name 'a' (first defined on line 2)",
        id="json-duplicate-name",
    ),
    pytest.param(
        "json",
        '[{"name": "a",\n  "command": "x",\n  "name": "b"}]',
        3,
        3,
        "duplicate key 'name' (first on line 1)",
        id="json-duplicate-key",
    ),
    pytest.param(
        "json",
        '{"job": [{"name": "a", "command": "x"}]}',
        1,
        2,
        "unknown top-level key 'job'; did you mean 'jobs'?",
        id="json-unknown-top-level",
    ),
    pytest.param(
        "json",
        '{"jobs": {"name": "a"}}',
        1,
        10,
        "'jobs' must be a list of job objects, not an object",
        id="json-jobs-not-list",
    ),
    pytest.param(
        "json",
        '[{"name": "a", "command": "x"},\n 3]',
        2,
        2,
        "job #2 must be an object, not a number (3)",
        id="json-job-not-object",
    ),
    pytest.param(
        "json",
        '{"jobs": []}',
        None,
        None,
        "empty queue: the file has no jobs (add job objects)",
        id="json-empty",
    ),
    pytest.param(
        "json",
        "[]",
        None,
        None,
        "empty queue: the file has no jobs (add job objects)",
        id="json-empty-list",
    ),
    pytest.param(
        "json",
        '{"defaults": {"timeout": -5}, "jobs": [{"name": "a", "command": "x"}]}',
        1,
        26,
        "defaults: timeout must be a positive number of seconds, not -5",
        id="json-defaults-bad-value",
    ),
    pytest.param(
        "json",
        '{"name": "", "jobs": [{"name": "a", "command": "x"}]}',
        1,
        10,
        f"invalid queue name '': {RULE}",
        id="json-queue-name-empty",
    ),
    pytest.param(
        "json",
        "[" * 100_000 + "]" * 100_000,
        None,
        None,
        "JSON error: values are nested too deeply",
        id="json-nesting-limit",
    ),
]


@pytest.mark.parametrize(("fmt", "text", "line", "column", "reason"), FAULTS)
def test_first_fault_is_reported_at_its_position(
    fmt: str, text: str | bytes, line: int | None, column: int | None, reason: str
) -> None:
    error = fault(text, fmt)
    assert (error.path, error.line, error.column, error.reason) == (
        "q.x",
        line,
        column,
        reason,
    )


def test_fault_message_names_file_line_and_column() -> None:
    error = fault("a;x;\na;y;\n", "amu", path="jobs/nightly.amu")
    assert str(error) == (
        "jobs/nightly.amu:2:1: duplicate job name 'a' (first defined on line 1)"
    )


def test_several_faults_are_all_reported_in_file_order() -> None:
    text = """\
[[job]]
name = "a"
command = "x"
timeout = -1

[[job]]
name = "b"
command = "y"
retires = 2

[[job]]
name = "a"
command = "z"
"""
    with pytest.raises(FormatErrors) as info:
        parse(text, "toml")
    error = info.value
    positions = [(e.line, e.column, e.reason) for e in error.errors]
    assert positions == [
        (4, 1, "job 'a': timeout must be a positive number of seconds, not -1"),
        (9, 1, "unknown option 'retires' in job 'b'; did you mean 'retries'?"),
    ]
    # The first fault is the error's own position, so callers need not look
    # further; str() lists every fault.
    assert (error.line, error.column) == (4, 1)
    assert str(error).splitlines() == [
        "q.x:4:1: job 'a': timeout must be a positive number of seconds, not -1",
        "q.x:9:1: unknown option 'retires' in job 'b'; did you mean 'retries'?",
    ]


def test_faults_in_one_job_are_all_reported() -> None:
    text = '[{"name": "a", "command": 1, "timeout": 0, "retries": -1, "cwd": 5}]'
    with pytest.raises(FormatErrors) as info:
        parse(text, "json")
    assert [e.column for e in info.value.errors] == [27, 41, 55, 66]


def test_many_faults_print_a_bounded_list() -> None:
    text = "".join(f"{n}\x01;x;\n" for n in range(30))
    with pytest.raises(FormatErrors) as info:
        parse(text, "amu")
    assert len(info.value.errors) == 30
    lines = str(info.value).splitlines()
    assert len(lines) == 21
    assert lines[-1] == "... and 10 more"


# ---------------------------------------------------------------------------
# Finding keys and values in the text


def test_toml_scan_skips_strings_comments_and_arrays() -> None:
    text = """\
name = "q"  # [[job]] in a comment
[[job]]
name = "a"
command = \"\"\"
[[job]]
name = "not a job"
\"\"\"
list = [
  "x = 1",
  '[[job]]',
]
"quoted key" = 1
[job.env]
A = "1"

[[job]]
  name = 'b'
"""
    where = toml_where(text)
    assert where.key(("name",)) == (1, 1)
    assert where.value(("job", 0)) == (2, 1)
    assert where.key(("job", 0, "command")) == (4, 1)
    assert where.key(("job", 0, "quoted key")) == (12, 1)
    assert where.key(("job", 0, "env")) == (13, 1)
    assert where.key(("job", 0, "env", "A")) == (14, 1)
    assert where.value(("job", 1)) == (16, 1)
    assert where.key(("job", 1, "name")) == (17, 3)
    # Unknown paths fall back to the nearest enclosing one.
    assert where.key(("job", 1, "timeout")) == (16, 1)
    assert where.key(("nothing",)) is None


def test_json_scan_finds_values_keys_and_repeats() -> None:
    text = '{"a": [1, {"b": "x,]}"}],\n "a": null}'
    where, repeats = json_where(text)
    assert where.key(("a",)) == (1, 2)
    assert where.value(("a", 0)) == (1, 8)
    assert where.value(("a", 1, "b")) == (1, 17)
    assert repeats == [("a", 27, 1)]
    assert where.at(27) == (2, 2)


# ---------------------------------------------------------------------------
# JobSpec and QueueSpec as JSON


def test_job_to_json_has_every_key() -> None:
    job = JobSpec("a", {"posix": "ls"})
    assert job.to_json() == {
        "name": "a",
        "cmd": {"posix": "ls"},
        "timeout": None,
        "retries": 0,
        "cwd": None,
        "env": {},
    }


def test_queue_to_json_nests_jobs() -> None:
    queue = QueueSpec("q", (JobSpec("a", both("x"), 2.5, 1, "/", {"K": "v"}),))
    assert queue.to_json() == {
        "name": "q",
        "jobs": [
            {
                "name": "a",
                "cmd": {"posix": "x", "windows": "x"},
                "timeout": 2.5,
                "retries": 1,
                "cwd": "/",
                "env": {"K": "v"},
            }
        ],
    }


def test_job_from_json_reads_what_to_json_wrote() -> None:
    job = JobSpec("a", {"windows": "dir"}, 3.0, 2, "C:\\", {"A": "b"})
    wire = json.loads(json.dumps(job.to_json()))
    assert JobSpec.from_json(wire, "peer n1") == job


def test_job_from_json_fills_missing_options() -> None:
    job = JobSpec.from_json({"name": "a", "cmd": {"posix": "ls"}}, "peer n1")
    assert job == JobSpec("a", {"posix": "ls"})


def test_queue_from_json_reads_what_to_json_wrote() -> None:
    queue = QueueSpec("q", (JobSpec("a", both("x")), JobSpec("b", {"posix": "y"})))
    assert QueueSpec.from_json(queue.to_json(), "doc") == queue


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([], "job must be an object, not an array"),
        ({"cmd": {"posix": "x"}}, "job: name must be a string, not null"),
        (
            {"name": "a", "cmd": {"posix": ""}},
            "job 'a': cmd.posix is empty",
        ),
        (
            {"name": "a", "cmd": {"posix": "x"}, "timeout": 0},
            "job 'a': timeout must be a positive number of seconds, not 0",
        ),
        (
            {"name": "a", "cmd": {"posix": "x"}, "retries": "1"},
            "job 'a': retries must be a whole number from 0 to 100, not a string ('1')",
        ),
        (
            {"name": "a", "cmd": {"posix": "x"}, "command": "x"},
            "job 'a': unknown key 'command'; did you mean 'cmd'?",
        ),
        (
            {"name": "a\n", "cmd": {"posix": "x"}},
            "job name 'a\\n' contains the control character U+000A",
        ),
    ],
)
def test_job_from_json_refuses_bad_data(obj: object, reason: str) -> None:
    with pytest.raises(FormatError) as info:
        JobSpec.from_json(obj, "peer n1")
    assert (info.value.path, info.value.line, info.value.reason) == (
        "peer n1",
        None,
        reason,
    )


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ("q", "a queue must be an object, not a string ('q')"),
        ({"name": "a b", "jobs": []}, f"invalid queue name 'a b': {RULE}"),
        ({"name": "q", "jobs": []}, "empty queue: no jobs"),
        (
            {"name": "q", "jobs": [{"name": "a", "cmd": "x"}] * 2},
            "duplicate job name 'a'",
        ),
    ],
)
def test_queue_from_json_refuses_bad_data(obj: object, reason: str) -> None:
    with pytest.raises(FormatError) as info:
        QueueSpec.from_json(obj, "doc")
    assert info.value.reason == reason


# ---------------------------------------------------------------------------
# Loading files


def test_load_queue_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "nightly.amu3"
    path.write_bytes(b"a;ls;dir;\n")
    queue = load_queue(str(path))
    assert queue == QueueSpec(
        "nightly", (JobSpec("a", {"posix": "ls", "windows": "dir"}),)
    )


def test_load_queue_reports_unreadable_file(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.toml")
    with pytest.raises(FormatError) as info:
        load_queue(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_load_queue_reads_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"|a|echo 1; echo 2|"))
    monkeypatch.setattr(sys, "stdin", stdin)
    queue = load_queue("-", name="piped")
    assert queue == QueueSpec("piped", (JobSpec("a", both("echo 1; echo 2")),))


@pytest.mark.parametrize("fmt", FORMATS)
def test_example_file_of_each_format_loads(fmt: str) -> None:
    (path,) = EXAMPLES.glob(f"*.{fmt}")
    queue = load_queue(str(path))
    assert queue.jobs
    assert detect_format(str(path), path.read_bytes()) == fmt


def test_examples_without_extension_are_detected_by_content() -> None:
    for fmt in ("amu", "toml", "json"):
        (path,) = EXAMPLES.glob(f"*.{fmt}")
        assert detect_format("-", path.read_bytes()) == fmt


# ---------------------------------------------------------------------------
# docs/formats.md shows real behaviour

DOC = Path(__file__).resolve().parent.parent / "docs" / "formats.md"

# The inputs behind each error message the documentation quotes.
DOC_FAULTS = [
    ("nightly.amu", "build;make -j4; make test;\nlint;ruff .;\n"),
    ("copy.amu3", "list;ls -l;dir\ncopy;cp a b;copy a b;\n"),
    ("nightly.amu", "build;make;\ntest;make test;\nbuild;make all;\n"),
    ("encode.amu", b"encode;ffmpeg -i caf\xe9.mov out.mp4;"),
    ("render.toml", '[[job]]\nname = "render"\ncommand = "x"\ntimout = 600\n'),
    ("render.toml", '[[job]]\nname = "render"\ncommand = "blender -b a.blend\n'),
    ("jobs.json", '{"jobs": [\n  {"name": "a", "command": "x"},\n]}'),
    ("encode.json", '[\n  {"name": "encode", "command": {"linux": "ffmpeg"}}\n]'),
    ("empty.toml", "[defaults]\ntimeout = 60\n"),
    ("-", "a;b"),
    ("my jobs.amu", "a;b"),
    (
        "render.toml",
        '[[job]]\nname = "render"\ncommand = "x"\ntimeout = "10m"\nretries = -1\n',
    ),
]


def doc_blocks(language: str) -> list[str]:
    """The fenced blocks of the formats page in ``language`` ("" for plain)."""
    return [block.text for block in read_blocks(DOC) if block.info[0] == language]


@pytest.mark.parametrize(("path", "data"), DOC_FAULTS)
def test_documented_error_messages_are_real(path: str, data: str | bytes) -> None:
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(FormatError) as info:
        parse_queue(raw, path)
    documented = "\n".join(doc_blocks(""))
    for line in str(info.value).splitlines():
        assert line in documented.splitlines()


def test_documented_dry_run_output_is_real() -> None:
    (shown,) = [b for b in doc_blocks("json") if '"queue": "nightly"' in b]
    queue = load_queue(str(EXAMPLES / "nightly.toml"))
    assert json.loads(shown) == {
        "queue": queue.name,
        "jobs": [job.to_json() for job in queue.jobs],
    }


def test_documented_queue_examples_parse() -> None:
    for block in doc_blocks("toml") + doc_blocks("json"):
        if '"queue":' not in block:
            fmt = "json" if block.lstrip()[0] in "[{" else "toml"
            assert parse_queue(block.encode(), "-", fmt, "doc").jobs


# ---------------------------------------------------------------------------
# Property: rendering jobs in any format and parsing them back is lossless

NAME_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))
TEXT_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def stripped(chars: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    return st.text(chars, min_size=1, max_size=max_size).filter(
        lambda s: s == s.strip() and s != ""
    )


NAMES = stripped(NAME_CHARS, 20)
LINE_COMMANDS = stripped(NAME_CHARS, 30)
COMMANDS = st.text(TEXT_CHARS, min_size=1, max_size=30).filter(lambda s: s.strip())
ENV = st.dictionaries(
    st.text(TEXT_CHARS, min_size=1, max_size=8).filter(lambda k: "=" not in k),
    st.text(TEXT_CHARS, max_size=10),
    max_size=3,
)


@st.composite
def full_jobs(draw: st.DrawFn) -> JobSpec:
    os_names = draw(st.sampled_from([("posix",), ("windows",), ("posix", "windows")]))
    return JobSpec(
        name=draw(NAMES),
        cmd={os_name: draw(COMMANDS) for os_name in os_names},
        timeout=draw(
            st.none() | st.floats(min_value=1e-3, max_value=1e7, allow_nan=False)
        ),
        retries=draw(st.integers(0, 100)),
        cwd=draw(st.none() | st.text(TEXT_CHARS, min_size=1, max_size=20)),
        env=draw(ENV),
    )


@st.composite
def amu3_jobs(draw: st.DrawFn) -> JobSpec:
    posix, windows = draw(
        st.tuples(st.none() | LINE_COMMANDS, st.none() | LINE_COMMANDS).filter(
            lambda pair: pair != (None, None)
        )
    )
    cmd = {"posix": posix, "windows": windows}
    return JobSpec(draw(NAMES), {k: v for k, v in cmd.items() if v is not None})


AMU_JOBS = st.builds(lambda name, cmd: JobSpec(name, both(cmd)), NAMES, LINE_COMMANDS)


def unique(jobs: st.SearchStrategy[JobSpec]) -> st.SearchStrategy[list[JobSpec]]:
    return st.lists(jobs, min_size=1, max_size=6, unique_by=lambda job: job.name)


def render_amu(jobs: list[JobSpec], width: int) -> str:
    fields: list[str] = []
    for job in jobs:
        fields.append(job.name)
        if width == 2:
            fields.append(job.cmd["posix"])
        else:
            fields.extend(job.cmd.get(os_name, "") for os_name in ("posix", "windows"))
    first = fields[0][0]
    text = "".join(fields)
    if ";" not in text and (first.isalnum() or first == "_"):
        return "".join(
            ";".join(fields[i : i + width]) + ";\n"
            for i in range(0, len(fields), width)
        )
    free = [d for d in "|!~^%@" if d not in text]
    assume(free)
    return free[0] + free[0].join(fields) + free[0] + "\n"


def toml_string(text: str) -> str:
    # A JSON string is a TOML basic string, once DEL is escaped as TOML wants.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def render_toml(jobs: list[JobSpec]) -> str:
    out = ['name = "prop"', ""]
    for job in jobs:
        out.append("[[job]]")
        out.append(f"name = {toml_string(job.name)}")
        cmd = ", ".join(f"{k} = {toml_string(v)}" for k, v in job.cmd.items())
        out.append(f"command = {{ {cmd} }}")
        if job.timeout is not None:
            out.append(f"timeout = {job.timeout!r}")
        out.append(f"retries = {job.retries}")
        if job.cwd is not None:
            out.append(f"cwd = {toml_string(job.cwd)}")
        env = ", ".join(
            f"{toml_string(k)} = {toml_string(v)}" for k, v in job.env.items()
        )
        out.append(f"env = {{ {env} }}")
        out.append("")
    return "\n".join(out)


def render_json(jobs: list[JobSpec]) -> str:
    objs = []
    for job in jobs:
        obj = job.to_json()
        obj["command"] = obj.pop("cmd")
        objs.append({k: v for k, v in obj.items() if v is not None})
    return json.dumps({"name": "prop", "jobs": objs}, indent=1, ensure_ascii=False)


@given(unique(AMU_JOBS))
def test_amu_round_trip(jobs: list[JobSpec]) -> None:
    assert parse(render_amu(jobs, 2), "amu").jobs == tuple(jobs)


@given(unique(amu3_jobs()))
def test_amu3_round_trip(jobs: list[JobSpec]) -> None:
    assert parse(render_amu(jobs, 3), "amu3").jobs == tuple(jobs)


@given(unique(full_jobs()))
def test_toml_round_trip(jobs: list[JobSpec]) -> None:
    text = render_toml(jobs)
    assert parse_queue(text.encode(), "x.toml") == QueueSpec("prop", tuple(jobs))
    assert detect_format("-", text.encode()) == "toml"


@given(unique(full_jobs()))
def test_json_round_trip(jobs: list[JobSpec]) -> None:
    text = render_json(jobs)
    assert parse_queue(text.encode(), "x.json") == QueueSpec("prop", tuple(jobs))
    assert detect_format("-", text.encode()) == "json"


@given(unique(full_jobs()), st.data())
def test_unknown_option_is_reported_on_its_line(
    jobs: list[JobSpec], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(jobs) - 1))
    lines = render_toml(jobs).split("\n")
    header = [i for i, line in enumerate(lines) if line == "[[job]]"][index]
    lines.insert(header + 2, "timout = 1")
    error = fault("\n".join(lines), "toml")
    assert (error.line, error.column) == (header + 3, 1)
    assert error.reason.startswith("unknown option 'timout' in job ")
