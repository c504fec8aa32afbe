"""Tests of the data directory: identity, secret, lock."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from amucrdt.datadir import DataDir, default_data_dir, read_secret_file
from amucrdt.errors import StorageError

REPO = Path(__file__).resolve().parents[1]

# A process that takes the lock of the data directory in argv[1], says so,
# and holds it until its stdin closes.
LOCK_HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from amucrdt.datadir import DataDir

    DataDir.open(Path(sys.argv[1])).lock()
    print("locked", flush=True)
    sys.stdin.read()
    """
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def start_lock_holder(path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    # Blocks until the holder has the lock (or died, which fails the test).
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_init_creates_private_directory_secret_and_node_id(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "data"

    data_dir = DataDir.init(path)

    assert data_dir.path == path
    assert mode_of(path) == 0o700
    assert mode_of(path / "secret") == 0o600
    text = (path / "secret").read_text()
    assert len(text) == 65 and text.endswith("\n")
    assert data_dir.secret() == bytes.fromhex(text)
    assert len(data_dir.secret()) == 32
    node = json.loads((path / "node.json").read_text())
    assert node["node_id"] == data_dir.node_id
    assert len(data_dir.node_id) == 32
    int(data_dir.node_id, 16)
    assert isinstance(node["created"], int) and node["created"] > 0


def test_init_twice_keeps_secret_and_node_id(tmp_path: Path) -> None:
    first = DataDir.init(tmp_path / "d")
    secret_bytes = (tmp_path / "d" / "secret").read_bytes()
    node_bytes = (tmp_path / "d" / "node.json").read_bytes()

    second = DataDir.init(tmp_path / "d")

    assert second.node_id == first.node_id
    assert second.secret() == first.secret()
    assert (tmp_path / "d" / "secret").read_bytes() == secret_bytes
    assert (tmp_path / "d" / "node.json").read_bytes() == node_bytes


def test_init_writes_the_given_secret(tmp_path: Path) -> None:
    secret = bytes(range(32))

    data_dir = DataDir.init(tmp_path / "d", secret=secret)

    assert data_dir.secret() == secret
    assert (tmp_path / "d" / "secret").read_text() == secret.hex() + "\n"


def test_init_never_overwrites_an_existing_secret(tmp_path: Path) -> None:
    path = tmp_path / "d"
    path.mkdir(mode=0o700)
    (path / "secret").write_text("ab" * 20 + "\n")
    (path / "secret").chmod(0o600)

    data_dir = DataDir.init(path)

    assert data_dir.secret() == bytes.fromhex("ab" * 20)
    assert (path / "node.json").is_file()


def test_init_refuses_a_secret_different_from_the_existing_one(
    tmp_path: Path,
) -> None:
    DataDir.init(tmp_path / "d", secret=b"\x01" * 32)
    before = (tmp_path / "d" / "secret").read_bytes()

    with pytest.raises(StorageError, match="different cluster secret"):
        DataDir.init(tmp_path / "d", secret=b"\x02" * 32)

    assert (tmp_path / "d" / "secret").read_bytes() == before


def test_init_accepts_the_same_secret_again(tmp_path: Path) -> None:
    DataDir.init(tmp_path / "d", secret=b"\x01" * 32)

    assert DataDir.init(tmp_path / "d", secret=b"\x01" * 32).secret() == b"\x01" * 32


def test_init_refuses_a_short_secret(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="at least 16 bytes"):
        DataDir.init(tmp_path / "d", secret=b"x" * 15)

    assert not (tmp_path / "d").exists()


def test_open_missing_directory_says_how_to_init(tmp_path: Path) -> None:
    path = tmp_path / "nowhere"

    with pytest.raises(StorageError) as info:
        DataDir.open(path)

    assert str(path) in str(info.value)
    assert f"amucrdt init --data-dir {path}" in str(info.value)


def test_open_uninitialised_directory_says_how_to_init(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        DataDir.open(tmp_path)

    assert "not initialised" in str(info.value)
    assert f"amucrdt init --data-dir {tmp_path}" in str(info.value)


def test_open_rejects_malformed_node_json(tmp_path: Path) -> None:
    DataDir.init(tmp_path / "d")
    (tmp_path / "d" / "node.json").write_text('{"node_id": "xyz"}')

    with pytest.raises(StorageError, match=r"node\.json has no valid node_id"):
        DataDir.open(tmp_path / "d")


def test_secret_warns_when_readable_by_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = DataDir.init(tmp_path / "d")
    (tmp_path / "d" / "secret").chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="amucrdt.datadir"):
        secret = data_dir.secret()

    assert len(secret) == 32
    assert [r.getMessage() for r in caplog.records] == [
        f"secret file {tmp_path / 'd' / 'secret'} has mode 0644; it should be 0600"
    ]
    assert secret.hex() not in caplog.text


def test_secret_of_empty_file_is_an_error(tmp_path: Path) -> None:
    data_dir = DataDir.init(tmp_path / "d")
    (tmp_path / "d" / "secret").write_text("")

    with pytest.raises(StorageError, match="is empty"):
        data_dir.secret()


def test_logs_dir_is_created_on_demand(tmp_path: Path) -> None:
    data_dir = DataDir.init(tmp_path / "d")
    assert not (tmp_path / "d" / "logs").exists()

    assert data_dir.logs_dir == tmp_path / "d" / "logs"
    assert data_dir.logs_dir.is_dir()


def test_lock_held_by_another_process_is_refused_with_its_pid(
    tmp_path: Path,
) -> None:
    DataDir.init(tmp_path / "d")
    holder = start_lock_holder(tmp_path / "d")
    try:
        with pytest.raises(StorageError) as info:
            DataDir.open(tmp_path / "d").lock()
        assert str(info.value) == (
            f"data directory {tmp_path / 'd'} is in use by another node "
            f"(pid {holder.pid})"
        )
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0

    # The holder exited, so the lock is free again.
    DataDir.open(tmp_path / "d").lock()


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    DataDir.init(tmp_path / "d")
    holder = start_lock_holder(tmp_path / "d")

    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=30) == -signal.SIGKILL

    data_dir = DataDir.open(tmp_path / "d")
    data_dir.lock()
    assert (tmp_path / "d" / "lock").read_text() == f"{os.getpid()}\n"
    data_dir.unlock()


def test_lock_refuses_a_second_data_dir_in_the_same_process(tmp_path: Path) -> None:
    first = DataDir.init(tmp_path / "d")
    first.lock()
    first.lock()  # holding it already: no effect
    try:
        with pytest.raises(StorageError, match=f"pid {os.getpid()}"):
            DataDir.open(tmp_path / "d").lock()
    finally:
        first.unlock()


def test_read_secret_file_strips_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("\n  " + "0f" * 16 + "  \n\n")
    path.chmod(0o600)

    assert read_secret_file(path) == b"\x0f" * 16


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b" \n\t", "is empty"),
        (b"not hex at all, but long enough to be a secret", "is not hex text"),
        (b"abc", "is not hex text"),
        (b"\xff\xfe" * 20, "is not hex text"),
        (b"00" * 15, "holds 15 bytes; at least 16 are required"),
    ],
)
def test_read_secret_file_rejects_bad_content(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "s"
    path.write_bytes(content)

    with pytest.raises(StorageError) as info:
        read_secret_file(path)

    assert str(info.value) == f"secret file {path} {message}"


def test_read_secret_file_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        read_secret_file(tmp_path / "missing")

    assert str(info.value).startswith(f"cannot read secret file {tmp_path}/missing")


def test_default_data_dir_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AMUCRDT_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "amucrdt"

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "amucrdt"

    monkeypatch.setenv("AMUCRDT_DATA_DIR", str(tmp_path / "explicit"))
    assert default_data_dir() == tmp_path / "explicit"
