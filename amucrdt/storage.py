"""Durable storage of a node's document: a snapshot and an append-only log.

Two files in the data directory hold the document:

``doc.snapshot``
    The whole document as of the last compaction (``Document.save()``).
``doc.log``
    Every change made or received since then, one record per
    ``Document.save_after(heads)``, appended and synced before the node acts
    on it.

Both files start with an 8-byte header: ``b"AMUCRD"``, a kind byte (``S`` for
the snapshot, ``L`` for the log) and a format version byte. Each record after
it is framed by the store: payload length (u32, little-endian), CRC-32 of the
payload (u32, little-endian, ``zlib.crc32``), payload. The snapshot holds
exactly one record.

Automerge's incremental load applies whatever prefix of its input it can parse
and reports no error for the rest, so the framing is what tells which record a
crash tore or a disk flipped. Loading stops at the first record that fails its
checks; the records before it are kept, the damaged tail is copied aside and
cut off so new records follow good data. A damaged snapshot is never repaired
or discarded: it is the only copy of everything before the log, so loading
refuses with an error and leaves it for an operator.

Compaction writes a new snapshot, then a new empty log, each under a temporary
name, synced and renamed into place. A crash between the two renames leaves
the new snapshot with the old log, whose changes are all in the snapshot
already; Automerge skips changes it holds, so that state loads the same.

The store assumes a single writer: the node holds the data directory's lock
(:meth:`amucrdt.datadir.DataDir.lock`) while it uses the store.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from amucrdt._automerge import Document
from amucrdt.datadir import sync_dir, sync_file, write_all
from amucrdt.errors import AutomergeError, StorageError

__all__ = [
    "LOG_HEADER",
    "MAX_RECORD_BYTES",
    "SNAPSHOT_HEADER",
    "DocStore",
    "DroppedRecord",
    "LoadReport",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_MAGIC = b"AMUCRD"
SNAPSHOT_HEADER = _MAGIC + b"S" + bytes([FORMAT_VERSION])
LOG_HEADER = _MAGIC + b"L" + bytes([FORMAT_VERSION])
HEADER_BYTES = 8

# Record frame: payload length, CRC-32 of the payload.
_FRAME = struct.Struct("<II")
FRAME_BYTES = _FRAME.size

#: Longest payload accepted; a longer length field is taken as corruption.
MAX_RECORD_BYTES = 1 << 30

SNAPSHOT_FILE = "doc.snapshot"
LOG_FILE = "doc.log"

# Reasons given in DroppedRecord.reason.
TRUNCATED = "truncated"
CHECKSUM_MISMATCH = "checksum mismatch"
AFTER_DAMAGE = "follows a damaged record"


@dataclass
class DroppedRecord:
    """A log record that was not loaded.

    Attributes:
        file: the file name (``doc.log``).
        offset: byte offset of the record's frame in the file.
        index: 0-based position of the record among the file's records.
        length: payload length from the frame, None when the frame itself
            was cut short.
        reason: ``"truncated"``, ``"checksum mismatch"``,
            ``"length N exceeds the 1073741824-byte limit"``,
            ``"rejected by automerge: ..."``, or ``"follows a damaged record"``
            for an intact record after the first damaged one.
    """

    file: str
    offset: int
    index: int
    length: int | None
    reason: str


@dataclass
class LoadReport:
    """What :meth:`DocStore.load` found.

    Attributes:
        snapshot_bytes: size of the snapshot's document bytes, 0 without one.
        records_loaded: log records applied to the document.
        dropped: log records not applied, in file order.
        preserved: copies of damaged log tails written aside before the log
            was cut back to its last good record.
    """

    snapshot_bytes: int = 0
    records_loaded: int = 0
    dropped: list[DroppedRecord] = field(default_factory=list)
    preserved: list[Path] = field(default_factory=list)


@dataclass
class _Record:
    offset: int
    payload: memoryview


class DocStore:
    """The document store of one data directory.

    Call :meth:`load` first: it checks the files and cuts a damaged log tail,
    after which :meth:`append` adds records behind good data. :meth:`compact`
    may also come first; it replaces both files.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.snapshot_path = path / SNAPSHOT_FILE
        self.log_path = path / LOG_FILE
        # Open append descriptor of the log; None until the first append.
        self._log_fd: int | None = None
        # True once load() or compact() has established where the log's good
        # data ends; appending before that could follow a torn record.
        self._ready = False
        # Record bytes (frames included, header excluded) and record count of
        # the log; updated by load, append and compact.
        self._log_bytes = 0
        self._log_records = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def log_bytes(self) -> int:
        """Bytes of records in the log (header excluded); 0 after compaction."""
        return self._log_bytes

    @property
    def log_records(self) -> int:
        """Number of records in the log; 0 after compaction."""
        return self._log_records

    def load(self, *, repair: bool = True) -> tuple[Document | None, LoadReport]:
        """Load the document from the snapshot and the log.

        Returns (None, empty report) when neither file exists. Without a
        snapshot the log is applied to an empty document. The log is applied
        record by record up to the first one that is cut short, fails its
        checksum, has an implausible length or is rejected by Automerge; that
        record and all after it are listed in the report's ``dropped`` (one
        warning logged per record), the bytes from it to the end are copied
        to ``doc.log.damaged-<unix time>`` and the log is truncated to its
        last good record.

        Temporary files left by an interrupted :meth:`compact` are removed.

        With ``repair=False`` no file is changed: damaged records are reported
        but not cut or copied, nothing is preserved, and :meth:`append` stays
        refused. This is for reading the data directory of a node that may be
        running, whose last record may be half written at that moment.

        Raises:
            StorageError: the snapshot is unreadable, has a wrong header, a
                bad checksum, trailing bytes or a document Automerge rejects;
                the log has a wrong header; or a file cannot be read, copied,
                truncated or removed. A damaged snapshot is left untouched.
        """
        self.close()
        self._ready = False
        if repair:
            self._remove_temporaries()
        snapshot = self._read_snapshot()
        log_data = _read_optional(self.log_path)
        if snapshot is None and log_data is None:
            self._set_ready(0, 0, repair)
            return None, LoadReport()

        report = LoadReport()
        doc = Document()
        if snapshot is not None:
            report.snapshot_bytes = len(snapshot)
            try:
                doc = Document.load(snapshot)
            except AutomergeError as exc:
                raise StorageError(
                    f"{self.snapshot_path}: document rejected by automerge: {exc}; "
                    "the file is left as it is"
                ) from exc
        if log_data is None:
            self._set_ready(0, 0, repair)
        else:
            doc = self._apply_log(doc, snapshot, log_data, report, repair)
        log.info(
            "loaded %s: snapshot %d bytes, %d log records, %d dropped",
            self.path,
            report.snapshot_bytes,
            report.records_loaded,
            len(report.dropped),
        )
        return doc, report

    def _apply_log(
        self,
        doc: Document,
        snapshot: bytes | None,
        data: bytes,
        report: LoadReport,
        repair: bool,
    ) -> Document:
        """Apply the good records of the log in ``data`` to ``doc``.

        Fills ``report`` and, if ``repair``, cuts a damaged tail off the log.
        Returns the document, which is a new one if a record had to be backed
        out.
        """
        _check_header(self.log_path, data, LOG_HEADER)
        records, damage = _scan(data)
        for index, record in enumerate(records):
            try:
                doc.load_incremental(bytes(record.payload))
            except AutomergeError as exc:
                damage = DroppedRecord(
                    LOG_FILE,
                    record.offset,
                    index,
                    len(record.payload),
                    f"rejected by automerge: {exc}",
                )
                records = records[:index]
                # A failed load may have applied part of the record or
                # poisoned the document; rebuild it from the good records.
                doc = self._rebuild(snapshot, records)
                break
        report.records_loaded = len(records)

        good_end = HEADER_BYTES
        if records:
            good_end = records[-1].offset + FRAME_BYTES + len(records[-1].payload)
        if damage is not None:
            report.dropped = _list_dropped(data, damage)
            for dropped in report.dropped:
                log.warning(
                    "dropped record %d of %s at offset %d (length %s): %s",
                    dropped.index,
                    self.log_path,
                    dropped.offset,
                    dropped.length,
                    dropped.reason,
                )
            if repair:
                report.preserved.append(self._cut_log(data, good_end))
        self._set_ready(good_end - HEADER_BYTES, len(records), repair)
        return doc

    def append(self, data: bytes) -> None:
        """Append ``data`` as one record and sync it before returning.

        ``data`` is the output of ``Document.save_after(heads)``; ``b""`` does
        nothing. Creates the log if it does not exist.

        Raises:
            StorageError: :meth:`load` or :meth:`compact` has not been called,
                the record is over the size limit, or writing or syncing
                fails. After a failed write the log is cut back to its last
                good record; if even that fails the store refuses further
                appends until reloaded.
        """
        if not data:
            return
        if not self._ready:
            raise StorageError(
                f"document store {self.path}: append() needs a load() that "
                "may repair the log first"
            )
        if len(data) > MAX_RECORD_BYTES:
            raise StorageError(
                f"record of {len(data)} bytes exceeds the "
                f"{MAX_RECORD_BYTES}-byte limit of {self.log_path}"
            )
        fd = self._open_log()
        frame = _FRAME.pack(len(data), zlib.crc32(data)) + data
        try:
            write_all(fd, frame)
            sync_file(fd)
        except OSError as exc:
            self._undo_append(fd)
            raise StorageError(
                f"cannot append to {self.log_path}: {exc.strerror}"
            ) from exc
        self._log_bytes += len(frame)
        self._log_records += 1

    def compact(self, full: bytes) -> None:
        """Replace the snapshot with ``full`` (``Document.save()``) and empty
        the log.

        Each file is written under a temporary name, synced, renamed into
        place and its directory synced, so a crash at any point leaves either
        the old or the new file, and every state loads the same document.

        Raises:
            StorageError: ``full`` is over the size limit, or a file cannot be
                written, synced or renamed.
        """
        if len(full) > MAX_RECORD_BYTES:
            raise StorageError(
                f"snapshot of {len(full)} bytes exceeds the "
                f"{MAX_RECORD_BYTES}-byte limit of {self.snapshot_path}"
            )
        self.close()
        snapshot = SNAPSHOT_HEADER + _FRAME.pack(len(full), zlib.crc32(full)) + full
        _replace(self.snapshot_path, snapshot)
        _replace(self.log_path, LOG_HEADER)
        self._set_ready(0, 0, True)
        log.info("compacted %s: snapshot %d bytes", self.path, len(full))

    def close(self) -> None:
        """Close the log; a later :meth:`append` reopens it. Idempotent."""
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def _set_ready(self, log_bytes: int, log_records: int, ready: bool) -> None:
        self._ready = ready
        self._log_bytes = log_bytes
        self._log_records = log_records

    def _remove_temporaries(self) -> None:
        for path in (self.snapshot_path, self.log_path):
            # Left by a compaction that crashed before its rename: never data.
            stale = _temporary(path)
            if not stale.exists():
                continue
            log.info("removing %s left by an interrupted compaction", stale)
            try:
                stale.unlink()
            except OSError as exc:
                raise StorageError(f"cannot remove {stale}: {exc.strerror}") from exc

    def _read_snapshot(self) -> bytes | None:
        data = _read_optional(self.snapshot_path)
        if data is None:
            return None
        _check_header(self.snapshot_path, data, SNAPSHOT_HEADER)
        records, damage = _scan(data, SNAPSHOT_FILE)
        if damage is not None:
            raise StorageError(
                f"{self.snapshot_path} is damaged: {damage.reason} at offset "
                f"{damage.offset}; the file is left as it is"
            )
        if len(records) != 1:
            raise StorageError(
                f"{self.snapshot_path} is damaged: holds {len(records)} records "
                "instead of one; the file is left as it is"
            )
        return bytes(records[0].payload)

    def _rebuild(self, snapshot: bytes | None, records: list[_Record]) -> Document:
        try:
            doc = Document.load(snapshot) if snapshot is not None else Document()
            for record in records:
                doc.load_incremental(bytes(record.payload))
        except AutomergeError as exc:
            raise StorageError(
                f"cannot reload {self.path} after a rejected record: {exc}"
            ) from exc
        return doc

    def _cut_log(self, data: bytes, good_end: int) -> Path:
        """Copy ``data[good_end:]`` aside, then truncate the log to good_end."""
        stamp = int(time.time())
        tail = data[good_end:]
        suffix = 0
        while True:
            name = f"{LOG_FILE}.damaged-{stamp}" + (f".{suffix}" if suffix else "")
            aside = self.path / name
            try:
                fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                suffix += 1
                continue
            except OSError as exc:
                raise StorageError(f"cannot create {aside}: {exc.strerror}") from exc
            break
        try:
            try:
                write_all(fd, tail)
                sync_file(fd)
            finally:
                os.close(fd)
            sync_dir(self.path)
            # The copy is durable before any byte of the original goes away.
            with open(self.log_path, "r+b") as f:
                f.truncate(good_end)
                sync_file(f.fileno())
        except OSError as exc:
            raise StorageError(
                f"cannot cut the damaged tail of {self.log_path}: {exc.strerror}"
            ) from exc
        log.warning(
            "cut %s at offset %d; %d damaged bytes kept in %s",
            self.log_path,
            good_end,
            len(tail),
            aside,
        )
        return aside

    def _open_log(self) -> int:
        if self._log_fd is not None:
            return self._log_fd
        try:
            if not self.log_path.exists():
                # Created whole, so a log never exists without its header.
                _replace(self.log_path, LOG_HEADER)
            self._log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise StorageError(f"cannot open {self.log_path}: {exc.strerror}") from exc
        return self._log_fd

    def _undo_append(self, fd: int) -> None:
        """Cut a partly written record so later appends follow good data."""
        try:
            os.ftruncate(fd, HEADER_BYTES + self._log_bytes)
            sync_file(fd)
        except OSError as exc:
            # The log may now end in a torn record; the next load cuts it.
            self._ready = False
            log.error(
                "cannot cut a failed append from %s (%s); appends refused until reload",
                self.log_path,
                exc.strerror,
            )


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc


def _check_header(path: Path, data: bytes, expected: bytes) -> None:
    header = data[:HEADER_BYTES]
    if header == expected:
        return
    if len(header) < HEADER_BYTES:
        problem = f"is only {len(data)} bytes long, shorter than its header"
    elif header[:6] != _MAGIC:
        problem = "is not an amucrdt document file (wrong magic)"
    elif header[6:7] != expected[6:7]:
        kinds = {b"S": "a snapshot", b"L": "a log"}
        found = kinds.get(header[6:7], "an unknown kind of file")
        problem = f"is {found}, not {kinds[expected[6:7]]}"
    else:
        problem = (
            f"has format version {header[7]}; this release reads version "
            f"{FORMAT_VERSION}"
        )
    raise StorageError(f"{path} {problem}; the file is left as it is")


def _scan(
    data: bytes, file: str = LOG_FILE
) -> tuple[list[_Record], DroppedRecord | None]:
    """Split ``data`` after its header into records, up to the first bad one.

    Returns the intact records and, if the scan stopped early, the first bad
    record. Payloads are not parsed here, only checked against their frame.
    """
    view = memoryview(data)
    records: list[_Record] = []
    offset = HEADER_BYTES
    while offset < len(data):
        found = _read_record(view, offset, len(records), file)
        if isinstance(found, DroppedRecord):
            return records, found
        records.append(found)
        offset += FRAME_BYTES + len(found.payload)
    return records, None


def _read_record(
    view: memoryview, offset: int, index: int, file: str
) -> _Record | DroppedRecord:
    """The record framed at ``offset``, or why it cannot be read."""
    left = len(view) - offset
    if left < FRAME_BYTES:
        partial = None
        if left >= 4:
            partial = int.from_bytes(view[offset : offset + 4], "little")
        return DroppedRecord(file, offset, index, partial, TRUNCATED)
    length, crc = _FRAME.unpack_from(view, offset)
    if length > MAX_RECORD_BYTES:
        reason = f"length {length} exceeds the {MAX_RECORD_BYTES}-byte limit"
        return DroppedRecord(file, offset, index, length, reason)
    start = offset + FRAME_BYTES
    if start + length > len(view):
        return DroppedRecord(file, offset, index, length, TRUNCATED)
    payload = view[start : start + length]
    if zlib.crc32(payload) != crc:
        return DroppedRecord(file, offset, index, length, CHECKSUM_MISMATCH)
    return _Record(offset, payload)


def _list_dropped(data: bytes, first: DroppedRecord) -> list[DroppedRecord]:
    """``first`` and the records after it.

    After a record whose frame is readable (a checksum mismatch or a rejected
    payload) the following frames can still be walked, so each intact one is
    listed, up to the first that is not; after a cut or an implausible length
    nothing more can be located. The preserved tail holds all those bytes.
    """
    dropped = [first]
    length = first.length
    if (
        length is None
        or length > MAX_RECORD_BYTES
        or first.offset + FRAME_BYTES + length > len(data)
    ):
        return dropped
    view = memoryview(data)
    offset = first.offset + FRAME_BYTES + length
    index = first.index + 1
    while offset < len(data):
        found = _read_record(view, offset, index, first.file)
        if isinstance(found, DroppedRecord):
            dropped.append(found)
            break
        length = len(found.payload)
        dropped.append(DroppedRecord(first.file, offset, index, length, AFTER_DAMAGE))
        offset += FRAME_BYTES + length
        index += 1
    return dropped


def _replace(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with a file holding ``data`` (mode 0600)."""
    tmp = _temporary(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, data)
            sync_file(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        sync_dir(path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc


def _temporary(path: Path) -> Path:
    """The name ``path`` is written under before it is renamed into place."""
    return path.with_name(path.name + ".tmp")
