"""A cluster of node cores in one process, on a virtual clock.

Every node is a real :class:`~amucrdt.core.NodeCore` over a real Automerge
document; only the world around them is simulated, and all of it is drawn
from one seeded generator, so a seed replays exactly:

- the network carries frames per directed link after a random delay (frames
  may overtake each other and may arrive twice); under a fault profile it
  also loses frames and splits the cluster into partitions that later heal;
- a node's disk is the list of byte strings its core asked to persist; a
  crash drops the core, its frames in flight and its running jobs, and a
  restart loads the disk into a new core with a new actor;
- a job is a virtual process that ends after a random duration, failing at
  a seeded rate; every start is recorded in a ledger of runs.

:meth:`Sim.run` plays the workload, stops the faults at a fixed virtual
time, then runs until the cluster is quiet (every job ended, every replica
at the same heads) or a virtual deadline passes. The ``check_*`` methods
return the broken invariants as readable lines. A benchmark of the claim path
reads the result::

    sim = Sim(1, FAULT_FREE, Workload(nodes=6, jobs=60, everywhere=True))
    result = sim.run()
    result.settle_latencies(), result.total("lost"), result.duplicate_starts()

Virtual seconds cost no wall time; what a run costs is its number of events,
mostly Automerge sync messages, which grows with the square of the nodes.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amucrdt import SCHEMA_VERSION, __version__
from amucrdt._automerge import Document
from amucrdt.core import (
    Action,
    Close,
    Config,
    KillJob,
    NodeCore,
    Persist,
    Rebuilt,
    StartJob,
    Stats,
    Wake,
)
from amucrdt.formats import JobSpec, QueueSpec
from amucrdt.frames import Frame, SyncFrame
from amucrdt.state import DONE, FAILED, check_schema, genesis, job_id

#: Timings of every simulated node, in virtual seconds.
HEARTBEAT = 0.2
PEER_TIMEOUT = 1.0
LEASE = 3.0
STARTUP_GRACE = 0.5
RESYNC_AFTER = 1.0
#: How often the driver fires each node's timer.
TICK = 0.1
#: How often the simulator checks whether the cluster has gone quiet.
QUIET_CHECK = 0.25


@dataclass(frozen=True)
class Profile:
    """What goes wrong in a run, and how often.

    Attributes:
        name: the profile's name, as used in test ids and replay hints.
        delay: (min, max) one-way delay of a frame, in seconds.
        reorder: frames of one link may overtake each other; when False each
            link delivers in order, as one websocket does.
        duplicate: chance that a frame is delivered twice.
        drop: chance that a frame is lost, while faults last.
        crash_every: mean seconds between crashes while faults last; 0 for none.
        downtime: (min, max) seconds a crashed node stays down.
        clean_stop: share of crashes that are clean stops (the core's stop(),
            then the process exits a moment later).
        silent_crash: share of crashes that peers only notice by silence, as
            when a machine loses power; the others close their sockets at once.
        stay_down: share of crashes after which the node never comes back
            (one node always stays in service).
        partition_every: mean seconds between partitions; 0 for none.
        partition_length: (min, max) seconds a partition lasts.
        fail_rate: chance that a job's run fails.
        duration: (min, max) seconds a job runs.
    """

    name: str
    delay: tuple[float, float] = (0.002, 0.08)
    reorder: bool = True
    duplicate: float = 0.03
    drop: float = 0.0
    crash_every: float = 0.0
    downtime: tuple[float, float] = (0.2, 5.0)
    clean_stop: float = 0.25
    silent_crash: float = 0.3
    stay_down: float = 0.0
    partition_every: float = 0.0
    partition_length: tuple[float, float] = (0.5, 6.0)
    fail_rate: float = 0.15
    duration: tuple[float, float] = (0.05, 1.2)


#: Delays, reordering and duplicates only: nothing is lost, nobody dies.
FAULT_FREE = Profile("fault_free")
#: Nodes crash, stop and restart; the network itself loses nothing.
CRASH = Profile("crash", crash_every=1.5, stay_down=0.1)
#: Frames are lost and the cluster splits and heals; no node crashes.
PARTITION = Profile("partition", drop=0.05, partition_every=2.5)
#: All of the above at once.
CHAOS = Profile("chaos", drop=0.05, crash_every=2.0, stay_down=0.1, partition_every=3.0)


@dataclass(frozen=True)
class Workload:
    """The cluster and the work it is given.

    Attributes:
        nodes: how many nodes.
        jobs: how many jobs in all, spread over ``queues``.
        queues: how many queues.
        everywhere: push each queue to every node at the same moment (the
            worst case for colliding claims) instead of to one node.
        slots: jobs each node runs at once.
        max_retries: each job gets between 0 and this many retries.
        push_window: queues are pushed at random moments in [0, this).
        fault_time: when the faults stop.
        deadline: virtual seconds after ``fault_time`` for the cluster to go
            quiet; a cluster still busy then has failed to converge.
        max_events: a run that needs more events than this is stopped and
            fails: frames that breed frames would otherwise run for hours.
    """

    nodes: int = 4
    jobs: int = 20
    queues: int = 2
    everywhere: bool = False
    slots: int = 1
    max_retries: int = 2
    push_window: float = 3.0
    fault_time: float = 8.0
    deadline: float = 90.0
    max_events: int = 100_000


@dataclass
class Run:
    """One start of one attempt of a job, as the ledger records it.

    ``end`` is None while the run goes on; ``outcome`` is then "running", and
    afterwards "ok", "failed", "killed" (stopped by the core) or "crashed"
    (its node crashed).
    """

    job_id: str
    attempt: int
    node_id: str
    incarnation: int
    start: float
    end: float | None = None
    outcome: str = "running"

    def __str__(self) -> str:
        end = "…" if self.end is None else f"{self.end:.3f}"
        return (
            f"{self.job_id} attempt {self.attempt} on {self.node_id[:6]}"
            f"#{self.incarnation} [{self.start:.3f}, {end}] {self.outcome}"
        )


@dataclass
class SimNode:
    """One simulated machine: its disk survives crashes, its core does not."""

    node_id: str
    config: Config
    disk: list[bytes]
    core: NodeCore | None = None
    # Raised by every crash, so events of an older process are ignored.
    incarnation: int = 0
    runs: dict[tuple[str, int], Run] = field(default_factory=dict)
    # Stats of the cores this node ran before its last restart.
    past_stats: list[Stats] = field(default_factory=list)
    # Set when the node went down for good; it is left out of every check.
    retired: bool = False

    @property
    def alive(self) -> bool:
        return self.core is not None


@dataclass
class SimResult:
    """What a run did: the ledger, the end state, and how it ended."""

    seed: int
    profile: Profile
    workload: Workload
    ledger: list[Run]
    converged: bool
    end: float
    events: int
    stats: dict[str, list[Stats]]
    trace: list[str]

    def total(self, counter: str) -> int:
        """A claim-path counter of :class:`Stats`, summed over every core run."""
        return sum(
            int(getattr(stats, counter))
            for per_node in self.stats.values()
            for stats in per_node
        )

    def settle_latencies(self) -> list[float]:
        """Seconds from writing each claim to knowing whether it won."""
        return [
            latency
            for per_node in self.stats.values()
            for stats in per_node
            for latency in stats.settle_latency
        ]

    def duplicate_starts(self) -> int:
        """Starts beyond the first of each attempt of each job."""
        seen: set[tuple[str, int]] = set()
        extra = 0
        for run in self.ledger:
            key = (run.job_id, run.attempt)
            extra += key in seen
            seen.add(key)
        return extra


class Sim:
    """A seeded cluster simulation; see the module docstring.

    Args:
        seed: seeds every random choice of the run.
        profile: the faults.
        workload: the cluster and its jobs.
    """

    def __init__(self, seed: int, profile: Profile, workload: Workload) -> None:
        self.seed = seed
        self.profile = profile
        self.workload = workload
        self.rng = random.Random(seed)
        self.now = 0.0
        self.events = 0
        self.faults_on = True
        self.converged = False
        self.ledger: list[Run] = []
        self.queues: list[QueueSpec] = []
        # The nodes each queue was handed to.
        self.pushed_to: dict[str, list[str]] = {}
        self.trace: deque[str] = deque(maxlen=3000)
        # Frames or starts that left a node before the changes behind them
        # were persisted.
        self.order_problems: list[str] = []
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._unpushed = 0
        # Each open connection has an id; both of its ends map to it. A frame
        # carries the id of the connection it was sent on and is dropped if
        # that connection has closed by the time it arrives.
        self._conn: dict[tuple[str, str], int] = {}
        self._next_conn = 1
        self._cut: set[tuple[str, str]] = set()
        self._redial: set[tuple[str, str]] = set()
        self._fifo: dict[tuple[str, str], float] = {}
        self._partitioned = False
        self.nodes: dict[str, SimNode] = {}
        self._genesis = genesis().save()
        for index in range(workload.nodes):
            node_id = f"{self.rng.getrandbits(128):032x}"
            config = Config(
                node_id=node_id,
                address=f"ws://node{index}.sim:7077",
                slots=workload.slots,
                heartbeat_interval=HEARTBEAT,
                peer_timeout=PEER_TIMEOUT,
                lease=LEASE,
                startup_grace=STARTUP_GRACE,
                resync_after=RESYNC_AFTER,
            )
            self.nodes[node_id] = SimNode(node_id, config, [self._genesis])
        self.order = list(self.nodes)

    # Scheduling ------------------------------------------------------------

    def at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` at virtual time ``when`` (never in the past)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, callback))

    def note(self, text: str) -> None:
        """Add a line to the trace printed when a check fails."""
        self.trace.append(f"{self.now:9.3f} {text}")

    def name(self, node_id: str) -> str:
        """A short name of a node for the trace: n<index>."""
        return f"n{self.order.index(node_id)}"

    # The run ---------------------------------------------------------------

    def run(self) -> SimResult:
        """Play the whole run and return what happened."""
        self.start()
        self.run_until(self.workload.fault_time + self.workload.deadline)
        return self.result()

    def start(self) -> None:
        """Boot every node, connect them all, and plan the work and faults."""
        for node_id in self.order:
            self._boot(node_id)
        for a in self.order:
            for b in self.order:
                if a < b:
                    self._connect(a, b)
        self._plan_workload()
        self._plan_faults()
        self.at(self.workload.fault_time, self._end_faults)
        self.at(self.workload.fault_time, self._check_quiet)

    def run_until(self, deadline: float) -> None:
        """Play events up to virtual time ``deadline``, or until quiet.

        Also stops after ``max_events`` events in all.
        """
        while self._heap and not self.converged:
            when = self._heap[0][0]
            if when > deadline or self.events >= self.workload.max_events:
                return
            _, _, callback = heapq.heappop(self._heap)
            self.now = when
            self.events += 1
            callback()

    def result(self) -> SimResult:
        """The outcome so far."""
        stats = {
            node.node_id: node.past_stats
            + ([node.core.stats] if node.core is not None else [])
            for node in self.nodes.values()
        }
        return SimResult(
            seed=self.seed,
            profile=self.profile,
            workload=self.workload,
            ledger=list(self.ledger),
            converged=self.converged,
            end=self.now,
            events=self.events,
            stats=stats,
            trace=list(self.trace),
        )

    def _check_quiet(self) -> None:
        if self._quiet():
            self.converged = True
            self.note("quiet: every job ended and every replica agrees")
            return
        self.at(self.now + QUIET_CHECK, self._check_quiet)

    def _quiet(self) -> bool:
        if self._unpushed or self.faults_on:
            return False
        serving = self.serving()
        cores = [self.nodes[n].core for n in serving]
        if any(core is None for core in cores):
            return False
        if any(node.runs for node in self.nodes.values()):
            return False
        n = len(serving)
        if len(self._conn) != n * (n - 1):
            return False
        live = [core for core in cores if core is not None]
        heads = live[0].doc.heads()
        if any(core.doc.heads() != heads for core in live):
            return False
        return all(self._all_ended(core) for core in live)

    def serving(self) -> list[str]:
        """The nodes not retired for good, in creation order."""
        return [n for n in self.order if not self.nodes[n].retired]

    def _all_ended(self, core: NodeCore) -> bool:
        for job in self.job_ids(expected_only=True):
            try:
                view = core.cluster.job(job)
            except KeyError:
                return False
            if view.state not in (DONE, FAILED):
                return False
        return True

    def job_ids(self, expected_only: bool = False) -> list[str]:
        """Every job pushed (or to be pushed) in this run.

        With ``expected_only``, leave out the queues that may rightly be gone:
        every node they were pushed to retired, and no node in service holds
        them.
        """
        queues = self.queues
        if expected_only:
            queues = [q for q in queues if not self._rightly_lost(q.name)]
        return [job_id(q.name, j.name) for q in queues for j in q.jobs]

    def _rightly_lost(self, queue: str) -> bool:
        targets = self.pushed_to.get(queue, [])
        if not targets or not all(self.nodes[n].retired for n in targets):
            return False
        return not any(
            (core := self.nodes[n].core) is not None and queue in core.cluster.queues
            for n in self.serving()
        )

    # Nodes -----------------------------------------------------------------

    def _boot(self, node_id: str) -> None:
        node = self.nodes[node_id]
        doc = self._load_disk(node)
        check_schema(doc, f"disk of {self.name(node_id)}")
        doc.set_actor(self.rng.randbytes(16))
        node.core = NodeCore(node.config, doc, self.now)
        self.note(f"{self.name(node_id)} starts (incarnation {node.incarnation})")
        self._apply(node, node.core.startup(self.now))
        incarnation = node.incarnation
        self.at(
            self.now + self.rng.uniform(0, TICK),
            lambda: self._tick(node_id, incarnation),
        )

    def _load_disk(self, node: SimNode) -> Document:
        """The document a node finds on its disk: snapshot, then the log."""
        if len(node.disk) == 1 and node.disk[0] == self._genesis:
            return genesis()
        doc = Document.load(node.disk[0])
        for chunk in node.disk[1:]:
            doc.load_incremental(chunk)
        return doc

    def _tick(self, node_id: str, incarnation: int) -> None:
        node = self.nodes[node_id]
        if node.core is None or node.incarnation != incarnation:
            return
        self._apply(node, node.core.tick(self.now))
        for peer in self.order:
            if (node_id, peer) in self._conn:
                self._flush(node, peer)
        self.at(self.now + TICK, lambda: self._tick(node_id, incarnation))

    def crash(self, node_id: str, silent: bool = False) -> None:
        """Kill ``node_id`` at once: its core, frames in flight and jobs end.

        With ``silent`` its peers are not told; they notice by its silence.
        """
        node = self.nodes[node_id]
        if node.core is None:
            return
        node.past_stats.append(node.core.stats)
        node.core = None
        node.incarnation += 1
        self.note(f"{self.name(node_id)} crashes{' silently' if silent else ''}")
        for run in node.runs.values():
            run.end = self.now
            run.outcome = "crashed"
        node.runs.clear()
        for peer in self.order:
            if self._conn.pop((node_id, peer), None) is None:
                continue
            if not silent:
                self._end(peer, node_id)

    def stop(self, node_id: str, exit_after: float = 0.3) -> None:
        """Stop ``node_id`` cleanly (the core's stop()), then exit it."""
        node = self.nodes[node_id]
        if node.core is None:
            return
        self.note(f"{self.name(node_id)} stops")
        self._apply(node, node.core.stop(self.now))
        incarnation = node.incarnation
        self.at(self.now + exit_after, lambda: self._exit(node_id, incarnation))

    def _exit(self, node_id: str, incarnation: int) -> None:
        if self.nodes[node_id].incarnation == incarnation:
            self.crash(node_id)

    def restart(self, node_id: str) -> None:
        """Start ``node_id`` again from its disk and dial every live peer."""
        node = self.nodes[node_id]
        if node.core is not None:
            return
        self._boot(node_id)
        for peer in self.order:
            if peer != node_id and self.nodes[peer].alive:
                self._redial_later(node_id, peer, self.rng.uniform(0.005, 0.05))

    # Actions ---------------------------------------------------------------

    def _apply(self, node: SimNode, actions: list[Action]) -> None:
        core = node.core
        # Until the last Persist of the list is carried out, the replica holds
        # changes that are not on disk: nothing may leave the node yet.
        last_persist = max(
            (i for i, a in enumerate(actions) if isinstance(a, Persist | Rebuilt)),
            default=-1,
        )
        for index, action in enumerate(actions):
            if node.core is not core or core is None:
                return
            early = index < last_persist
            if isinstance(action, Persist):
                node.disk.append(action.data)
            elif isinstance(action, Rebuilt):
                node.disk = [action.snapshot]
            elif isinstance(action, Wake):
                self._flush(node, action.peer_id, unpersisted=early)
            elif isinstance(action, StartJob):
                if early:
                    self.order_problems.append(
                        f"{self.now:.3f} {self.name(node.node_id)} starts "
                        f"{action.job_id}#{action.attempt} before persisting"
                    )
                self._start_job(node, action)
            elif isinstance(action, KillJob):
                self._kill_job(node, action)
            elif isinstance(action, Close):
                self.note(
                    f"{self.name(node.node_id)} closes link to "
                    f"{self.name(action.peer_id)}: {action.reason}"
                )
                self.disconnect(node.node_id, action.peer_id)
                self._redial_later(node.node_id, action.peer_id)

    # Jobs ------------------------------------------------------------------

    def _start_job(self, node: SimNode, action: StartJob) -> None:
        key = (action.job_id, action.attempt)
        run = Run(
            action.job_id, action.attempt, node.node_id, node.incarnation, self.now
        )
        self.ledger.append(run)
        node.runs[key] = run
        self.note(f"{self.name(node.node_id)} starts {action.job_id}#{action.attempt}")
        ok = self.rng.random() >= self.profile.fail_rate
        duration = self.rng.uniform(*self.profile.duration)
        node_id, incarnation = node.node_id, node.incarnation
        self.at(
            self.now + duration,
            lambda: self._job_ended(node_id, incarnation, key, ok),
        )

    def _job_ended(
        self, node_id: str, incarnation: int, key: tuple[str, int], ok: bool
    ) -> None:
        node = self.nodes[node_id]
        if node.core is None or node.incarnation != incarnation:
            return
        run = node.runs.pop(key, None)
        if run is None:
            return
        run.end = self.now
        run.outcome = "ok" if ok else "failed"
        self.note(f"{self.name(node_id)} ends {key[0]}#{key[1]}: {run.outcome}")
        outcome: dict[str, Any] = {
            "ok": ok,
            "exit_code": 0 if ok else 1,
            "started": run.start,
            "ended": self.now,
            "tail": "",
        }
        self._apply(node, node.core.finished(key[0], key[1], outcome, self.now))

    def _kill_job(self, node: SimNode, action: KillJob) -> None:
        run = node.runs.pop((action.job_id, action.attempt), None)
        if run is None or node.core is None:
            return
        run.end = self.now
        run.outcome = "killed"
        self.note(f"{self.name(node.node_id)} kills {action.job_id}#{action.attempt}")
        outcome: dict[str, Any] = {
            "ok": False,
            "interrupted": True,
            "started": run.start,
            "ended": self.now,
            "tail": "",
        }
        self._apply(
            node,
            node.core.finished(action.job_id, action.attempt, outcome, self.now),
        )

    # Network ---------------------------------------------------------------

    def _info(self, node_id: str) -> dict[str, Any]:
        return {
            "version": __version__,
            "schema": SCHEMA_VERSION,
            "address": self.nodes[node_id].config.address,
        }

    def _pair(self, a: str, b: str) -> tuple[str, str]:
        return (a, b) if a < b else (b, a)

    def _connect(self, a: str, b: str) -> None:
        pair = self._pair(a, b)
        self._redial.discard(pair)
        node_a, node_b = self.nodes[a], self.nodes[b]
        if node_a.core is None or node_b.core is None:
            return
        if (a, b) in self._conn and (b, a) in self._conn:
            return
        if pair in self._cut:
            self._redial_later(a, b)
            return
        # An end still holding the old connection learns now that it closed,
        # as a node does when a peer it thought connected dials it again.
        for x, y in ((a, b), (b, a)):
            if (x, y) in self._conn:
                self._end(x, y)
        conn = self._next_conn
        self._next_conn += 1
        self._conn[(a, b)] = self._conn[(b, a)] = conn
        self.note(f"{self.name(a)} and {self.name(b)} connect")
        self._apply(node_a, node_a.core.connected(b, self._info(b), self.now))
        if self._conn.get((b, a)) == conn and node_b.core is not None:
            self._apply(node_b, node_b.core.connected(a, self._info(a), self.now))

    def disconnect(self, a: str, b: str) -> None:
        """Close the connection between ``a`` and ``b``; both ends learn it."""
        self._end(a, b)
        self._end(b, a)

    def _end(self, x: str, y: str) -> None:
        """End ``x`` learns that its connection to ``y`` closed."""
        if self._conn.pop((x, y), None) is None:
            return
        node = self.nodes[x]
        if node.core is not None:
            self._apply(node, node.core.disconnected(y, self.now))

    def _redial_later(self, a: str, b: str, delay: float | None = None) -> None:
        pair = self._pair(a, b)
        if pair in self._redial:
            return
        self._redial.add(pair)
        if delay is None:
            delay = self.rng.uniform(0.2, 0.8)
        self.at(self.now + delay, lambda: self._connect(*pair))

    def _flush(self, node: SimNode, peer: str, unpersisted: bool = False) -> None:
        if node.core is None:
            return
        frames = node.core.poll(peer)
        conn = self._conn.get((node.node_id, peer))
        if conn is None:
            return
        if unpersisted and any(isinstance(f, SyncFrame) for f in frames):
            self.order_problems.append(
                f"{self.now:.3f} {self.name(node.node_id)} sends a sync message "
                f"to {self.name(peer)} before persisting its changes"
            )
        for frame in frames:
            self._send(node.node_id, peer, conn, frame)

    def _send(self, src: str, dst: str, conn: int, frame: Frame) -> None:
        if self._pair(src, dst) in self._cut:
            return
        if self.faults_on and self.rng.random() < self.profile.drop:
            return
        copies = 2 if self.rng.random() < self.profile.duplicate else 1
        for _ in range(copies):
            when = self.now + self.rng.uniform(*self.profile.delay)
            if not self.profile.reorder:
                when = max(when, self._fifo.get((src, dst), 0.0))
                self._fifo[(src, dst)] = when
            self.at(when, lambda: self._deliver(src, dst, conn, frame))

    def _deliver(self, src: str, dst: str, conn: int, frame: Frame) -> None:
        node = self.nodes[dst]
        if node.core is None or self._conn.get((dst, src)) != conn:
            return
        if self._pair(src, dst) in self._cut:
            return
        self._apply(node, node.core.receive(src, frame, self.now))

    def partition(self, side: list[str]) -> None:
        """Cut every link between ``side`` and the other nodes.

        Each cut connection either breaks at once (both ends are told) or
        goes silent until the cores' timeouts close it.
        """
        inside = set(side)
        self._partitioned = True
        self.note(
            "partition: "
            + " ".join(self.name(n) for n in self.order if n in inside)
            + " | "
            + " ".join(self.name(n) for n in self.order if n not in inside)
        )
        for a in self.order:
            for b in self.order:
                if a < b and (a in inside) != (b in inside):
                    self._cut.add((a, b))
                    if (a, b) in self._conn and self.rng.random() < 0.5:
                        self.disconnect(a, b)
                        self._redial_later(a, b)

    def heal(self) -> None:
        """Remove every cut; nodes dial each other again."""
        if not self._partitioned:
            return
        self._partitioned = False
        self._cut.clear()
        self.note("partition heals")
        self._redial_all()

    def _redial_all(self) -> None:
        for a in self.order:
            for b in self.order:
                if a < b and not ((a, b) in self._conn and (b, a) in self._conn):
                    self._redial_later(a, b, self.rng.uniform(0.01, 0.3))

    # Workload and faults ---------------------------------------------------

    def _plan_workload(self) -> None:
        w = self.workload
        for q in range(w.queues):
            count = w.jobs // w.queues + (1 if q < w.jobs % w.queues else 0)
            jobs = tuple(
                JobSpec(
                    name=f"job{i:03d}",
                    cmd={"posix": f"work {q} {i}"},
                    retries=self.rng.randint(0, w.max_retries),
                )
                for i in range(count)
            )
            spec = QueueSpec(name=f"queue{q}", jobs=jobs)
            self.queues.append(spec)
            self._unpushed += 1
            when = self.rng.uniform(0, w.push_window)
            self.at(when, lambda spec=spec: self._push(spec))  # type: ignore[misc]

    def _push(self, spec: QueueSpec) -> None:
        alive = [n for n in self.order if self.nodes[n].alive]
        if not alive:
            self.at(self.now + 0.5, lambda: self._push(spec))
            return
        targets = alive if self.workload.everywhere else [self.rng.choice(alive)]
        for node_id in targets:
            node = self.nodes[node_id]
            assert node.core is not None
            self.note(f"push {spec.name} to {self.name(node_id)}")
            self.pushed_to.setdefault(spec.name, []).append(node_id)
            _new, actions = node.core.push_queue(spec, self.now)
            self._apply(node, actions)
        self._unpushed -= 1

    def _plan_faults(self) -> None:
        p = self.profile
        if p.crash_every > 0:
            self.at(self.rng.expovariate(1 / p.crash_every), self._crash_someone)
        if p.partition_every > 0:
            self.at(self.rng.expovariate(1 / p.partition_every), self._split)

    def _crash_someone(self) -> None:
        if not self.faults_on:
            return
        p = self.profile
        alive = [n for n in self.order if self._accepting(n)]
        if len(alive) > 1:
            victim = self.rng.choice(alive)
            roll = self.rng.random()
            if len(self.serving()) > 1 and self.rng.random() < p.stay_down:
                self.nodes[victim].retired = True
                self.note(f"{self.name(victim)} goes down for good")
            if roll < p.clean_stop:
                self.stop(victim)
                # The incarnation it will have once the stop has exited.
                incarnation = self.nodes[victim].incarnation + 1
            else:
                self.crash(victim, silent=roll < p.clean_stop + p.silent_crash)
                incarnation = self.nodes[victim].incarnation
            down = self.rng.uniform(*p.downtime)
            self.at(self.now + down, lambda: self._revive(victim, incarnation))
        self.at(self.now + self.rng.expovariate(1 / p.crash_every), self._crash_someone)

    def _accepting(self, node_id: str) -> bool:
        core = self.nodes[node_id].core
        return core is not None and core.accepting

    def _revive(self, node_id: str, incarnation: int) -> None:
        node = self.nodes[node_id]
        if node.retired:
            return
        if node.incarnation == incarnation and node.core is None:
            self.restart(node_id)
        elif node.incarnation == incarnation - 1:
            # A clean stop has not exited yet; come back after it has.
            self.at(self.now + 0.5, lambda: self._revive(node_id, incarnation))

    def _split(self) -> None:
        if not self.faults_on:
            return
        p = self.profile
        if not self._partitioned:
            shuffled = list(self.order)
            self.rng.shuffle(shuffled)
            size = self.rng.randint(1, max(1, len(shuffled) // 2))
            self.partition(shuffled[:size])
            length = self.rng.uniform(*p.partition_length)
            self.at(self.now + length, self.heal)
        self.at(self.now + self.rng.expovariate(1 / p.partition_every), self._split)

    def _end_faults(self) -> None:
        self.faults_on = False
        self.note("faults stop")
        self.heal()
        for node_id in self.serving():
            if not self.nodes[node_id].alive:
                self.restart(node_id)
        self._redial_all()

    # Checks ----------------------------------------------------------------

    def replay_hint(self) -> str:
        """How to run this seed again."""
        return (
            f"replay: AMUCRDT_SIM_SEED={self.seed} pytest "
            f"tests/test_simulation.py -k '{self.profile.name}'"
        )

    def check_each_attempt_started_once(self) -> list[str]:
        """Every attempt started exactly once; a new attempt only after a failure.

        The invariant of a cluster without faults: each job runs once, or once
        per attempt when a failed run is retried.
        """
        problems = []
        by_job: dict[str, list[Run]] = {}
        for run in self.ledger:
            by_job.setdefault(run.job_id, []).append(run)
        for job in self.job_ids():
            runs = sorted(by_job.get(job, []), key=lambda r: (r.attempt, r.start))
            attempts = [run.attempt for run in runs]
            if not runs:
                problems.append(f"{job} never started")
                continue
            if attempts != list(range(1, len(runs) + 1)):
                problems.append(
                    f"{job} attempts started {attempts}, expected 1..{len(runs)}: "
                    + "; ".join(str(r) for r in runs)
                )
                continue
            for run in runs[:-1]:
                if run.outcome != "failed":
                    problems.append(
                        f"{job} attempt {run.attempt + 1} opened after a run that "
                        f"did not fail: {run}"
                    )
        return problems

    def check_no_overlap(self) -> list[str]:
        """No two runs of one job overlap in time.

        A crash ends a node's runs at the moment of the crash, so this is the
        invariant "never on two live nodes at once".
        """
        problems = []
        by_job: dict[str, list[Run]] = {}
        for run in self.ledger:
            by_job.setdefault(run.job_id, []).append(run)
        for job, runs in sorted(by_job.items()):
            runs.sort(key=lambda r: r.start)
            for i, first in enumerate(runs):
                for second in runs[i + 1 :]:
                    end = first.end if first.end is not None else float("inf")
                    if second.start < end:
                        problems.append(f"{job} runs overlap: {first} and {second}")
        return problems

    def check_persist_first(self) -> list[str]:
        """No frame and no job start left a node before its changes were on disk."""
        return list(self.order_problems)

    def check_disks(self) -> list[str]:
        """Every live node's disk reloads to exactly its replica."""
        problems = []
        for node_id in self.order:
            node = self.nodes[node_id]
            if node.core is None:
                continue
            doc = self._load_disk(node)
            if doc.heads() != node.core.doc.heads():
                problems.append(
                    f"{self.name(node_id)}'s disk reloads to other heads than "
                    "its replica: a change was never persisted"
                )
        return problems

    def check_slots(self) -> list[str]:
        """No node ever runs more jobs at once than it has slots."""
        problems = []
        slots = self.workload.slots
        by_node: dict[str, list[tuple[float, int, Run]]] = {}
        for run in self.ledger:
            end = run.end if run.end is not None else float("inf")
            # At equal times an end comes before a start: a slot freed by
            # one job may be taken by the next in the same instant.
            by_node.setdefault(run.node_id, []).append((run.start, 1, run))
            by_node.setdefault(run.node_id, []).append((end, 0, run))
        for node_id in self.order:
            busy: list[Run] = []
            for _when, kind, run in sorted(
                by_node.get(node_id, []), key=lambda e: (e[0], e[1])
            ):
                if kind == 0:
                    busy.remove(run)
                    continue
                busy.append(run)
                if len(busy) > slots:
                    problems.append(
                        f"{self.name(node_id)} runs {len(busy)} jobs with "
                        f"{slots} slots: " + "; ".join(str(r) for r in busy)
                    )
        return problems

    def check_all_ended(self) -> list[str]:
        """On every live replica every pushed job is done or failed."""
        problems = []
        for node_id in self.serving():
            node = self.nodes[node_id]
            if node.core is None:
                problems.append(f"{self.name(node.node_id)} is down at the end")
                continue
            for job in self.job_ids(expected_only=True):
                try:
                    view = node.core.cluster.job(job)
                except KeyError:
                    problems.append(f"{self.name(node.node_id)} lacks job {job}")
                    continue
                if view.state not in (DONE, FAILED):
                    problems.append(
                        f"{self.name(node.node_id)} sees {job} {view.state} "
                        f"(attempt {view.attempt}, node {view.node})"
                    )
        return problems

    def check_results_match_ledger(self) -> list[str]:
        """The run a replica credits a job's end to did happen, with that end."""
        problems = []
        ended = {(r.job_id, r.attempt, r.node_id): r.outcome for r in self.ledger}
        core = next((n.core for n in self.nodes.values() if n.core), None)
        if core is None:
            return ["no node is up"]
        for job in self.job_ids():
            try:
                view = core.cluster.job(job)
            except KeyError:
                continue
            if view.state not in (DONE, FAILED) or view.node is None:
                continue
            outcome = ended.get((job, view.attempt, view.node))
            expected = {DONE: ("ok",), FAILED: ("failed", "killed", "crashed")}
            if outcome not in expected[view.state]:
                problems.append(
                    f"{job} is {view.state} by {self.name(view.node)} attempt "
                    f"{view.attempt}, but the ledger says {outcome}"
                )
        return problems

    def check_converged(self) -> list[str]:
        """The run went quiet, and every replica holds the same document."""
        problems = []
        if self.events >= self.workload.max_events:
            problems.append(
                f"stopped after {self.events} events at {self.now:.3f}s: "
                "frames keep breeding frames"
            )
        elif not self.converged:
            problems.append(
                f"not quiet {self.workload.deadline:.0f}s after faults stopped"
            )
        serving = [self.nodes[n] for n in self.serving()]
        cores = [(n, n.core) for n in serving if n.core is not None]
        if not cores:
            return [*problems, "no node is up"]
        first_node, first = cores[0]
        heads = first.doc.heads()
        content = first.doc.materialize(())
        for node, core in cores[1:]:
            if core.doc.heads() != heads:
                problems.append(
                    f"{self.name(node.node_id)} heads differ from "
                    f"{self.name(first_node.node_id)}"
                )
            elif core.doc.materialize(()) != content:
                problems.append(
                    f"{self.name(node.node_id)} materializes differently from "
                    f"{self.name(first_node.node_id)} at the same heads"
                )
        return problems

    def report(self, problems: list[str]) -> str:
        """A failure message: the problems, the replay hint, the trace tail."""
        lines = [
            f"seed {self.seed}, profile {self.profile.name}, {self.workload}",
            self.replay_hint(),
            *problems[:30],
        ]
        if len(problems) > 30:
            lines.append(f"... and {len(problems) - 30} more")
        names = " ".join(f"{self.name(n)}={n[:8]}" for n in self.order)
        lines.append(f"nodes: {names}")
        lines.append("last events:")
        lines.extend(list(self.trace)[-150:])
        return "\n".join(lines)
