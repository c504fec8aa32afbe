"""The decision core of a node: events in, actions out, no I/O.

The asyncio node (:mod:`amucrdt.node`) and the simulator in the tests drive
the same :class:`NodeCore`: they report what happened (a peer connected, a
frame arrived, a timer fired, a job finished) and carry out what the core
returns (persist these bytes, start that job, wake that peer's sender, close
that connection). Frames to a peer are pulled with :meth:`NodeCore.poll` when
the connection can take them, so a slow peer never makes the node buffer more
than one sync message and a couple of control frames for it.

The claim protocol (``docs/claims.md`` has the argument in full):

1. A node with a free slot claims a pending job's current attempt, unless it
   already sees a live claim on that attempt.
2. The claim is settled when every live peer has reported heads that contain
   the claim and that this node holds in full. Any claim a peer made on the
   same attempt was made before it received ours, so it is in those heads.
3. Once settled, the node derives the job's state from its replica: if no one
   has started the attempt and the winner rule picks this node, it records
   the start and runs the command; otherwise it lets the claim go.
"""

from __future__ import annotations

import logging
import platform
import time as _time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from amucrdt import SCHEMA_VERSION, __version__
from amucrdt._automerge import Document
from amucrdt.errors import AmucrdtError, AutomergeError
from amucrdt.formats import JobSpec, QueueSpec
from amucrdt.frames import Frame, Heartbeat, Reset, SyncFrame
from amucrdt.link import Link
from amucrdt.rule import preference
from amucrdt.state import CLAIMED, DONE, FAILED, PENDING, RUNNING, Cluster, JobView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    """How a node behaves; the defaults suit a LAN of a few dozen machines.

    Attributes:
        node_id: this node's id (32 hex characters).
        address: the URL peers should dial to reach this node, "" if unknown.
        slots: jobs this node runs at once.
        os_name: "posix" or "windows": which command of a job it runs.
        heartbeat_interval: seconds between heartbeats to each peer.
        peer_timeout: silence after which a peer counts as down and its
            connection is closed.
        lease: how long a down node keeps its running jobs before another
            node takes them over as a new attempt.
        startup_grace: how long a new node waits for the peers it knows of
            before it claims work without them.
        resync_after: how long a link may disagree on heads with no sync
            progress before it restarts the exchange in a new epoch.
        window_factor: how far down the queue a node looks when spreading
            picks: free slots x (live nodes) x this factor.
        rejoin_grace: how long a node that was heard from and then lost its
            connection still holds up claims and settles, so that a peer
            that stalled briefly (a long fsync, a huge push) reconnects and
            is counted instead of being worked around; None means three
            peer timeouts.
    """

    node_id: str
    address: str = ""
    slots: int = 1
    os_name: str = "posix"
    heartbeat_interval: float = 1.0
    peer_timeout: float = 5.0
    lease: float = 30.0
    startup_grace: float = 3.0
    resync_after: float = 3.0
    window_factor: int = 2
    rejoin_grace: float | None = None
    version: str = __version__

    @property
    def hold(self) -> float:
        """The rejoin grace in force."""
        if self.rejoin_grace is not None:
            return self.rejoin_grace
        return 3 * self.peer_timeout


# Actions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Persist:
    """Append ``data`` (an incremental save) to the node's store, durably."""

    data: bytes


@dataclass(frozen=True)
class Wake:
    """Frames may be due for ``peer_id``: call :meth:`NodeCore.poll`."""

    peer_id: str


@dataclass(frozen=True)
class StartJob:
    """Run ``command`` for ``attempt`` of ``job_id``; report with finished()."""

    job_id: str
    attempt: int
    spec: JobSpec
    command: str


@dataclass(frozen=True)
class KillJob:
    """Stop the running ``attempt`` of ``job_id`` (the node is stopping)."""

    job_id: str
    attempt: int


@dataclass(frozen=True)
class Close:
    """Close the connection to ``peer_id``, for ``reason``."""

    peer_id: str
    reason: str


@dataclass(frozen=True)
class Rebuilt:
    """The document was rebuilt after a fault; persist a full snapshot."""

    snapshot: bytes


Action = Persist | Wake | StartJob | KillJob | Close | Rebuilt


@dataclass
class PendingClaim:
    """A claim written by this node and not yet settled.

    Attributes:
        covers: change hashes that hold the claim; a peer has the claim once
            its reported heads contain all of them.
        claimed_at: when the claim was written (for claim latency).
        acked: live peers known to hold the claim, with heads held here.
    """

    job_id: str
    attempt: int
    covers: list[bytes]
    claimed_at: float
    acked: set[str] = field(default_factory=set)


@dataclass
class Stats:
    """Counters of the claim path, read by ``status`` and the benchmark."""

    claims: int = 0
    won: int = 0
    lost: int = 0
    withdrawn: int = 0
    takeovers: int = 0
    started: int = 0
    finished: int = 0
    resets: int = 0
    rebuilds: int = 0
    # Seconds from writing a claim to knowing whether it won, newest last;
    # bounded so a long-lived node does not grow it forever.
    settle_latency: list[float] = field(default_factory=list)

    def record_latency(self, seconds: float) -> None:
        self.settle_latency.append(seconds)
        if len(self.settle_latency) > 100_000:
            del self.settle_latency[: len(self.settle_latency) - 100_000]


class NodeCore:
    """The state machine of one node.

    Every public method is an event; each returns the actions the driver must
    carry out, in order. Persist actions come first, so nothing leaves the
    node (a frame, a job start, a reply to a client) before the change behind
    it is on disk.
    """

    def __init__(self, config: Config, doc: Document, now: float) -> None:
        self.config = config
        self.node_id = config.node_id
        self.cluster = Cluster(doc)
        self.links: dict[str, Link] = {}
        # Last time each node was heard from, kept across its disconnections;
        # a node never heard since this one started counts from the start.
        self.last_heard: dict[str, float] = {}
        self.pending: dict[tuple[str, int], PendingClaim] = {}
        self.running: dict[str, int] = {}
        self.started_at = now
        self.accepting = True
        self.failed_reason: str | None = None
        self.stats = Stats()
        self.newest_version = config.version
        self._saved_heads = doc.heads()
        self._epoch_seed = 0
        # The first event looks at every job for claims to adopt; later
        # events look only at the jobs their changes touched.
        self._adopt_all = True
        self._recover_own_work(now)
        self._write_host(now)

    @property
    def doc(self) -> Document:
        """The node's replica."""
        return self.cluster.doc

    # Start-up ----------------------------------------------------------------

    def _recover_own_work(self, now: float) -> None:
        """Handle work this node left behind when it last stopped.

        Attempts recorded as running here have lost their processes: record
        them as interrupted so the next attempt opens. Claims of this node
        that are still open are taken up again and settled afresh.
        """
        for view in list(self.cluster.jobs()):
            if view.state == RUNNING and view.node == self.node_id:
                record = dict(view.result or {})
                record.update(
                    state="interrupted",
                    ended=now,
                    error="node restarted while the job ran",
                )
                self.cluster.put_result(view.job_id, view.attempt, self.node_id, record)
                log.info(
                    "node %s: job %s attempt %d was running when the node "
                    "stopped; marked interrupted",
                    self.node_id,
                    view.job_id,
                    view.attempt,
                )

    def _write_host(self, now: float) -> None:
        current = self.cluster.hosts.get(self.node_id, {})
        record = {
            "addr": self.config.address,
            "version": self.config.version,
            "schema": SCHEMA_VERSION,
            "os": self.config.os_name,
            "platform": platform.platform(terse=True),
            "hostname": platform.node(),
            "slots": self.config.slots,
            "joined": current.get("joined", now),
        }
        if any(current.get(k) != v for k, v in record.items()):
            self.cluster.add_host(self.node_id, record)

    def startup(self, now: float) -> list[Action]:
        """The first event: commits start-up records and returns their actions."""
        return self._after(now)

    # Peer events -------------------------------------------------------------

    def connected(self, peer_id: str, info: dict[str, Any], now: float) -> list[Action]:
        """An authenticated connection to ``peer_id`` is open."""
        if peer_id in self.links:
            raise AmucrdtError(f"peer {peer_id} is already connected")
        link = Link(peer_id=peer_id, info=dict(info), connected_at=now)
        self.links[peer_id] = link
        self.last_heard[peer_id] = now
        self.note_version(str(info.get("version", "")))
        log.info("node %s: peer %s connected", self.node_id, peer_id)
        self._queue_heartbeat(link, now)
        return [Wake(peer_id)]

    def disconnected(self, peer_id: str, now: float) -> list[Action]:
        """The connection to ``peer_id`` closed."""
        link = self.links.pop(peer_id, None)
        if link is not None:
            log.info("node %s: peer %s disconnected", self.node_id, peer_id)
        for claim in self.pending.values():
            claim.acked.discard(peer_id)
        # A peer that left no longer holds up any settle.
        return self._after(now)

    def receive(self, peer_id: str, frame: Frame, now: float) -> list[Action]:
        """A frame arrived from ``peer_id``."""
        link = self.links.get(peer_id)
        if link is None:
            return []
        link.last_heard = now
        self.last_heard[peer_id] = now
        if isinstance(frame, Reset):
            if frame.epoch > link.epoch:
                link.reset(frame.epoch, announce=False)
                self.stats.resets += 1
            return [Wake(peer_id)]
        if isinstance(frame, Heartbeat):
            return self._on_heartbeat(link, frame, now)
        if frame.epoch < link.epoch:
            return []
        if frame.epoch > link.epoch:
            link.reset(frame.epoch, announce=False)
            self.stats.resets += 1
        try:
            patches = self.doc.receive_sync_message(link.sync, frame.data)
        except AutomergeError as exc:
            if self.doc.poisoned:
                return self._rebuild(now, str(exc))
            return [Close(peer_id, f"bad sync message: {exc}")]
        self.cluster.note_patches(patches)
        link.last_sync = now
        link.dirty = True
        their = link.sync.their_heads
        if their is not None:
            link.heads = tuple(their)
            self._track_exchange(link, now)
        return self._after(now)

    def _on_heartbeat(self, link: Link, beat: Heartbeat, now: float) -> list[Action]:
        link.running = beat.running
        link.heads = beat.heads
        if self._track_exchange(link, now):
            link.dirty = True
        return self._after(now)

    def _track_exchange(self, link: Link, now: float) -> bool:
        """Note whether the exchange with the peer is getting anywhere.

        Sync frames flowing are no sign of progress: once a message was lost,
        Automerge never resends the changes it carried, and both sides keep
        answering each other without converging. So the link waits for the
        peer to report heads that contain what this node held when the wait
        began, while this node holds all the peer reported; tick() starts a
        new epoch when that takes longer than ``resync_after``.

        Returns True while the replicas differ.
        """
        assert link.heads is not None
        theirs = list(link.heads)
        ours = self.doc.heads()
        if sorted(theirs) == ours:
            link.awaiting = None
            link.diverged_since = None
            return False
        if link.awaiting is not None and (
            self.doc.has_all(theirs) and self.doc.covers(theirs, list(link.awaiting))
        ):
            link.awaiting = None
        if link.awaiting is None:
            link.awaiting = tuple(ours)
            link.diverged_since = now
        return True

    # Timer -------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """The periodic timer: heartbeats, liveness, leases, stalled links."""
        actions: list[Action] = []
        for link in list(self.links.values()):
            if not link.live(now, self.config.peer_timeout):
                actions.append(
                    Close(
                        link.peer_id,
                        f"no frame for {now - link.last_heard:.1f}s",
                    )
                )
                continue
            stalled = (
                link.diverged_since is not None
                and now - link.diverged_since > self.config.resync_after
            )
            if stalled:
                self._epoch_seed += 1
                link.reset(link.epoch + 1, announce=True)
                self.stats.resets += 1
                log.info(
                    "node %s: sync with peer %s stalled; new epoch %d",
                    self.node_id,
                    link.peer_id,
                    link.epoch,
                )
            if now - link.last_heartbeat_sent >= self.config.heartbeat_interval:
                self._queue_heartbeat(link, now)
                actions.append(Wake(link.peer_id))
        self._expire_leases(now)
        # The heartbeats' wakes may carry a sync message with this event's
        # changes (a takeover, a claim, a start): persist them first.
        return self._after(now) + actions

    def _queue_heartbeat(self, link: Link, now: float) -> None:
        running = tuple(f"{attempt}:{job}" for job, attempt in self.running.items())
        link.queue_heartbeat(Heartbeat(tuple(self.doc.heads()), running, now))
        link.last_heartbeat_sent = now

    # Client requests ---------------------------------------------------------

    def push_queue(self, spec: QueueSpec, now: float) -> tuple[bool, list[Action]]:
        """Add a queue; returns whether it was new, and the actions.

        Raises:
            AmucrdtError: when a different queue of that name exists.
        """
        new = self.cluster.add_queue(spec, self.node_id, now)
        if new:
            log.info(
                "node %s: queue %s pushed with %d jobs",
                self.node_id,
                spec.name,
                len(spec.jobs),
            )
        return new, self._after(now)

    def push_hosts(
        self, urls: Iterable[str], now: float
    ) -> tuple[list[str], list[Action]]:
        """Add peer addresses; returns the new ones, and the actions."""
        new = self.cluster.add_addresses(urls, self.node_id, now)
        return new, self._after(now)

    # Jobs --------------------------------------------------------------------

    def finished(
        self, job_id: str, attempt: int, outcome: dict[str, Any], now: float
    ) -> list[Action]:
        """A job this node started has ended; ``outcome`` is the runner's record.

        ``outcome`` holds at least "ok" (bool) and may hold exit_code, signal,
        timed_out, started, ended, tail, error and log.
        """
        if self.running.get(job_id) == attempt:
            del self.running[job_id]
        self.stats.finished += 1
        view = self._view(job_id)
        late = view is not None and (
            view.attempt != attempt or view.state in (DONE, FAILED)
        )
        record = {k: v for k, v in outcome.items() if k != "ok"}
        interrupted = bool(outcome.get("interrupted"))
        record.pop("interrupted", None)
        state = DONE if outcome.get("ok") else FAILED
        if interrupted:
            state = "interrupted"
        record.update(state=state, node=self.node_id, late=late)
        self.cluster.put_result(job_id, attempt, self.node_id, record)
        log.info(
            "node %s: job %s attempt %d %s%s",
            self.node_id,
            job_id,
            attempt,
            state,
            " (late: attempt already taken over)" if late else "",
        )
        return self._after(now)

    def stop(self, now: float) -> list[Action]:
        """Stop taking work: withdraw open claims, stop running jobs.

        The jobs' ends are reported through :meth:`finished` with
        ``interrupted`` set, which opens their next attempt elsewhere.
        """
        self.accepting = False
        for claim in list(self.pending.values()):
            self._withdraw(claim, now, "node stopping")
        actions: list[Action] = [
            KillJob(job, attempt) for job, attempt in self.running.items()
        ]
        return self._after(now) + actions

    # The claim path ----------------------------------------------------------

    def _view(self, job_id: str) -> JobView | None:
        try:
            return self.cluster.job(job_id)
        except KeyError:
            return None

    def _live_peers(self, now: float) -> list[str]:
        return [
            peer_id
            for peer_id, link in self.links.items()
            if link.live(now, self.config.peer_timeout)
        ]

    def ready(self, now: float) -> bool:
        """True when this node may claim work.

        It waits until it has caught up with every connected peer, and, for
        up to ``startup_grace``, until every node in its host list is
        connected, so a node that just started does not claim jobs that its
        peers are already running.
        """
        if not self.accepting or self.failed_reason is not None:
            return False
        if not self.members_back(now):
            return False
        for link in self.links.values():
            if not link.caught_up:
                if link.heads is None or not self.doc.has_all(list(link.heads)):
                    return False
                link.caught_up = True
        if now - self.started_at >= self.config.startup_grace:
            return True
        others = set(self.cluster.hosts) - {self.node_id}
        return others <= set(self.links)

    def members_back(self, now: float) -> bool:
        """False while a node heard from lately has no connection.

        A peer whose connection dropped within ``rejoin_grace`` may be alive
        and claiming; settling without it is what turns a stall into a
        double run. Past the grace it is treated as gone (at least once).
        """
        for node_id, heard in self.last_heard.items():
            if node_id not in self.links and now - heard < self.config.hold:
                return False
        return True

    def _check_acks(self, now: float) -> None:
        if not self.pending:
            return
        for peer_id, link in self.links.items():
            if link.heads is None:
                continue
            heads = list(link.heads)
            if not self.doc.has_all(heads):
                continue
            for claim in self.pending.values():
                if peer_id in claim.acked:
                    continue
                if self.doc.covers(heads, claim.covers):
                    claim.acked.add(peer_id)

    def _settle(self, now: float) -> list[Action]:
        if not self.pending or not self.members_back(now):
            return []
        live = set(self._live_peers(now))
        actions: list[Action] = []
        for key, claim in list(self.pending.items()):
            if not live <= claim.acked:
                continue
            del self.pending[key]
            self.stats.record_latency(now - claim.claimed_at)
            view = self._view(claim.job_id)
            if (
                view is None
                or view.state != CLAIMED
                or view.attempt != claim.attempt
                or view.node != self.node_id
                or not self.accepting
            ):
                self.stats.lost += 1
                log.debug(
                    "node %s: claim on job %s attempt %d lost to %s",
                    self.node_id,
                    claim.job_id,
                    claim.attempt,
                    view.node if view else None,
                )
                continue
            actions += self._start(view, now)
        return actions

    def _start(self, view: JobView, now: float) -> list[Action]:
        spec = self.cluster.spec(view.job_id)
        if spec is None:
            return []
        command = spec.cmd.get(self.config.os_name)
        if command is None:
            return []
        self.cluster.put_result(
            view.job_id,
            view.attempt,
            self.node_id,
            {"state": RUNNING, "node": self.node_id, "started": now},
        )
        self.running[view.job_id] = view.attempt
        self.stats.won += 1
        self.stats.started += 1
        log.info(
            "node %s: won job %s attempt %d; starting",
            self.node_id,
            view.job_id,
            view.attempt,
        )
        return [StartJob(view.job_id, view.attempt, spec, command)]

    def _withdraw(self, claim: PendingClaim, now: float, reason: str) -> None:
        """Let an unsettled claim of this node go, so others need not wait."""
        self.pending.pop((claim.job_id, claim.attempt), None)
        self.cluster.put_claim(
            claim.job_id, claim.attempt, self.node_id, now, withdrawn=reason
        )
        self.stats.withdrawn += 1

    def _claim(self, now: float) -> bool:
        """Claim pending jobs for the free slots; True when any was claimed."""
        free = self.config.slots - len(self.running) - len(self.pending)
        if free <= 0 or not self.ready(now):
            return False
        live = len(self._live_peers(now)) + 1
        window_size = max(free * live * self.config.window_factor, free)
        window: list[JobView] = []
        for view in self._open_jobs():
            if view.state != PENDING:
                continue
            if (view.job_id, view.attempt) in self.pending:
                continue
            if view.job_id in self.running:
                # An attempt of it still runs here (the next one opened after a
                # takeover this node had not heard of): running it again here
                # would be a second copy on the same machine.
                continue
            spec = self.cluster.spec(view.job_id)
            if spec is None or self.config.os_name not in spec.cmd:
                continue
            window.append(view)
            if len(window) >= window_size:
                break
        if not window:
            return False
        window.sort(key=lambda v: preference(self.node_id, v.job_id))
        picks = window[:free]
        for view in picks:
            self.cluster.put_claim(view.job_id, view.attempt, self.node_id, now)
        change = self.doc.commit(time=int(now * 1000))
        covers = [change] if change is not None else list(self.doc.heads())
        for view in picks:
            self.pending[(view.job_id, view.attempt)] = PendingClaim(
                view.job_id, view.attempt, covers, now
            )
            self.stats.claims += 1
        return True

    def _adopt(self, now: float, jobs: Iterable[str] | None = None) -> None:
        """Take up claims the document says this node wins but it is not settling.

        This happens after a restart, and when the claim that beat ours was
        withdrawn. Settling them again with the current heads is safe: the
        heads contain the claim. A claim this node has no free slot for (or
        whose job it runs already) is withdrawn instead: kept, it would hold
        the job until a slot frees here, however idle the other nodes are.
        """
        if not self.accepting:
            return
        heads: list[bytes] | None = None
        free = self.config.slots - len(self.running) - len(self.pending)
        views = (
            list(self._open_jobs())
            if jobs is None
            else [v for v in map(self._view, jobs) if v is not None]
        )
        for view in views:
            if view.state != CLAIMED or view.node != self.node_id:
                continue
            key = (view.job_id, view.attempt)
            if key in self.pending:
                continue
            claim = PendingClaim(view.job_id, view.attempt, [], now)
            if free <= 0 or view.job_id in self.running:
                self._withdraw(claim, now, "no free slot")
                continue
            if heads is None:
                heads = list(self.doc.heads())
            claim.covers = heads
            self.pending[key] = claim
            free -= 1

    def _open_jobs(self) -> Iterator[JobView]:
        return self.cluster.open_jobs()

    def _expire_leases(self, now: float) -> None:
        """Take over attempts whose runner, or winning claimant, is gone.

        Only the winner of a claimed attempt can start it; the losers never
        will, so a winner that died before starting holds the job up however
        live the losers are.
        """
        live = set(self._live_peers(now)) | {self.node_id}
        for view in self._open_jobs():
            if view.state not in (RUNNING, CLAIMED):
                continue
            suspects = {view.node} if view.node else set()
            if not suspects or suspects & live:
                continue
            silent = min(
                now - self.last_heard.get(node, self.started_at) for node in suspects
            )
            if silent <= self.config.lease:
                continue
            runner = view.node or ""
            self.cluster.put_takeover(
                view.job_id,
                view.attempt,
                self.node_id,
                runner,
                now,
                f"lease expired: no word from {runner} for {silent:.0f}s",
            )
            self.stats.takeovers += 1
            log.warning(
                "node %s: took over job %s attempt %d from %s (silent %.0fs)",
                self.node_id,
                view.job_id,
                view.attempt,
                runner,
                silent,
            )

    # Bookkeeping ---------------------------------------------------------------

    def _after(self, now: float) -> list[Action]:
        """Finish an event: refresh, settle, claim, persist, wake peers."""
        if self.failed_reason is not None:
            return []
        actions: list[Action] = []
        try:
            changed = self.cluster.refresh()
            if self.ready(now):
                self._adopt(now, None if self._adopt_all else changed)
                self._adopt_all = False
            else:
                # Until it has caught up, a node must not take up a claim from
                # what it held before (a restarted node's own old claim): its
                # peers may have started or taken over that attempt since.
                # Once ready, it looks at every job again.
                self._adopt_all = True
            self._check_acks(now)
            starts = self._settle(now)
            if self.accepting and self._claim(now):
                # Settle against a view that holds the claims just written:
                # with no live peer they settle at once, and a stale view
                # would count them lost while they stay in the document.
                self.cluster.refresh()
                self._check_acks(now)
                starts += self._settle(now)
            self.doc.commit(time=int(now * 1000))
            self.cluster.refresh()
            heads = self.doc.heads()
            if heads != self._saved_heads:
                actions.append(Persist(self.doc.save_after(self._saved_heads)))
                self._saved_heads = heads
                for link in self.links.values():
                    link.dirty = True
        except AutomergeError as exc:
            if self.doc.poisoned:
                return self._rebuild(now, str(exc))
            raise
        actions += starts
        actions += [Wake(peer_id) for peer_id, link in self.links.items() if link.dirty]
        return actions

    def recover(self, now: float) -> list[Action]:
        """Rebuild the document if a call into Automerge left it poisoned."""
        if self.doc.poisoned:
            return self._rebuild(now, "an automerge call failed inside the crate")
        return []

    def _rebuild(self, now: float, reason: str) -> list[Action]:
        """Replace a document that failed inside Automerge with a fresh load.

        Every link starts a new epoch, so no sync state that saw the fault is
        used again. If the document cannot even be saved, the node stops
        taking work and says why; the driver then reloads from disk or exits.
        """
        self.stats.rebuilds += 1
        try:
            snapshot = self.doc.save()
            fresh = Document.load(snapshot, actor=_fresh_actor())
        except AutomergeError as exc:
            self.failed_reason = (
                f"document failed ({reason}) and could not be rebuilt: {exc}"
            )
            log.error("node %s: %s", self.node_id, self.failed_reason)
            return []
        log.error(
            "node %s: automerge fault (%s); document rebuilt from a full save, "
            "all links restart their sync",
            self.node_id,
            reason,
        )
        return self.replace_document(fresh, now, snapshot)

    def replace_document(
        self, doc: Document, now: float, snapshot: bytes | None = None
    ) -> list[Action]:
        """Swap in ``doc`` (rebuilt in memory or reloaded from disk)."""
        self.cluster = Cluster(doc)
        self._adopt_all = True
        self.failed_reason = None
        self._saved_heads = doc.heads()
        for link in self.links.values():
            link.reset(link.epoch + 1, announce=True)
        actions: list[Action] = [
            Rebuilt(snapshot if snapshot is not None else doc.save())
        ]
        return actions + self._after(now)

    def note_version(self, version: str) -> None:
        """Remember ``version`` if it is the newest amucrdt seen on a peer.

        The driver also calls this for peers it refuses for their schema: a
        peer on a newer schema is the clearest sign this node needs upgrading.
        Nothing is ever installed; the version is only reported.
        """
        if _version_key(version) > _version_key(self.newest_version):
            self.newest_version = version
            log.warning(
                "node %s: a peer runs amucrdt %s, newer than this node's %s; "
                "upgrade this node when convenient",
                self.node_id,
                version,
                self.config.version,
            )

    # Outgoing frames -----------------------------------------------------------

    def poll(self, peer_id: str) -> list[Frame]:
        """The frames due for ``peer_id`` now (control frames first)."""
        link = self.links.get(peer_id)
        if link is None:
            return []
        frames = link.take_control()
        if link.dirty:
            link.dirty = False
            try:
                message = self.doc.generate_sync_message(link.sync)
            except AutomergeError as exc:
                log.error(
                    "node %s: cannot generate sync message for %s: %s",
                    self.node_id,
                    peer_id,
                    exc,
                )
                message = None
            if message is not None:
                frames.append(SyncFrame(link.epoch, message))
        return frames

    # Inspection ----------------------------------------------------------------

    def in_sync(self, peer_id: str) -> bool:
        """True when ``peer_id`` last reported exactly our heads."""
        link = self.links.get(peer_id)
        if link is None or link.heads is None:
            return False
        return tuple(sorted(link.heads)) == tuple(self.doc.heads())

    def peer_status(self, now: float) -> list[dict[str, Any]]:
        """One entry per known node other than this one."""
        peers = set(self.cluster.hosts) | set(self.links)
        peers.discard(self.node_id)
        out = []
        for peer_id in sorted(peers):
            host = self.cluster.hosts.get(peer_id, {})
            link = self.links.get(peer_id)
            heard = self.last_heard.get(peer_id)
            out.append(
                {
                    "node": peer_id,
                    "address": host.get("addr", ""),
                    "hostname": host.get("hostname", ""),
                    "version": host.get("version", ""),
                    "os": host.get("os", ""),
                    "connected": link is not None,
                    "up": link is not None and link.live(now, self.config.peer_timeout),
                    "last_heard": None if heard is None else round(now - heard, 3),
                    "in_sync": self.in_sync(peer_id),
                    "running": list(link.running) if link else [],
                }
            )
        return out


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _fresh_actor() -> bytes:
    import os

    return os.urandom(16)


def wall_clock() -> float:
    """The clock the real node uses; the simulator passes its own times."""
    return _time.time()
