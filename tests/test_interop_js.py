"""Documents saved by amucrdt stay real Automerge.

The JavaScript implementation (``@automerge/automerge``, installed by
``npm ci`` in ``tests/interop``) reads what Python saves, and Python reads
what JavaScript saves, with the same values and heads. Without the Node
package the tests are skipped locally and fail in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from amucrdt._automerge import Document

INTEROP = Path(__file__).parent / "interop"
SCRIPT = INTEROP / "automerge_io.mjs"
PACKAGE = INTEROP / "node_modules" / "@automerge" / "automerge" / "package.json"

NodeRunner = Callable[..., dict[str, Any]]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture
def node() -> NodeRunner:
    """Run the Node script and return the document it printed."""
    missing = None
    if shutil.which("node") is None:
        missing = "node is not installed"
    elif not PACKAGE.exists():
        missing = f"@automerge/automerge is not installed: run `npm ci` in {INTEROP}"
    if missing is not None:
        if _in_ci():
            pytest.fail(f"JavaScript interop cannot run in CI: {missing}")
        pytest.skip(missing)

    def run(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            ["node", str(SCRIPT), *args],
            cwd=INTEROP,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        printed: dict[str, Any] = json.loads(done.stdout)
        return printed

    return run


def untag(value: Any) -> Any:
    """The Python value of the script's tagged JSON."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == "$bytes":
                return bytes.fromhex(inner)
            if key == "$ts":
                return int(inner)
            if key == "$int":
                return int(inner)
        return {key: untag(item) for key, item in value.items()}
    if isinstance(value, list):
        return [untag(item) for item in value]
    return value


def hex_heads(doc: Document) -> list[str]:
    return sorted(head.hex() for head in doc.heads())


PYTHON_VALUES: dict[str, Any] = {
    "queue": {
        "name": "nightly",
        "jobs": [
            {"name": "build", "argv": ["make", "-j2"], "timeout": 3600},
            {"name": "test", "argv": ["pytest"], "retries": 0, "weight": 0.75},
        ],
        "empty": {},
        "none": [],
    },
    "text": 'ünïcödé ✓ and "quotes"',
    "ints": [0, -1, 2**31, 2**53 - 1, 2**53 + 1, 2**63 - 1, -(2**63)],
    "floats": [0.1, -2.5, 1e300, 3.0],
    "flags": [True, False, None],
    "blob": bytes(range(256)),
}


def test_python_document_reads_the_same_in_javascript(
    node: NodeRunner, tmp_path: Path
) -> None:
    doc = Document()
    doc.update((), PYTHON_VALUES)
    doc.commit(message="from python", time=1_700_000_000_000)
    path = tmp_path / "python.automerge"
    path.write_bytes(doc.save())

    seen = node("read", str(path))

    assert untag(seen["value"]) == PYTHON_VALUES
    assert seen["heads"] == hex_heads(doc)


def test_javascript_document_reads_the_same_in_python(
    node: NodeRunner, tmp_path: Path
) -> None:
    path = tmp_path / "javascript.automerge"

    written = node("write", str(path))
    doc = Document.load(path.read_bytes())

    assert doc.materialize() == untag(written["value"])
    assert hex_heads(doc) == written["heads"]
    assert doc.get(["text"]) == "collaborative text, ünïcödé ✓"
    assert doc.get(["plain"]) == "immutable string"
    assert doc.get(["hits"]) == 7
    assert doc.get(["unsigned"]) == 5
    assert doc.get(["when"]) == 1_700_000_000_123
    assert doc.get(["huge"]) == -(2**63)
    assert doc.get(["blob"]) == b"\x00\x01\x02\xfe\xff"
    assert doc.get(["float"]) == 0.1
    assert doc.get(["nested", "list", 2, "three"]) == 3


def test_concurrent_edits_in_python_and_javascript_merge(
    node: NodeRunner, tmp_path: Path
) -> None:
    doc = Document()
    doc.update((), {"items": ["from python"], "owner": "python"})
    doc.commit(time=0)
    shared = tmp_path / "shared.automerge"
    shared.write_bytes(doc.save())
    edited = tmp_path / "edited.automerge"

    node("edit", str(shared), str(edited))
    doc.put(["owner"], "python, again")
    doc.insert(["items", 0], "python first")
    doc.commit(time=0)
    doc.merge(Document.load(edited.read_bytes()))
    merged = tmp_path / "merged.automerge"
    merged.write_bytes(doc.save())
    seen = node("read", str(merged))

    assert doc.get(["from_js"]) == {"ok": True, "n": 3}
    assert doc.get(["owner"]) == "python, again"
    assert doc.get(["items"]) == ["python first", "from python", "appended in js"]
    assert untag(seen["value"]) == doc.materialize()
    assert seen["heads"] == hex_heads(doc)
