"""Tests of the document store, with real files and the real binding."""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from amucrdt._automerge import Document
from amucrdt.errors import StorageError
from amucrdt.storage import (
    LOG_HEADER,
    MAX_RECORD_BYTES,
    SNAPSHOT_HEADER,
    DocStore,
    DroppedRecord,
    LoadReport,
)

REPO = Path(__file__).resolve().parents[1]
CRASH_WRITER = Path(__file__).resolve().parent / "crash_writer.py"
FRAME = struct.Struct("<II")


class Writer:
    """A document and its store, changed one key per appended record."""

    def __init__(self, path: Path) -> None:
        self.store = DocStore(path)
        doc, _ = self.store.load()
        self.doc = doc if doc is not None else Document()
        self.heads = self.doc.heads()

    def put(self, key: str, value: str) -> None:
        self.doc.put([key], value)
        self.doc.commit()
        self.store.append(self.doc.save_after(self.heads))
        self.heads = self.doc.heads()


def write_records(path: Path, count: int) -> list[int]:
    """Append ``count`` records setting k0..k{count-1}; returns each end offset."""
    path.mkdir(exist_ok=True)
    writer = Writer(path)
    ends = []
    for i in range(count):
        writer.put(f"k{i}", f"value {i}")
        ends.append((path / "doc.log").stat().st_size)
    writer.store.close()
    return ends


def load(path: Path) -> tuple[Document | None, LoadReport]:
    with DocStore(path) as store:
        return store.load()


def values(doc: Document | None, count: int) -> list[object]:
    assert doc is not None
    return [doc.get([f"k{i}"]) for i in range(count)]


def expected(loaded: int, count: int) -> list[object]:
    return [f"value {i}" if i < loaded else None for i in range(count)]


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def test_headers_are_magic_kind_and_version() -> None:
    assert SNAPSHOT_HEADER == b"AMUCRDS\x01"
    assert LOG_HEADER == b"AMUCRDL\x01"


def test_load_of_empty_directory_returns_none_and_creates_nothing(
    tmp_path: Path,
) -> None:
    doc, report = load(tmp_path)

    assert doc is None
    assert report == LoadReport(0, 0, [], [])
    assert list(tmp_path.iterdir()) == []


def test_records_frame_their_payload_with_length_and_crc(tmp_path: Path) -> None:
    store = DocStore(tmp_path)
    store.load()

    store.append(b"first")
    store.append(b"second!")

    assert (tmp_path / "doc.log").read_bytes() == (
        LOG_HEADER + frame(b"first") + frame(b"second!")
    )
    assert store.log_records == 2
    assert store.log_bytes == 2 * 8 + 5 + 7
    store.close()


def test_round_trip_through_appends_compaction_and_more_appends(
    tmp_path: Path,
) -> None:
    writer = Writer(tmp_path)
    for i in range(3):
        writer.put(f"k{i}", f"value {i}")
    assert (writer.store.log_records, writer.store.log_bytes) == (
        3,
        (tmp_path / "doc.log").stat().st_size - 8,
    )

    doc, report = load(tmp_path)
    assert values(doc, 3) == expected(3, 3)
    assert report == LoadReport(0, 3, [], [])

    full = writer.doc.save()
    writer.store.compact(full)
    assert (writer.store.log_records, writer.store.log_bytes) == (0, 0)
    assert (tmp_path / "doc.log").read_bytes() == LOG_HEADER
    assert (tmp_path / "doc.snapshot").read_bytes() == SNAPSHOT_HEADER + frame(full)
    for i in range(3, 5):
        writer.put(f"k{i}", f"value {i}")
    writer.store.close()

    store = DocStore(tmp_path)
    doc, report = store.load()
    assert values(doc, 5) == expected(5, 5)
    assert report == LoadReport(len(full), 2, [], [])
    assert (store.log_records, store.log_bytes) == (
        2,
        (tmp_path / "doc.log").stat().st_size - 8,
    )
    store.close()


def test_store_files_are_private_and_no_temporary_files_remain(
    tmp_path: Path,
) -> None:
    writer = Writer(tmp_path)
    writer.put("k0", "value 0")
    writer.store.compact(writer.doc.save())
    writer.store.close()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.log", "doc.snapshot"]
    for name in ("doc.log", "doc.snapshot"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_log_without_snapshot_loads_onto_an_empty_document(tmp_path: Path) -> None:
    write_records(tmp_path, 3)

    doc, report = load(tmp_path)

    assert values(doc, 3) == expected(3, 3)
    assert report == LoadReport(0, 3, [], [])


def test_snapshot_without_log_loads(tmp_path: Path) -> None:
    writer = Writer(tmp_path)
    writer.put("k0", "value 0")
    writer.store.compact(writer.doc.save())
    writer.store.close()
    (tmp_path / "doc.log").unlink()

    doc, report = load(tmp_path)

    assert values(doc, 1) == ["value 0"]
    assert report.records_loaded == 0 and report.dropped == []


def test_empty_append_does_nothing(tmp_path: Path) -> None:
    store = DocStore(tmp_path)
    store.load()

    store.append(b"")

    assert not (tmp_path / "doc.log").exists()
    assert (store.log_records, store.log_bytes) == (0, 0)


def test_append_before_load_is_refused(tmp_path: Path) -> None:
    store = DocStore(tmp_path)

    with pytest.raises(StorageError, match=r"append\(\) needs a load\(\)"):
        store.append(b"data")

    assert not (tmp_path / "doc.log").exists()


def test_load_without_repair_reports_damage_and_changes_no_file(
    tmp_path: Path,
) -> None:
    ends = write_records(tmp_path, 3)
    damaged = (tmp_path / "doc.log").read_bytes()[: ends[-1] - 2]
    (tmp_path / "doc.log").write_bytes(damaged)
    (tmp_path / "doc.log.tmp").write_bytes(b"")
    store = DocStore(tmp_path)

    doc, report = store.load(repair=False)

    assert values(doc, 3) == expected(2, 3)
    assert report == LoadReport(
        0,
        2,
        [DroppedRecord("doc.log", ends[1], 2, ends[2] - ends[1] - 8, "truncated")],
        [],
    )
    assert (tmp_path / "doc.log").read_bytes() == damaged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.log", "doc.log.tmp"]
    with pytest.raises(StorageError, match=r"append\(\) needs a load\(\)"):
        store.append(b"data")
    assert (tmp_path / "doc.log").read_bytes() == damaged


# Appends a record too big for the file size limit, then a small one, in a
# process of its own so the limit binds nothing else.
FAILED_APPEND = """
import resource, signal, sys
from pathlib import Path
from amucrdt.errors import StorageError
from amucrdt.storage import DocStore

path = Path(sys.argv[1])
size = (path / "doc.log").stat().st_size
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))
store = DocStore(path)
store.load()
try:
    store.append(b"x" * 1000)
except StorageError as exc:
    print(exc)
store.append(b"small")
print(store.log_records, (path / "doc.log").stat().st_size - size)
"""


def test_failed_append_leaves_no_torn_record(tmp_path: Path) -> None:
    write_records(tmp_path, 1)
    before = (tmp_path / "doc.log").read_bytes()

    result = subprocess.run(
        [sys.executable, "-c", FAILED_APPEND, str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=True,
    )

    assert result.stdout == (
        f"cannot append to {tmp_path / 'doc.log'}: File too large\n2 13\n"
    )
    assert (tmp_path / "doc.log").read_bytes() == before + frame(b"small")


def test_crash_between_snapshot_and_log_replacement_loads_the_same_document(
    tmp_path: Path,
) -> None:
    writer = Writer(tmp_path)
    for i in range(3):
        writer.put(f"k{i}", f"value {i}")
    old_log = (tmp_path / "doc.log").read_bytes()
    writer.store.compact(writer.doc.save())
    writer.store.close()
    # The state a crash leaves after the snapshot's rename, before the log's.
    (tmp_path / "doc.log").write_bytes(old_log)

    doc, report = load(tmp_path)

    assert values(doc, 3) == expected(3, 3)
    assert report.records_loaded == 3
    assert report.dropped == []


def test_load_removes_temporaries_of_an_interrupted_compaction(
    tmp_path: Path,
) -> None:
    write_records(tmp_path, 2)
    (tmp_path / "doc.snapshot.tmp").write_bytes(SNAPSHOT_HEADER + b"partial")
    (tmp_path / "doc.log.tmp").write_bytes(b"")

    doc, report = load(tmp_path)

    assert values(doc, 2) == expected(2, 2)
    assert report == LoadReport(0, 2, [], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.log"]


def test_log_cut_at_every_offset_of_its_last_record_keeps_earlier_records(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    ends = write_records(source, 4)
    original = (source / "doc.log").read_bytes()
    start, end = ends[-2], ends[-1]
    payload_length = end - start - 8

    for cut in range(start + 1, end):
        path = tmp_path / f"cut-{cut}"
        path.mkdir()
        (path / "doc.log").write_bytes(original[:cut])

        doc, report = load(path)

        length = payload_length if cut - start >= 4 else None
        assert report.dropped == [
            DroppedRecord("doc.log", start, 3, length, "truncated")
        ]
        assert report.records_loaded == 3
        assert values(doc, 4) == expected(3, 4)
        assert (path / "doc.log").read_bytes() == original[:start]
        assert len(report.preserved) == 1
        assert report.preserved[0].read_bytes() == original[start:cut]

        # New records follow the good ones and load cleanly.
        writer = Writer(path)
        writer.put("k3", "value 3 again")
        writer.store.close()
        doc, report = load(path)
        assert report.dropped == []
        assert values(doc, 4) == [*expected(3, 3), "value 3 again"]


def test_flipping_any_byte_of_the_last_record_keeps_earlier_records(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    ends = write_records(source, 4)
    original = (source / "doc.log").read_bytes()
    start, end = ends[-2], ends[-1]
    payload_length = end - start - 8

    for offset in range(start, end):
        damaged = bytearray(original)
        damaged[offset] ^= 0xFF
        path = tmp_path / f"flip-{offset}"
        path.mkdir()
        (path / "doc.log").write_bytes(damaged)

        doc, report = load(path)

        if offset - start >= 4:  # the CRC field or the payload
            want = DroppedRecord(
                "doc.log", start, 3, payload_length, "checksum mismatch"
            )
        else:  # the length field
            (length,) = struct.unpack_from("<I", damaged, start)
            if length > MAX_RECORD_BYTES:
                reason = f"length {length} exceeds the {MAX_RECORD_BYTES}-byte limit"
            elif start + 8 + length > end:
                reason = "truncated"
            else:
                reason = "checksum mismatch"
            want = DroppedRecord("doc.log", start, 3, length, reason)
        assert report.dropped[0] == want, f"byte {offset}"
        assert all(d.index > 3 for d in report.dropped[1:])
        assert report.records_loaded == 3
        assert values(doc, 4) == expected(3, 4)
        assert (path / "doc.log").read_bytes() == original[:start]
        assert [p.read_bytes() for p in report.preserved] == [damaged[start:]]


def test_damaged_middle_record_drops_it_and_lists_every_later_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ends = write_records(tmp_path, 5)
    data = bytearray((tmp_path / "doc.log").read_bytes())
    data[ends[1] + 10] ^= 0x01
    (tmp_path / "doc.log").write_bytes(data)

    with caplog.at_level(logging.WARNING, logger="amucrdt.storage"):
        doc, report = load(tmp_path)

    def length(i: int) -> int:
        return ends[i] - ends[i - 1] - 8

    assert report.dropped == [
        DroppedRecord("doc.log", ends[1], 2, length(2), "checksum mismatch"),
        DroppedRecord("doc.log", ends[2], 3, length(3), "follows a damaged record"),
        DroppedRecord("doc.log", ends[3], 4, length(4), "follows a damaged record"),
    ]
    assert values(doc, 5) == expected(2, 5)
    dropped_lines = [r for r in caplog.records if "dropped record" in r.getMessage()]
    assert [r.levelno for r in dropped_lines] == [logging.WARNING] * 3
    assert [p.read_bytes() for p in report.preserved] == [bytes(data[ends[1] :])]
    assert re.fullmatch(r"doc\.log\.damaged-\d+", report.preserved[0].name)


def test_record_rejected_by_automerge_is_dropped(tmp_path: Path) -> None:
    # An empty document refuses bytes that are not Automerge. The checksum
    # cannot catch them: they were framed as they are.
    doc = Document()
    doc.put(["k0"], "value 0")
    first = doc.save_after([])
    heads = doc.heads()
    doc.put(["k1"], "value 1")
    second = doc.save_after(heads)
    garbage = b"not an automerge change"
    (tmp_path / "doc.log").write_bytes(
        LOG_HEADER + frame(garbage) + frame(first) + frame(second)
    )

    loaded, report = load(tmp_path)

    assert report.records_loaded == 0
    assert [(d.index, d.offset) for d in report.dropped] == [
        (0, 8),
        (1, 8 + 8 + len(garbage)),
        (2, 8 + 8 + len(garbage) + 8 + len(first)),
    ]
    assert report.dropped[0].reason.startswith("rejected by automerge: ")
    assert [d.reason for d in report.dropped[1:]] == ["follows a damaged record"] * 2
    assert values(loaded, 2) == [None, None]
    assert (tmp_path / "doc.log").read_bytes() == LOG_HEADER


def test_each_damaged_load_keeps_its_own_copy_of_the_tail(tmp_path: Path) -> None:
    for _ in range(2):
        ends = write_records(tmp_path, 2)
        log_path = tmp_path / "doc.log"
        log_path.write_bytes(log_path.read_bytes()[: ends[-1] - 1])
        load(tmp_path)

    copies = sorted(tmp_path.glob("doc.log.damaged-*"))
    assert len(copies) == 2
    assert all(copy.stat().st_size > 0 for copy in copies)


def test_oversized_length_is_taken_as_corruption(tmp_path: Path) -> None:
    write_records(tmp_path, 1)
    with open(tmp_path / "doc.log", "ab") as f:
        f.write(FRAME.pack(MAX_RECORD_BYTES + 1, 0) + b"x" * 16)

    doc, report = load(tmp_path)

    assert report.dropped == [
        DroppedRecord(
            "doc.log",
            (tmp_path / "doc.log").stat().st_size,
            1,
            MAX_RECORD_BYTES + 1,
            f"length {MAX_RECORD_BYTES + 1} exceeds the {MAX_RECORD_BYTES}-byte limit",
        )
    ]
    assert values(doc, 1) == ["value 0"]


def snapshot_damages() -> list[tuple[str, bytes, str]]:
    """(name, replacement bytes given the good file, expected message part)."""
    doc = Document()
    doc.put(["k0"], "value 0")
    full = doc.save()
    good = SNAPSHOT_HEADER + frame(full)
    flipped = bytearray(good)
    flipped[20] ^= 0x01
    return [
        ("flipped byte", bytes(flipped), "is damaged: checksum mismatch at offset 8"),
        ("truncated", good[:-1], "is damaged: truncated at offset 8"),
        ("header only", SNAPSHOT_HEADER, "holds 0 records instead of one"),
        ("trailing bytes", good + frame(b"x"), "holds 2 records instead of one"),
        ("short", b"AMU", "is only 3 bytes long, shorter than its header"),
        ("wrong magic", b"NOTAMUCR" + good[8:], "wrong magic"),
        ("log in its place", LOG_HEADER + good[8:], "is a log, not a snapshot"),
        ("newer version", b"AMUCRDS\x02" + good[8:], "has format version 2"),
        (
            "not automerge",
            SNAPSHOT_HEADER + frame(b"garbage"),
            "document rejected by automerge",
        ),
    ]


@pytest.mark.parametrize(
    ("damaged", "message"),
    [(d, m) for _, d, m in snapshot_damages()],
    ids=[name for name, _, _ in snapshot_damages()],
)
def test_damaged_snapshot_is_an_error_and_left_unchanged(
    tmp_path: Path, damaged: bytes, message: str
) -> None:
    write_records(tmp_path, 2)
    log_before = (tmp_path / "doc.log").read_bytes()
    (tmp_path / "doc.snapshot").write_bytes(damaged)

    with pytest.raises(StorageError) as info:
        load(tmp_path)

    assert str(tmp_path / "doc.snapshot") in str(info.value)
    assert message in str(info.value)
    assert (tmp_path / "doc.snapshot").read_bytes() == damaged
    assert (tmp_path / "doc.log").read_bytes() == log_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.log", "doc.snapshot"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"NOTAMUCR", "wrong magic"),
        (b"AMUCRDX\x01", "is an unknown kind of file, not a log"),
        (b"AMUCRDS\x01", "is a snapshot, not a log"),
        (b"AMUCRDL\x07", "has format version 7"),
        (b"AMUC", "is only 4 bytes long"),
    ],
)
def test_log_with_a_bad_header_is_an_error_and_left_unchanged(
    tmp_path: Path, content: bytes, message: str
) -> None:
    write_records(tmp_path, 1)
    data = content + (tmp_path / "doc.log").read_bytes()[8:]
    if len(content) < 8:
        data = content
    (tmp_path / "doc.log").write_bytes(data)

    with pytest.raises(StorageError) as info:
        load(tmp_path)

    assert str(info.value).startswith(str(tmp_path / "doc.log"))
    assert message in str(info.value)
    assert (tmp_path / "doc.log").read_bytes() == data


def read_counters(line_source: subprocess.Popen[str], count: int) -> list[int]:
    assert line_source.stdout is not None
    counters = []
    for _ in range(count):
        line = line_source.stdout.readline()
        assert line.endswith("\n"), "writer stopped early"
        counters.append(int(line))
    return counters


@pytest.mark.parametrize("seed", range(6))
def test_sigkilled_writer_never_loses_a_counter_it_reported_durable(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    compact_every = rng.randint(1, 7)
    durable: set[int] = set()
    env = dict(os.environ, PYTHONPATH=str(REPO))

    for _ in range(3):
        writer = subprocess.Popen(
            [sys.executable, str(CRASH_WRITER), str(tmp_path), str(compact_every)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        durable.update(read_counters(writer, rng.randint(1, 80)))
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
        assert writer.stdout is not None
        rest = writer.stdout.read()
        writer.stdout.close()
        # A line cut by the kill was not reported whole; it promises nothing.
        durable.update(int(line) for line in rest.split("\n")[:-1])

        doc, report = load(tmp_path)

        assert doc is not None
        stored = doc.get(["counters"])
        assert isinstance(stored, dict)
        missing = durable - {int(key) for key in stored}
        assert not missing, f"seed {seed}: lost durable counters {sorted(missing)}"
        assert all(d.reason == "truncated" for d in report.dropped), report.dropped
        assert not list(tmp_path.glob("*.tmp"))


def test_preserved_copy_and_cut_survive_a_reload(tmp_path: Path) -> None:
    ends = write_records(tmp_path, 3)
    log_path = tmp_path / "doc.log"
    log_path.write_bytes(log_path.read_bytes()[: ends[-1] - 3])
    _, first = load(tmp_path)
    copy = first.preserved[0].read_bytes()

    doc, second = load(tmp_path)

    assert second.dropped == [] and second.preserved == []
    assert values(doc, 3) == expected(2, 3)
    assert first.preserved[0].read_bytes() == copy
