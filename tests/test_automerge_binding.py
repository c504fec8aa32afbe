"""The Automerge binding against its contract (``amucrdt/_automerge.pyi``).

Everything here runs the real compiled binding: merging, syncing over a lossy
channel, saving and loading, bad input, contained panics, determinism.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amucrdt._automerge import Document, SyncState, fault_reload
from amucrdt.errors import AmucrdtError, AutomergeError

ACTOR_A = bytes(range(16))
ACTOR_B = bytes(range(16, 32))
ACTOR_C = bytes(range(32, 48))


def genesis() -> Document:
    """A small shared starting document, the same bytes every time."""
    doc = Document(actor=b"\x00" * 16)
    doc.update((), {"k": {}, "list": [], "nested": {"cfg": {"retries": 1}}})
    doc.commit(message="genesis", time=0)
    return doc


def replicas(*actors: bytes) -> list[Document]:
    data = genesis().save()
    return [Document.load(data, actor=actor) for actor in actors]


# Values -----------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
    ),
    max_leaves=25,
)


def test_scalars_round_trip_through_a_document() -> None:
    doc = Document()
    sample: dict[str, Any] = {
        "none": None,
        "true": True,
        "false": False,
        "int": -7,
        "max": 2**63 - 1,
        "min": -(2**63),
        "float": 2.5,
        "whole_float": 3.0,
        "str": "héllo ✓",
        "bytes": b"\x00\xff",
        "empty_map": {},
        "empty_list": [],
        "tuple": (1, 2),
    }
    doc.update((), sample)

    got = doc.materialize()

    assert got == {**sample, "tuple": [1, 2]}
    assert type(got["true"]) is bool
    assert type(got["int"]) is int
    assert type(got["whole_float"]) is float
    assert type(got["bytes"]) is bytes


def test_nested_dicts_and_lists_become_objects() -> None:
    doc = Document()
    doc.put(["jobs"], {"build": {"argv": ["make", "-j2"], "env": {"CC": "gcc"}}})

    doc.insert(["jobs", "build", "argv", 1], "V=1")
    doc.put(["jobs", "build", "env", "CFLAGS"], "-O2")

    assert doc.get(["jobs", "build", "argv"]) == ["make", "V=1", "-j2"]
    assert doc.keys(["jobs", "build", "env"]) == ["CC", "CFLAGS"]
    assert doc.length(["jobs", "build", "argv"]) == 3
    assert doc.get(["jobs", "build", "argv", 2]) == "-j2"


def test_int_outside_64_bits_raises_naming_the_path() -> None:
    doc = Document()

    with pytest.raises(AutomergeError, match=r"put: .*\['a', 'b', 1\]"):
        doc.put(["a"], {"b": [1, 2**63]})
    with pytest.raises(AutomergeError, match=r"\['x'\]"):
        doc.put(["x"], -(2**63) - 1)
    assert doc.materialize() == {}


def test_unsupported_values_and_keys_raise() -> None:
    doc = Document()

    with pytest.raises(AutomergeError, match="unsupported type set"):
        doc.put(["a"], {1, 2})  # type: ignore[arg-type]
    with pytest.raises(AutomergeError, match="keys must be str"):
        doc.put(["a"], {1: "x"})  # type: ignore[dict-item]
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(AutomergeError, match="nested deeper"):
        doc.put(["a"], cyclic)


def test_paths_address_values_and_reject_scalars_on_the_way() -> None:
    doc = Document()
    doc.update((), {"n": 1, "m": {"list": [10, 20]}})

    assert doc.get(["absent"]) is None
    assert doc.get(["m", "absent", "deeper"]) is None
    assert doc.get(["m", "list", 5]) is None
    assert doc.get(()) == {"n": 1, "m": {"list": [10, 20]}}
    with pytest.raises(AutomergeError, match=r"get: .*\['n'\] is a int"):
        doc.get(["n", "x"])
    with pytest.raises(AutomergeError, match="cannot be addressed by index"):
        doc.get(["m", 0])
    with pytest.raises(AutomergeError, match=r"materialize: .*no such object"):
        doc.materialize(["absent"])
    with pytest.raises(AutomergeError, match="keys needs a map"):
        doc.keys(["m", "list"])
    with pytest.raises(AutomergeError, match="not a str or bytes"):
        doc.get("m")


def test_writes_check_their_target() -> None:
    doc = Document()
    doc.put(["list"], ["a"])

    with pytest.raises(AutomergeError, match=r"put: .*parent object"):
        doc.put(["absent", "x"], 1)
    with pytest.raises(AutomergeError, match="out of range"):
        doc.put(["list", 1], "b")
    with pytest.raises(AutomergeError, match="out of range"):
        doc.insert(["list", 2], "c")
    with pytest.raises(AutomergeError, match="path is empty"):
        doc.put([], 1)
    with pytest.raises(AutomergeError, match="insert needs a list"):
        doc.insert(["k"], 1)

    doc.insert(["list", 1], "end")
    doc.put(["list", 0], "first")
    doc.delete(["list", 0])
    doc.delete(["never-set"])
    assert doc.get(["list"]) == ["end"]


def test_update_accepts_any_mapping() -> None:
    doc = Document()

    doc.update((), {"a": 1})
    doc.update((), _Mapping({"b": [2]}))

    assert doc.materialize() == {"a": 1, "b": [2]}


class _Mapping(Mapping[str, Any]):
    """A read-only mapping that is not a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_ten_thousand_key_map_materializes_fast() -> None:
    doc = Document()
    doc.put(["m"], {f"key{i:05}": {"n": i} for i in range(10_000)})
    doc.commit()

    timings = []
    for _ in range(3):
        start = time.perf_counter()
        got: Any = doc.materialize(["m"])
        timings.append(time.perf_counter() - start)

    assert len(got) == 10_000
    assert got["key09999"] == {"n": 9999}
    assert list(got)[:2] == ["key00000", "key00001"]
    # The best of three, so a busy machine does not fail the test; unloaded
    # it takes a few tens of milliseconds.
    assert min(timings) < 0.5, f"materialize took {min(timings):.3f}s"


# 1. Concurrent edits merge to the same state --------------------------------


def test_concurrent_edits_merge_identically_in_either_order() -> None:
    a, b = replicas(ACTOR_A, ACTOR_B)
    a.put(["k", "same"], "from a")
    b.put(["k", "same"], "from b")
    a.put(["k", "only_a"], 1)
    b.put(["k", "only_b"], 2)
    a.put(["nested", "cfg", "timeout"], 30)
    b.put(["nested", "cfg", "retries"], 5)
    a.insert(["list", 0], {"by": "a"})
    b.insert(["list", 0], ["by", "b"])
    a.commit(time=0)
    b.commit(time=0)

    ab = a.fork()
    ab.merge(b)
    ba = b.fork()
    ba.merge(a)

    assert ab.heads() == ba.heads()
    assert ab.materialize() == ba.materialize()
    state: Any = ab.materialize()
    assert state["k"]["only_a"] == 1
    assert state["k"]["only_b"] == 2
    assert state["nested"]["cfg"] == {"retries": 5, "timeout": 30}
    assert sorted(map(str, state["list"])) == sorted(
        map(str, [{"by": "a"}, ["by", "b"]])
    )
    conflict: list[Any] = ab.get_all(["k", "same"])
    assert sorted(conflict) == ["from a", "from b"]
    assert conflict == ba.get_all(["k", "same"])
    assert conflict[-1] == ab.get(["k", "same"]) == ba.get(["k", "same"])


def test_merge_returns_new_hashes_and_is_idempotent() -> None:
    a, b = replicas(ACTOR_A, ACTOR_B)
    b.put(["k", "x"], 1)
    hash_b = b.commit(time=0)

    assert a.merge(b) == [hash_b]
    assert a.merge(b) == []
    assert a.merge(a) == []
    assert a.get(["k", "x"]) == 1


def test_changes_exchange_converges_like_merge() -> None:
    a, b = replicas(ACTOR_A, ACTOR_B)
    base = a.heads()
    a.put(["k", "x"], 1)
    b.put(["k", "x"], 2)
    a.commit(time=0)
    b.commit(time=0)

    a.apply_changes(b.get_changes(base))
    b.apply_changes(a.get_changes(base))

    assert a.heads() == b.heads()
    assert a.get_all(["k", "x"]) == b.get_all(["k", "x"])
    assert b.get_changes(b.heads()) == []


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from("abc"), values),
        st.tuples(st.just("insert"), st.integers(0, 3), values),
        st.tuples(st.just("delete"), st.sampled_from("abc"), st.none()),
    ),
    max_size=8,
)


def apply_ops(doc: Document, script: list[tuple[str, Any, Any]]) -> None:
    for op, where, value in script:
        if op == "put":
            doc.put(["k", where], value)
        elif op == "insert":
            doc.insert(["list", min(where, doc.length(["list"]))], value)
        else:
            doc.delete(["k", where])
        doc.commit(time=0)


@given(ops, ops)
def test_random_concurrent_edits_merge_identically(
    ops_a: list[tuple[str, Any, Any]], ops_b: list[tuple[str, Any, Any]]
) -> None:
    a, b = replicas(ACTOR_A, ACTOR_B)
    apply_ops(a, ops_a)
    apply_ops(b, ops_b)

    ab = a.fork()
    ab.merge(b)
    ba = b.fork()
    ba.merge(a)

    assert ab.heads() == ba.heads()
    assert ab.materialize() == ba.materialize()
    for key in "abc":
        assert ab.get_all(["k", key]) == ba.get_all(["k", key])


# 2. Sync over a channel that drops, delays, duplicates and reorders ----------


class Network:
    """Replicas joined pairwise by links that lose, repeat and reorder messages.

    A dropped message is treated as the link's connection being reset, which
    is how a real peer notices loss: both ends start over with fresh sync
    states, and messages still in flight from the old connection are
    discarded when they arrive. Duplicates and reorders happen within one
    connection.
    """

    def __init__(self, docs: list[Document]) -> None:
        self.docs = docs
        pairs = [(a, b) for a in range(len(docs)) for b in range(len(docs)) if a != b]
        self.pairs = pairs
        self.states = {pair: SyncState() for pair in pairs}
        self.epochs = {self.link(a, b): 0 for a, b in pairs}
        self.in_flight: list[tuple[int, int, int, bytes]] = []
        self.resets = 0

    @staticmethod
    def link(a: int, b: int) -> tuple[int, int]:
        return (min(a, b), max(a, b))

    def send(self, src: int, dst: int) -> bool:
        message = self.docs[src].generate_sync_message(self.states[(src, dst)])
        if message is None:
            return False
        self.in_flight.append((src, dst, self.epochs[self.link(src, dst)], message))
        return True

    def deliver(self, index: int) -> None:
        src, dst, epoch, message = self.in_flight.pop(index)
        if epoch != self.epochs[self.link(src, dst)]:
            return
        self.docs[dst].receive_sync_message(self.states[(dst, src)], message)

    def drop(self, index: int) -> None:
        src, dst, epoch, _ = self.in_flight.pop(index)
        link = self.link(src, dst)
        if epoch == self.epochs[link]:
            self.epochs[link] += 1
            self.states[(src, dst)] = SyncState()
            self.states[(dst, src)] = SyncState()
            self.resets += 1

    def duplicate(self, index: int) -> None:
        self.in_flight.append(self.in_flight[index])

    def settle(self, max_rounds: int = 60) -> int:
        """Run reliable rounds until no replica has anything to send."""
        for round_number in range(max_rounds):
            sent = [self.send(src, dst) for src, dst in self.pairs]
            delivered = bool(self.in_flight)
            while self.in_flight:
                self.deliver(0)
            if not any(sent) and not delivered:
                return round_number
        raise AssertionError(f"sync still busy after {max_rounds} rounds")


node_ids = st.integers(0, 2)
steps = st.one_of(
    st.tuples(st.just("put"), node_ids, st.sampled_from("xyz"), scalars),
    st.tuples(st.just("insert"), node_ids, st.just(""), scalars),
    st.tuples(st.just("nest"), node_ids, st.sampled_from("xyz"), values),
    st.tuples(st.just("send"), node_ids, node_ids, st.none()),
    st.tuples(st.just("deliver"), st.integers(0, 50), st.none(), st.none()),
    st.tuples(st.just("drop"), st.integers(0, 50), st.none(), st.none()),
    st.tuples(st.just("duplicate"), st.integers(0, 50), st.none(), st.none()),
)


def run_schedule(net: Network, schedule: list[tuple[str, Any, Any, Any]]) -> None:
    for kind, first, second, value in schedule:
        if kind in ("put", "insert", "nest"):
            doc = net.docs[first]
            if kind == "put":
                doc.put(["k", second], value)
            elif kind == "insert":
                doc.insert(["list", 0], value)
            else:
                doc.put(["nested", second], {"v": value, "by": first})
            doc.commit(time=0)
        elif kind == "send":
            if first != second:
                net.send(first, second)
        elif net.in_flight:
            index = first % len(net.in_flight)
            if kind == "deliver":
                net.deliver(index)
            elif kind == "drop":
                net.drop(index)
            else:
                net.duplicate(index)


@given(st.lists(steps, max_size=80))
def test_three_replicas_converge_over_a_faulty_channel(
    schedule: list[tuple[str, Any, Any, Any]],
) -> None:
    net = Network(replicas(ACTOR_A, ACTOR_B, ACTOR_C))

    run_schedule(net, schedule)
    net.settle()

    first = net.docs[0]
    for other in net.docs[1:]:
        assert other.heads() == first.heads()
        assert other.materialize() == first.materialize()
        for key in "xyz":
            assert other.get_all(["k", key]) == first.get_all(["k", key])
    # A quiet link does not mean each end has seen the other's latest heads:
    # a replica that received changes through a third one may never hear
    # them confirmed directly. Each end has heard from the other, though.
    for state in net.states.values():
        assert state.their_heads is not None
        assert first.has_all(state.their_heads)


def test_sync_over_a_reset_link_resumes_with_fresh_states() -> None:
    net = Network(replicas(ACTOR_A, ACTOR_B))
    net.docs[0].put(["k", "x"], 1)
    net.docs[0].commit(time=0)
    assert net.send(0, 1)

    net.drop(0)
    net.settle()

    assert net.resets == 1
    assert net.docs[1].get(["k", "x"]) == 1


def test_sync_state_round_trips_and_reports_heads() -> None:
    a, b = replicas(ACTOR_A, ACTOR_B)
    a.put(["k", "x"], 1)
    a.commit(time=0)
    state_a, state_b = SyncState(), SyncState()
    assert (state_a.their_heads, state_a.shared_heads) == (None, [])

    for _ in range(10):
        m1 = a.generate_sync_message(state_a)
        if m1 is not None:
            b.receive_sync_message(state_b, m1)
        m2 = b.generate_sync_message(state_b)
        if m2 is not None:
            a.receive_sync_message(state_a, m2)
        if m1 is None and m2 is None:
            break

    assert b.heads() == a.heads()
    assert state_a.their_heads == a.heads()
    assert state_a.shared_heads == a.heads()
    assert state_a.last_sent_heads == a.heads()
    restored = SyncState.decode(state_a.encode())
    assert restored.shared_heads == a.heads()
    assert restored.their_heads is None
    assert a.generate_sync_message(restored) is not None


# 3. Saving, loading, and bad bytes -------------------------------------------


def sample_document() -> Document:
    doc = Document(actor=ACTOR_A)
    doc.update((), {"queue": {"name": "nightly", "jobs": ["a", "b"]}, "n": 3})
    doc.commit(time=0)
    doc.put(["queue", "by"], "node-1")
    doc.put(["blob"], b"\x00" * 40)
    doc.commit(time=0)
    return doc


def test_save_and_load_round_trip() -> None:
    doc = sample_document()

    loaded = Document.load(doc.save())

    assert loaded.heads() == doc.heads()
    assert loaded.materialize() == doc.materialize()
    assert loaded.actor() != doc.actor()
    assert Document.load(doc.save(), actor=ACTOR_B).actor() == ACTOR_B


def test_save_after_and_load_incremental_round_trip() -> None:
    doc = sample_document()
    copy = Document.load(doc.save())
    before = doc.heads()
    doc.put(["n"], 4)
    doc.insert(["queue", "jobs", 2], "c")
    doc.commit(time=0)

    increment = doc.save_after(before)
    applied = copy.load_incremental(increment)

    assert applied > 0
    assert copy.heads() == doc.heads()
    assert copy.materialize() == doc.materialize()
    assert doc.save_after(doc.heads()) == b""
    assert copy.load_incremental(increment) == 0
    fresh = Document()
    fresh.load_incremental(doc.save())
    assert fresh.materialize() == doc.materialize()


def test_load_accepts_concatenated_saves_and_changes() -> None:
    doc = sample_document()
    before = doc.heads()
    doc.put(["n"], 5)
    doc.commit(time=0)

    combined = Document.load(doc.save() + doc.save_after(before))

    assert combined.heads() == doc.heads()


def test_truncated_documents_raise_or_load_without_crashing() -> None:
    data = sample_document().save()
    outcomes = {"raised": 0, "loaded": 0}

    for cut in range(len(data)):
        try:
            doc = Document.load(data[:cut])
        except AutomergeError:
            outcomes["raised"] += 1
        else:
            outcomes["loaded"] += 1
            doc.materialize()

    assert outcomes["raised"] == len(data)


def test_flipped_bytes_raise_or_load_without_crashing() -> None:
    data = sample_document().save()
    raised = 0

    for index in range(len(data)):
        damaged = bytearray(data)
        damaged[index] ^= 0xFF
        try:
            doc = Document.load(bytes(damaged))
        except AutomergeError:
            raised += 1
            continue
        # Not every byte is covered by a checksum; what loads must still
        # read without crashing.
        try:
            doc.materialize()
            doc.save()
        except AutomergeError:
            pass

    assert raised > len(data) // 2


def test_truncated_and_flipped_increments_never_crash() -> None:
    doc = sample_document()
    base = doc.save()
    before = doc.heads()
    doc.put(["n"], 9)
    doc.commit(time=0)
    increment = doc.save_after(before)

    for index in range(len(increment)):
        for damaged in (increment[:index], _flip(increment, index)):
            target = Document.load(base)
            try:
                target.load_incremental(damaged)
            except AutomergeError:
                continue
            target.materialize()


def _flip(data: bytes, index: int) -> bytes:
    damaged = bytearray(data)
    damaged[index] ^= 0xFF
    return bytes(damaged)


def test_garbage_raises_automerge_error() -> None:
    doc = sample_document()
    heads = doc.heads()

    with pytest.raises(AutomergeError, match="receive_sync_message: malformed"):
        doc.receive_sync_message(SyncState(), b"\x42garbage")
    with pytest.raises(AutomergeError, match="decode: cannot decode"):
        SyncState.decode(b"\xff\x00\x01")
    with pytest.raises(AutomergeError, match=r"apply_changes: changes\[0\]"):
        doc.apply_changes([b"not a change"])
    with pytest.raises(AutomergeError, match="load: cannot load"):
        Document.load(b"not a document")
    with pytest.raises(AutomergeError, match="load: no data"):
        Document.load(b"")
    with pytest.raises(AutomergeError, match=r"covers: heads\[0\] is 3 bytes"):
        doc.covers([b"abc"], [])
    with pytest.raises(AutomergeError, match="actor id is empty"):
        Document(actor=b"")

    assert doc.heads() == heads
    assert not doc.poisoned
    assert issubclass(AutomergeError, AmucrdtError)


@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_automerge_error(
    data: bytes,
) -> None:
    doc = sample_document()
    calls: list[Callable[[], object]] = [
        lambda: Document.load(data),
        lambda: doc.load_incremental(data),
        lambda: doc.receive_sync_message(SyncState(), data),
        lambda: SyncState.decode(data),
        lambda: doc.apply_changes([data]),
    ]
    for call in calls:
        with contextlib.suppress(AutomergeError):
            call()
    assert not doc.poisoned


@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=8))
def test_corrupted_sync_messages_are_rejected_or_harmless(
    position: int, noise: bytes
) -> None:
    a, b = replicas(ACTOR_A, ACTOR_B)
    a.put(["k", "x"], "payload")
    a.commit(time=0)
    message = a.generate_sync_message(SyncState())
    assert message is not None
    index = position % len(message)
    damaged = message[:index] + noise + message[index + len(noise) :]
    before = b.heads()

    try:
        b.receive_sync_message(SyncState(), damaged)
    except AutomergeError:
        assert b.heads() == before
    assert not b.poisoned
    b.materialize()


# 4. Random documents survive save and load -----------------------------------


@given(st.dictionaries(st.text(max_size=10), values, max_size=6), values)
def test_random_documents_survive_save_and_load(
    root: dict[str, Any], extra: Any
) -> None:
    doc = Document()
    doc.update((), root)
    doc.commit(time=0)
    doc.put(["extra"], extra)

    loaded = Document.load(doc.save())

    assert loaded.heads() == doc.heads()
    assert loaded.materialize() == doc.materialize()
    assert loaded.get(["extra"]) == _normalize(extra)


def _normalize(value: Any) -> Any:
    """What a value reads back as: tuples become lists."""
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalize(v) for v in value]
    return value


# 5. Panics are contained -----------------------------------------------------


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    def arm(spec: str) -> None:
        monkeypatch.setenv("AMUCRDT_FAULT", spec)
        fault_reload()

    yield arm
    monkeypatch.delenv("AMUCRDT_FAULT", raising=False)
    fault_reload()


FAULTY_CALLS: dict[str, Callable[[Document, Document], object]] = {
    "receive_sync_message": lambda doc, other: doc.receive_sync_message(
        SyncState(), _first_message(other)
    ),
    "generate_sync_message": lambda doc, _: doc.generate_sync_message(SyncState()),
    "load_incremental": lambda doc, other: doc.load_incremental(other.save()),
    "merge": lambda doc, other: doc.merge(other),
    "apply_changes": lambda doc, other: doc.apply_changes(other.get_changes([])),
    "get_changes": lambda doc, _: doc.get_changes([]),
    "save_after": lambda doc, _: doc.save_after([]),
    "materialize": lambda doc, _: doc.materialize(),
    "put": lambda doc, _: doc.put(["k", "z"], 1),
    "covers": lambda doc, _: doc.covers(doc.heads(), []),
    "diff": lambda doc, _: doc.diff([], doc.heads()),
}


def poisoned(doc: Document) -> bool:
    """Read the flag afresh (a plain attribute read would be narrowed)."""
    return doc.poisoned


def _first_message(doc: Document) -> bytes:
    message = doc.generate_sync_message(SyncState())
    assert message is not None
    return message


@pytest.mark.parametrize("operation", sorted(FAULTY_CALLS))
def test_injected_panic_raises_automerge_error_and_poisons(
    operation: str,
    fault: Callable[[str], None],
    capfd: pytest.CaptureFixture[str],
) -> None:
    doc, other = replicas(ACTOR_A, ACTOR_B)
    other.put(["k", "x"], 1)
    other.commit(time=0)
    call = FAULTY_CALLS[operation]
    fault(f"{operation}:2")

    call(doc, other)
    assert not poisoned(doc)
    try:
        call(doc, other)
    except Exception as error:  # a PanicException would not be caught here
        caught: BaseException = error
    else:
        pytest.fail(f"the second {operation} call did not fail")

    assert isinstance(caught, AutomergeError)
    assert str(caught).startswith(f"{operation}: internal panic in automerge: ")
    assert "AMUCRDT_FAULT" in str(caught)
    assert poisoned(doc)
    call(doc, other)  # only the n-th call fails
    rebuilt = Document.load(doc.save())
    assert not rebuilt.poisoned
    rebuilt.merge(other)
    assert rebuilt.get(["k", "x"]) == 1
    assert "panicked" not in capfd.readouterr().err


def test_injected_panic_in_static_calls(fault: Callable[[str], None]) -> None:
    data = sample_document().save()
    fault("load:1")
    with pytest.raises(AutomergeError, match="load: internal panic"):
        Document.load(data)
    assert Document.load(data).get(["n"]) == 3

    fault("decode:1")
    with pytest.raises(AutomergeError, match="decode: internal panic"):
        SyncState.decode(SyncState().encode())


def test_fault_switch_is_off_when_unset_or_malformed(
    fault: Callable[[str], None],
) -> None:
    doc = sample_document()
    for spec in ("save", "save:0", "save:x", ":1", ""):
        fault(spec)
        for _ in range(3):
            doc.save()
    assert not doc.poisoned


# 6. Determinism --------------------------------------------------------------


def test_same_actor_same_puts_same_hash() -> None:
    def build() -> Document:
        doc = Document(actor=b"\x00" * 16)
        doc.update((), {"schema": 1, "hosts": {}, "queues": {}, "jobs": {}})
        doc.put(["claims"], {})
        return doc

    first, second = build(), build()
    hash_1 = first.commit(message="genesis", time=0)
    hash_2 = second.commit(message="genesis", time=0)

    assert hash_1 is not None
    assert hash_1 == hash_2
    assert first.heads() == second.heads() == [hash_1]
    assert first.save() == second.save()
    other_actor = Document(actor=b"\x01" * 16)
    other_actor.update((), {"schema": 1, "hosts": {}, "queues": {}, "jobs": {}})
    other_actor.put(["claims"], {})
    assert other_actor.commit(message="genesis", time=0) != hash_1


def test_commit_without_pending_operations_returns_none() -> None:
    doc = Document()
    assert doc.commit() is None
    doc.put(["a"], 1)
    first = doc.commit(time=5)
    assert first is not None
    assert doc.last_local_change() == first
    assert doc.commit() is None


# History queries -------------------------------------------------------------


def test_covers_and_has_all_follow_the_history() -> None:
    a, b = replicas(ACTOR_A, ACTOR_B)
    base = a.heads()
    a.put(["k", "x"], 1)
    claim = a.commit(time=0)
    a.put(["k", "y"], 2)
    later = a.commit(time=0)
    b.put(["k", "z"], 3)
    concurrent = b.commit(time=0)
    assert claim is not None and later is not None and concurrent is not None

    assert a.has_all([*base, claim, later])
    assert not a.has_all([concurrent])
    assert a.has_all([])
    assert a.covers([later], [claim, later, *base])
    assert a.covers([claim], [claim])
    assert not a.covers([claim], [later])
    assert not a.covers(base, [claim])
    assert not a.covers([concurrent], [])
    assert a.covers([later], [])
    assert not a.covers([], [claim])

    a.merge(b)
    assert a.covers(a.heads(), [claim, later, concurrent])
    assert not a.covers([later], [concurrent])
    assert not a.covers([concurrent], [claim])


def test_diff_reports_patches_between_heads() -> None:
    doc = sample_document()
    before = doc.heads()
    doc.put(["queue", "name"], "weekly")
    doc.insert(["queue", "jobs", 0], "first")
    doc.delete(["n"])
    doc.commit(time=0)

    patches = doc.diff(before, doc.heads())

    assert (["queue"], "name", "put") in patches
    assert (["queue", "jobs"], 0, "insert") in patches
    assert ([], "n", "delete") in patches
    assert doc.diff(doc.heads(), doc.heads()) == []
    with pytest.raises(AutomergeError, match="diff: before names unknown change"):
        doc.diff([b"\x01" * 32], doc.heads())


def test_actor_can_be_read_and_changed() -> None:
    doc = Document(actor=ACTOR_A)
    assert doc.actor() == ACTOR_A
    doc.set_actor(ACTOR_B)
    assert doc.actor() == ACTOR_B
    assert doc.fork(actor=ACTOR_C).actor() == ACTOR_C
    assert doc.fork().actor() not in (ACTOR_B, ACTOR_C)


# Threads ---------------------------------------------------------------------


def test_threads_share_one_document_without_deadlock() -> None:
    doc = Document()
    doc.put(["counts"], {})
    other = sample_document()
    barrier = threading.Barrier(4)

    def work(worker: int) -> int:
        barrier.wait()
        for i in range(200):
            doc.put(["counts", f"w{worker}"], i)
            if i % 20 == 0:
                doc.save()
                doc.merge(other)
                other.merge(doc)
                doc.materialize()
        return worker

    with ThreadPoolExecutor(max_workers=4) as pool:
        done = sorted(pool.map(work, range(4)))

    assert done == [0, 1, 2, 3]
    assert doc.get(["counts"]) == {f"w{w}": 199 for w in range(4)}
    assert not doc.poisoned


def test_float_special_values_round_trip() -> None:
    doc = Document()
    doc.put(["inf"], math.inf)
    doc.put(["nan"], math.nan)
    loaded = Document.load(doc.save())
    assert loaded.get(["inf"]) == math.inf
    nan: Any = loaded.get(["nan"])
    assert math.isnan(nan)
