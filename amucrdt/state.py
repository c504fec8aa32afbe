"""The cluster document: schema, typed writes, and the derived view of jobs.

Every node holds one Automerge document laid out as below (``docs/state.md``
describes it in full)::

    schema     int                          the schema version
    hosts      {node_id: host record}       written only by that node
    addresses  {url: {by, at}}              peer addresses handed to any node
    queues     {queue: queue record}        written by the pushing node
    jobs       {job_id: job record}         written with its queue
    claims     {key: {at}}                  key = "attempt:node:job_id"
    results    {key: result record}         key = "attempt:node:job_id"
    takeovers  {key: {runner, at, reason}}  key = "attempt:observer:job_id"

Every map above is created once, in a genesis change that every node builds
byte for byte the same way, so no two nodes ever create the same container
concurrently (Automerge would keep only one of two such maps visible). Below
the root, every writer writes under keys that carry its own node id, so
concurrent writes sit side by side instead of overwriting each other.

A job's state is never stored: :meth:`Cluster.job` derives it from claims,
results and takeovers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from amucrdt import SCHEMA_VERSION
from amucrdt._automerge import Document
from amucrdt.errors import AmucrdtError, SchemaError
from amucrdt.formats import JobSpec, QueueSpec
from amucrdt.rule import winner

log = logging.getLogger(__name__)

#: Actor of the genesis change; no node ever writes with it afterwards.
GENESIS_ACTOR = bytes(16)

#: The root maps, all created by the genesis change.
ROOT_MAPS = (
    "hosts",
    "addresses",
    "queues",
    "jobs",
    "claims",
    "results",
    "takeovers",
)

#: An attempt whose runner vanished this many times fails the job, so a job
#: that kills every machine it runs on does not go round the cluster forever.
MAX_LOST_ATTEMPTS = 5

PENDING = "pending"
CLAIMED = "claimed"
RUNNING = "running"
DONE = "done"
FAILED = "failed"


def genesis() -> Document:
    """The genesis document, identical in bytes and heads on every node."""
    doc = Document(actor=GENESIS_ACTOR)
    entries: dict[str, Any] = {name: {} for name in ROOT_MAPS}
    entries["schema"] = SCHEMA_VERSION
    doc.update((), entries)
    doc.commit("amucrdt genesis", time=0)
    return doc


def check_schema(doc: Document, where: str) -> None:
    """Refuse a document whose schema this node does not understand.

    Raises:
        SchemaError: naming both versions and ``where`` the document came from.
    """
    version = doc.get(("schema",))
    if version != SCHEMA_VERSION:
        raise SchemaError(
            f"{where}: document has schema version {version!r}; this node reads "
            f"schema version {SCHEMA_VERSION}"
        )
    missing = [name for name in ROOT_MAPS if doc.get((name,)) is None]
    if missing:
        raise SchemaError(f"{where}: document lacks {', '.join(missing)}")


def job_id(queue: str, name: str) -> str:
    """The id of job ``name`` of ``queue``; queue names never contain '/'."""
    return f"{queue}/{name}"


def entry_key(attempt: int, node_id: str, job: str) -> str:
    """The key of a claim, result or takeover written by ``node_id``."""
    return f"{attempt}:{node_id}:{job}"


def split_key(key: str) -> tuple[int, str, str]:
    """Inverse of :func:`entry_key`.

    Raises:
        ValueError: when ``key`` is not a valid entry key.
    """
    attempt, node_id, job = key.split(":", 2)
    return int(attempt), node_id, job


@dataclass
class JobView:
    """The derived state of one job, as every replica with the same heads sees it.

    Attributes:
        job_id: "queue/name".
        state: pending, claimed, running, done or failed.
        attempt: the current attempt, or the one that ended the job.
        node: the winner (claimed), runner (running) or the node whose result
            ended the job; None while pending.
        claimants: nodes that claimed the current attempt.
        result: the result record that ended the job, or the running record.
        failures: attempts that ran and failed.
        lost: attempts whose runner vanished (lease expired or node restarted).
    """

    job_id: str
    queue: str
    name: str
    state: str
    attempt: int
    node: str | None = None
    claimants: tuple[str, ...] = ()
    result: dict[str, Any] | None = None
    failures: int = 0
    lost: int = 0


@dataclass
class _JobIndex:
    """Everything the document says about one job, grouped by attempt."""

    record: dict[str, Any] | None = None
    claims: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    results: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    takeovers: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)


class Cluster:
    """A typed view over the cluster document, with an index kept up to date.

    Writes go straight into the document; reads come from an index that
    :meth:`refresh` updates from Automerge's diff between the heads it last saw
    and the current heads, so a change touches only the jobs it concerns.
    """

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.hosts: dict[str, dict[str, Any]] = {}
        self.addresses: dict[str, dict[str, Any]] = {}
        self.queues: dict[str, dict[str, Any]] = {}
        self._jobs: dict[str, _JobIndex] = {}
        # Job ids in push order: (queue pushed_at, queue name, seq).
        self._order: list[str] | None = None
        self._seen_heads: list[bytes] | None = None
        # Derived views, dropped whenever their job's records change.
        self._views: dict[str, JobView] = {}
        # Index into job_ids() before which every job is done or failed. A
        # finished job never reopens, so the cursor only moves forward until
        # the order changes; it keeps scans for open work short.
        self._open_from = 0
        # Root entries written or received since the last refresh, and
        # whether something touched the root itself (reload everything).
        self._touched: set[tuple[str, str]] = set()
        self._full = False
        # Set when changes arrived by a way that reports no patches (merge).
        self._diff_next = False
        self.refresh()

    # Index -------------------------------------------------------------------

    def refresh(self) -> set[str]:
        """Bring the index up to date with the document.

        The keys that changed come from this class's own writes and from the
        patches handed to :meth:`note_patches`. After :meth:`merge`, or when
        heads moved with neither (a change made directly on the document), it
        asks Automerge for a diff, whose cost grows with the whole document.

        Returns the ids of the jobs whose records changed.
        """
        heads = self.doc.heads()
        if heads == self._seen_heads:
            self._touched.clear()
            return set()
        touched = self._touched
        self._touched = set()
        full = self._seen_heads is None or self._full
        self._full = False
        if not full and (self._diff_next or not touched):
            assert self._seen_heads is not None
            full = self._note(self.doc.diff(self._seen_heads, heads), touched)
        self._diff_next = False
        if len(touched) > 2000:
            # One materialize beats thousands of single reads.
            full = True
        self._seen_heads = heads
        if full:
            return self._reload()
        changed: set[str] = set()
        for part, key in touched:
            value = self.doc.get((part, key))
            changed |= self._index(part, key, value)
        for job in changed:
            self._views.pop(job, None)
        return changed

    def merge(self, other: Document) -> None:
        """Merge ``other`` into the document; the next refresh sees its changes."""
        self.doc.merge(other)
        self._diff_next = True

    def note_patches(
        self, patches: Iterable[tuple[list[str | int], str | int, str]]
    ) -> None:
        """Record what a received sync message changed, for the next refresh."""
        if self._note(patches, self._touched):
            self._full = True

    @staticmethod
    def _note(
        patches: Iterable[tuple[list[str | int], str | int, str]],
        touched: set[tuple[str, str]],
    ) -> bool:
        """Add the root entries ``patches`` touch; True when one is the root."""
        for path, key, _action in patches:
            if len(path) >= 2:
                touched.add((str(path[0]), str(path[1])))
            elif len(path) == 1:
                touched.add((str(path[0]), str(key)))
            else:
                return True
        return False

    def _reload(self) -> set[str]:
        self.hosts, self.addresses, self.queues = {}, {}, {}
        self._jobs = {}
        self._views = {}
        self._order = None
        for part in ROOT_MAPS:
            content = self.doc.materialize((part,))
            assert isinstance(content, dict)
            for key, value in content.items():
                self._index(part, key, value)
        return set(self._jobs)

    def _index(self, part: str, key: str, value: Any) -> set[str]:
        if part in ("hosts", "addresses", "queues"):
            table: dict[str, dict[str, Any]] = getattr(self, part)
            if isinstance(value, dict):
                table[key] = value
            else:
                table.pop(key, None)
            if part == "queues":
                self._order = None
            return set()
        if part == "jobs":
            entry = self._jobs.setdefault(key, _JobIndex())
            entry.record = value if isinstance(value, dict) else None
            self._order = None
            return {key}
        if part not in ("claims", "results", "takeovers"):
            return set()
        try:
            attempt, node_id, job = split_key(key)
        except ValueError:
            log.warning("ignoring malformed %s key %r", part, key)
            return set()
        entry = self._jobs.setdefault(job, _JobIndex())
        by_attempt: dict[int, dict[str, dict[str, Any]]] = getattr(entry, part)
        if isinstance(value, dict):
            by_attempt.setdefault(attempt, {})[node_id] = value
        else:
            by_attempt.get(attempt, {}).pop(node_id, None)
        return {job}

    # Writes ------------------------------------------------------------------

    def add_host(self, node_id: str, record: Mapping[str, Any]) -> None:
        """Write this node's own host record."""
        self.doc.put(("hosts", node_id), dict(record))
        self._touched.add(("hosts", node_id))

    def add_addresses(self, urls: Iterable[str], by: str, now: float) -> list[str]:
        """Add peer addresses; returns the ones that were new."""
        new = [url for url in urls if url not in self.addresses]
        if new:
            self.doc.update(("addresses",), {url: {"by": by, "at": now} for url in new})
            self._touched.update(("addresses", url) for url in new)
        return new

    def add_queue(self, spec: QueueSpec, pushed_by: str, now: float) -> bool:
        """Add a queue and its jobs.

        Pushing the same queue again (same jobs, same order) changes nothing
        and returns False, so a queue handed to several nodes at once runs
        once.

        Raises:
            AmucrdtError: when a queue of that name exists with other jobs.
        """
        self.refresh()
        existing = self.queues.get(spec.name)
        if existing is not None:
            if self._same_queue(spec):
                return False
            raise AmucrdtError(
                f"queue {spec.name!r} already exists with other jobs "
                f"(pushed by node {existing.get('pushed_by')}); "
                "push it under another name with --name"
            )
        self.doc.put(
            ("queues", spec.name),
            {
                "pushed_by": pushed_by,
                "pushed_at": now,
                "jobs": [job.name for job in spec.jobs],
            },
        )
        self.doc.update(
            ("jobs",),
            {
                job_id(spec.name, job.name): _job_record(spec.name, seq, job)
                for seq, job in enumerate(spec.jobs)
            },
        )
        self._touched.add(("queues", spec.name))
        self._touched.update(("jobs", job_id(spec.name, job.name)) for job in spec.jobs)
        return True

    def _same_queue(self, spec: QueueSpec) -> bool:
        existing = self.queues[spec.name]
        if list(existing.get("jobs", [])) != [job.name for job in spec.jobs]:
            return False
        for seq, job in enumerate(spec.jobs):
            entry = self._jobs.get(job_id(spec.name, job.name))
            if entry is None or entry.record is None:
                return False
            if entry.record != _job_record(spec.name, seq, job):
                return False
        return True

    def put_claim(
        self,
        job: str,
        attempt: int,
        node_id: str,
        now: float,
        withdrawn: str | None = None,
    ) -> None:
        """Write ``node_id``'s claim on ``attempt`` of ``job``.

        With ``withdrawn`` set, the claim is let go: it no longer counts for
        the winner rule. Only a claim that never started may be withdrawn.
        """
        record: dict[str, Any] = {"at": now}
        if withdrawn is not None:
            record["withdrawn"] = withdrawn
        key = entry_key(attempt, node_id, job)
        self.doc.put(("claims", key), record)
        self._touched.add(("claims", key))

    def put_result(
        self, job: str, attempt: int, node_id: str, record: Mapping[str, Any]
    ) -> None:
        """Write (or overwrite) ``node_id``'s own record of running an attempt."""
        key = entry_key(attempt, node_id, job)
        self.doc.put(("results", key), dict(record))
        self._touched.add(("results", key))

    def put_takeover(
        self,
        job: str,
        attempt: int,
        observer: str,
        runner: str,
        now: float,
        reason: str,
    ) -> None:
        """Record that ``observer`` declared ``attempt`` of ``job`` lost."""
        key = entry_key(attempt, observer, job)
        self.doc.put(
            ("takeovers", key), {"runner": runner, "at": now, "reason": reason}
        )
        self._touched.add(("takeovers", key))

    # Reads -------------------------------------------------------------------

    def job_ids(self) -> list[str]:
        """Every job id, in push order (queue by queue, jobs in file order)."""
        if self._order is None:
            records = [
                (jid, entry.record)
                for jid, entry in self._jobs.items()
                if entry.record is not None
            ]
            self._order = [
                jid
                for jid, record in sorted(
                    records,
                    key=lambda item: (
                        _num(
                            self.queues.get(str(item[1]["queue"]), {}).get("pushed_at")
                        ),
                        str(item[1]["queue"]),
                        _num(item[1].get("seq")),
                    ),
                )
            ]
            self._open_from = 0
        return self._order

    def spec(self, job: str) -> JobSpec | None:
        """The spec of ``job``, or None when the document has no such job."""
        entry = self._jobs.get(job)
        if entry is None or entry.record is None:
            return None
        return JobSpec.from_json(entry.record["spec"], f"job {job}")

    def record(self, job: str) -> dict[str, Any] | None:
        """The raw job record of ``job``."""
        entry = self._jobs.get(job)
        return None if entry is None else entry.record

    def claims(self, job: str, attempt: int) -> dict[str, dict[str, Any]]:
        """Claims on ``attempt`` of ``job``, by node."""
        entry = self._jobs.get(job)
        return {} if entry is None else dict(entry.claims.get(attempt, {}))

    def results(self, job: str, attempt: int) -> dict[str, dict[str, Any]]:
        """Result records of ``attempt`` of ``job``, by node."""
        entry = self._jobs.get(job)
        return {} if entry is None else dict(entry.results.get(attempt, {}))

    def all_results(self, job: str) -> dict[int, dict[str, dict[str, Any]]]:
        """Every result record of ``job``, by attempt and node."""
        entry = self._jobs.get(job)
        return {} if entry is None else entry.results

    def job(self, job: str) -> JobView:
        """The derived state of ``job``.

        Raises:
            KeyError: when the document has no such job.
        """
        view = self._views.get(job)
        if view is not None:
            return view
        entry = self._jobs.get(job)
        if entry is None or entry.record is None:
            raise KeyError(job)
        view = derive(job, entry.record, entry)
        self._views[job] = view
        return view

    def jobs(self) -> Iterator[JobView]:
        """Every job's derived state, in push order."""
        for jid in self.job_ids():
            yield self.job(jid)

    def open_jobs(self) -> Iterator[JobView]:
        """Jobs not yet done or failed, in push order."""
        order = self.job_ids()
        while self._open_from < len(order):
            if self.job(order[self._open_from]).state not in (DONE, FAILED):
                break
            self._open_from += 1
        for jid in order[self._open_from :]:
            view = self.job(jid)
            if view.state not in (DONE, FAILED):
                yield view


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _job_record(queue: str, seq: int, job: JobSpec) -> dict[str, Any]:
    return {"queue": queue, "name": job.name, "seq": seq, "spec": job.to_json()}


def derive(job: str, record: Mapping[str, Any], entry: _JobIndex) -> JobView:
    """Derive a job's state from its claims, results and takeovers.

    Walks the attempts in order. A "done" result from any attempt, even a late
    one from an attempt already taken over, ends the job as done. A failed
    attempt opens the next while retries remain. An attempt whose runner was
    interrupted or declared lost opens the next without using a retry, up to
    :data:`MAX_LOST_ATTEMPTS`.
    """
    queue = str(record.get("queue", ""))
    name = str(record.get("name", ""))
    spec = record.get("spec") or {}
    retries = spec.get("retries", 0) if isinstance(spec, dict) else 0
    retries = retries if isinstance(retries, int) else 0

    for attempt in sorted(entry.results):
        for node_id, result in sorted(entry.results[attempt].items()):
            if result.get("state") == DONE:
                return JobView(job, queue, name, DONE, attempt, node_id, (), result)

    failures = lost = 0
    attempt = 1
    while True:
        results = entry.results.get(attempt, {})
        claims = {
            node_id: claim
            for node_id, claim in entry.claims.get(attempt, {}).items()
            if not claim.get("withdrawn")
        }
        states = {node_id: r.get("state") for node_id, r in results.items()}
        failed = [n for n, s in states.items() if s == FAILED]
        interrupted = [n for n, s in states.items() if s == "interrupted"]
        was_lost = bool(interrupted or entry.takeovers.get(attempt))
        # An attempt can be both failed and lost (a late failure from a node
        # that was taken over); it counts as both, so that a record arriving
        # later only ever adds to the counts and a finished job stays finished.
        if failed:
            failures += 1
            lost += was_lost
            if failures > retries:
                node_id = min(failed)
                return JobView(
                    job, queue, name, FAILED, attempt, node_id, tuple(claims),
                    results[node_id], failures, lost,
                )  # fmt: skip
        elif was_lost:
            lost += 1
        if failed or was_lost:
            if lost >= MAX_LOST_ATTEMPTS:
                last = min(interrupted) if interrupted else None
                return JobView(
                    job, queue, name, FAILED, attempt, last, tuple(claims),
                    results.get(last) if last else None, failures, lost,
                )  # fmt: skip
            attempt += 1
            continue
        running = sorted(n for n, s in states.items() if s == RUNNING)
        if running:
            node_id = running[0]
            return JobView(
                job, queue, name, RUNNING, attempt, node_id, tuple(claims),
                results[node_id], failures, lost,
            )  # fmt: skip
        if claims:
            return JobView(
                job, queue, name, CLAIMED, attempt,
                winner(job, attempt, claims), tuple(sorted(claims)),
                None, failures, lost,
            )  # fmt: skip
        return JobView(
            job, queue, name, PENDING, attempt, None, (), None, failures, lost
        )
