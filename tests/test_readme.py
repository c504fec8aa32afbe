"""The README's commands work as written, so the README cannot rot.

The blocks whose fence reads ```` ```sh test ```` run in order (see
``markdown_blocks``): the demo, the dry run, and the quick start's three
machines, simulated on 127.0.0.1. Each machine gets its own home folder, so
its own default data directory; 10.0.0.N and port 7077 become a free port on
127.0.0.1 per machine, ``--listen 0.0.0.0:7077`` becomes that machine's port,
and ``scp 10.0.0.N:PATH`` becomes a copy from that machine's home.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from markdown_blocks import BlockRunner, free_port, machine_home, read_blocks

from amucrdt.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

OPENING = "pip install -e '.[dev]' && amucrdt demo\npytest\n"


def machines_substitute(root: Path) -> Callable[[str, str | None], str]:
    ports = {f"10.0.0.{n}": free_port() for n in range(1, 4)}

    def substitute(text: str, machine: str | None) -> str:
        if machine is not None:
            text = text.replace("0.0.0.0:7077", f"127.0.0.1:{ports[machine]}")
        text = re.sub(
            r"\bscp (10\.0\.0\.\d+):", lambda m: f"cp {machine_home(root, m[1])}/", text
        )
        return re.sub(
            r"(ws://)?\b(10\.0\.0\.\d+)(:7077)?\b",
            lambda m: f"{m[1] or ''}127.0.0.1:{ports[m[2]]}",
            text,
        )

    return substitute


def test_readme_opens_with_the_install_and_test_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.startswith(f"# amucrdt\n\n```\n{OPENING}```\n")
    first = read_blocks(README)[0]
    assert first.text == OPENING
    # The demo of the opening line runs as a tested block further down.
    tested = [b.text for b in read_blocks(README) if b.tested]
    assert "amucrdt demo\n" in tested


def test_readme_commands_run_against_real_local_nodes(tmp_path: Path) -> None:
    runner = BlockRunner(tmp_path, REPO, machines_substitute(tmp_path))
    try:
        ran = runner.run_all(read_blocks(README))
        # demo, dry run, init on three machines, three nodes, push, watch
        assert ran == 10

        # The third node was given only the first as a peer; it found the
        # second through the shared document.
        env = runner.env("10.0.0.3")
        deadline = time.monotonic() + 120
        while True:
            done = subprocess.run(
                ["amucrdt", "status", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            status = json.loads(done.stdout)
            if sum(peer["up"] for peer in status["peers"]) == 2:
                break
            assert time.monotonic() < deadline, status["peers"]
            time.sleep(0.2)
        assert status["queues"]["hello"]["done"] == 4
    finally:
        runner.close()


def test_readme_commands_table_lists_every_command() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Commands") :]
    listed = set(re.findall(r"^\| `amucrdt ((?:push )?[a-z]+)", table, re.M))
    parser = build_parser()
    commands: set[str] = set()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():
            if name == "push":
                inner = sub._subparsers._group_actions[0]  # type: ignore[union-attr]
                commands |= {f"push {what}" for what in inner.choices}
            else:
                commands.add(name)
    assert listed == commands


def test_readme_links_point_to_files_in_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#]+)\)", text)
    assert "docs/formats.md" in targets
    missing = [t for t in targets if "://" not in t and not (REPO / t).exists()]
    assert not missing
