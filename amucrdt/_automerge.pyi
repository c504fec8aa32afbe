"""Type stubs of the PyO3 binding to the official ``automerge`` Rust crate.

Every function either returns plain Python values or raises
:class:`amucrdt.errors.AutomergeError` (the binding imports that class from
``amucrdt.errors`` and raises it directly). A panic inside the crate is caught
and raised as ``AutomergeError`` naming the operation; it never escapes as
``pyo3_runtime.PanicException``. After such a panic the document is marked
``poisoned`` and must be rebuilt by the caller (``Document.load(doc.save())``
or from disk).

Paths address a value from the document root: a sequence of map keys (str)
and list indexes (int). ``()`` is the root map.

Values cross the boundary as: None (null), bool, int (64-bit signed), float,
str, bytes, dict[str, Value] (Automerge map), list[Value] (Automerge list).
Writing a dict or a list creates a new nested Automerge object holding it.
Reading an object materializes it into dicts and lists in one call.
Counters read as int and timestamps as int milliseconds.

Change hashes and actor ids are ``bytes`` (32 and usually 16 bytes).
"""

from collections.abc import Mapping, Sequence
from typing import Union

Value = Union[None, bool, int, float, str, bytes, dict[str, "Value"], list["Value"]]
Path = Sequence[str | int]

class SyncState:
    """The per-peer state of the Automerge sync protocol."""

    def __init__(self) -> None: ...
    def encode(self) -> bytes:
        """The persistent part of the state (shared heads), encoded."""
    @staticmethod
    def decode(data: bytes) -> SyncState:
        """Rebuild a state from ``encode()`` output; raises on bad bytes."""
    @property
    def shared_heads(self) -> list[bytes]:
        """Heads both sides are known to hold."""
    @property
    def their_heads(self) -> list[bytes] | None:
        """Heads the peer reported in its last message, None before any."""
    @property
    def last_sent_heads(self) -> list[bytes]:
        """Our heads as of the last message we generated for this peer."""

class Document:
    """An Automerge document (the crate's ``AutoCommit``)."""

    def __init__(self, actor: bytes | None = None) -> None:
        """A new empty document; a random actor id unless one is given."""
    @staticmethod
    def load(data: bytes, actor: bytes | None = None) -> Document:
        """Load a document saved by ``save()`` (or concatenated saves/changes).

        Raises AutomergeError on truncated or corrupt bytes.
        """
    @property
    def poisoned(self) -> bool:
        """True once a panic was caught inside this document."""
    def save(self) -> bytes:
        """The whole document, compressed, in Automerge's binary format."""
    def save_after(self, heads: Sequence[bytes]) -> bytes:
        """The changes made since ``heads`` (incremental save), b"" if none."""
    def load_incremental(self, data: bytes) -> int:
        """Apply bytes from ``save_after``/``save``; returns ops applied."""
    def fork(self, actor: bytes | None = None) -> Document:
        """An independent copy; a fresh random actor unless one is given."""
    def merge(self, other: Document) -> list[bytes]:
        """Merge every change of ``other`` into this document.

        Returns the hashes of the changes that were new here.
        """
    def heads(self) -> list[bytes]:
        """The current heads, sorted; commits pending operations first."""
    def actor(self) -> bytes:
        """This document's actor id."""
    def set_actor(self, actor: bytes) -> None:
        """Use ``actor`` for changes made from now on."""
    def commit(
        self, message: str | None = None, time: int | None = None
    ) -> bytes | None:
        """Commit pending operations as one change.

        ``time`` is the change's timestamp in ms (0 when None). Returns the
        change hash, or None when nothing was pending.
        """
    # Reading -----------------------------------------------------------------
    def get(self, path: Path) -> Value:
        """The value at ``path`` (objects materialized), None when absent.

        Raises AutomergeError when a parent on the path is not an object.
        """
    def get_all(self, path: Path) -> list[Value]:
        """Every concurrent value of the key at ``path`` (conflicts).

        Sorted so that the last one is the value ``get`` returns; [] when absent.
        """
    def materialize(self, path: Path = ()) -> Value:
        """The object at ``path`` as nested dicts and lists, in one call.

        Raises AutomergeError when there is no object at ``path``.
        """
    def keys(self, path: Path = ()) -> list[str]:
        """The keys of the map at ``path``, sorted."""
    def length(self, path: Path = ()) -> int:
        """Number of keys of a map or items of a list at ``path``."""
    # Writing -----------------------------------------------------------------
    def put(self, path: Path, value: Value) -> None:
        """Set the map key or list index that ends ``path`` to ``value``.

        A dict or list value creates a new nested object. The parent object
        must exist.
        """
    def update(self, path: Path, entries: Mapping[str, Value]) -> None:
        """``put`` every entry of ``entries`` into the map at ``path``."""
    def insert(self, path: Path, value: Value) -> None:
        """Insert ``value`` into a list; ``path`` ends with the index."""
    def delete(self, path: Path) -> None:
        """Delete the map key or list index that ends ``path``."""
    # Changes -----------------------------------------------------------------
    def get_changes(self, since: Sequence[bytes]) -> list[bytes]:
        """Raw bytes of every change not in the history of ``since``."""
    def apply_changes(self, changes: Sequence[bytes]) -> None:
        """Apply raw changes (from ``get_changes`` of any document)."""
    def last_local_change(self) -> bytes | None:
        """Hash of the newest change made by this document's actor."""
    def has_all(self, hashes: Sequence[bytes]) -> bool:
        """True when every hash in ``hashes`` is a change held here."""
    def covers(self, heads: Sequence[bytes], hashes: Sequence[bytes]) -> bool:
        """True when every hash in ``hashes`` is in the history of ``heads``.

        "In the history" includes being one of the heads. Requires every head
        to be held here; returns False when one is not.
        """
    def diff(
        self, before: Sequence[bytes], after: Sequence[bytes]
    ) -> list[tuple[list[str | int], str | int, str]]:
        """What changed between two sets of heads, as patches.

        Each patch is (path of the object changed, key or index, action),
        with action one of "put", "delete", "insert", "splice", "increment",
        "mark", "conflict".
        """
    # Sync --------------------------------------------------------------------
    def generate_sync_message(self, state: SyncState) -> bytes | None:
        """The next sync message for the peer of ``state``, None if none due."""
    def receive_sync_message(
        self, state: SyncState, message: bytes
    ) -> list[tuple[list[str | int], str | int, str]]:
        """Apply a sync message from the peer of ``state``.

        Returns the patches the message made, shaped as :meth:`diff`'s, at a
        cost that grows with the message rather than with the document.
        Raises AutomergeError on a malformed message, leaving the document
        unchanged.
        """

def fault_reload() -> None:
    """Re-read the ``AMUCRDT_FAULT`` environment variable (testing only).

    ``AMUCRDT_FAULT="operation:n"`` makes the n-th call (1-based, counted from
    process start or the last reload) of the named binding operation panic
    inside Rust, so tests can check that panics are contained. Unset, it
    costs one relaxed atomic load per call.
    """
