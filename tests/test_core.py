"""Focused tests of NodeCore behaviours, driven event by event by hand."""

from __future__ import annotations

from typing import Any

from amucrdt._automerge import Document
from amucrdt.core import Action, Config, NodeCore, Persist, StartJob, Wake
from amucrdt.formats import JobSpec, QueueSpec
from amucrdt.frames import SyncFrame
from amucrdt.rule import winner
from amucrdt.state import CLAIMED, DONE, PENDING, Cluster, genesis

NODE_A = "a" * 32
NODE_B = "b" * 32
NODE_C = "c" * 32


def make_core(node_id: str = NODE_A, now: float = 0.0, **options: Any) -> NodeCore:
    """A core on a fresh genesis document, with short simulator timings."""
    doc = genesis()
    doc.set_actor(bytes.fromhex(node_id[:32]))
    settings: dict[str, Any] = {
        "heartbeat_interval": 0.2,
        "peer_timeout": 1.0,
        "lease": 3.0,
        "startup_grace": 0.5,
        "resync_after": 1.0,
    }
    settings.update(options)
    return NodeCore(Config(node_id=node_id, **settings), doc, now)


def make_queue(name: str, jobs: int, retries: int = 0) -> QueueSpec:
    return QueueSpec(
        name=name,
        jobs=tuple(
            JobSpec(name=f"job{i}", cmd={"posix": f"true {i}"}, retries=retries)
            for i in range(jobs)
        ),
    )


def starts(actions: list[Action]) -> list[tuple[str, int]]:
    return [(a.job_id, a.attempt) for a in actions if isinstance(a, StartJob)]


def ok(now: float) -> dict[str, Any]:
    return {"ok": True, "exit_code": 0, "started": now, "ended": now, "tail": ""}


def test_lone_node_starts_claimed_job_in_the_same_event() -> None:
    core = make_core()
    core.startup(0.0)

    _new, actions = core.push_queue(make_queue("q", 1), 0.1)

    assert starts(actions) == [("q/job0", 1)]
    assert core.stats.lost == 0
    assert core.cluster.job("q/job0").state == "running"


def test_lone_node_runs_every_job_of_a_queue_one_after_another() -> None:
    core = make_core()
    core.startup(0.0)
    _new, actions = core.push_queue(make_queue("q", 3), 0.1)
    ran = starts(actions)

    now = 0.1
    while len(ran) < 3:
        now += 1.0
        job, attempt = ran[-1]
        ran += starts(core.finished(job, attempt, ok(now), now))

    assert sorted(ran) == [("q/job0", 1), ("q/job1", 1), ("q/job2", 1)]
    core.finished(*ran[-1], ok(now + 1), now + 1)
    assert [core.cluster.job(f"q/job{i}").state for i in range(3)] == [DONE] * 3
    assert core.stats.claims == 3
    assert core.stats.lost == 0


def test_every_write_is_persisted_before_the_job_starts() -> None:
    core = make_core()
    core.startup(0.0)

    _new, actions = core.push_queue(make_queue("q", 1), 0.1)

    kinds = [type(a) for a in actions]
    assert kinds.index(Persist) < kinds.index(StartJob)


def test_connected_node_waits_for_peer_before_claiming() -> None:
    core = make_core()
    core.startup(0.0)
    core.connected(NODE_B, {"version": "0.1.0", "schema": 1}, 0.0)

    _new, actions = core.push_queue(make_queue("q", 1), 0.1)

    assert starts(actions) == []
    assert core.cluster.job("q/job0").state == PENDING
    assert core.pending == {}


def test_claim_does_not_settle_until_live_peer_reports_it() -> None:
    a, b = make_core(NODE_A), make_core(NODE_B)
    a.startup(0.0)
    b.startup(0.0)
    a.connected(NODE_B, {}, 0.0)
    b.connected(NODE_A, {}, 0.0)
    exchange(a, b, 0.0)

    _new, actions = a.push_queue(make_queue("q", 1), 0.1)

    assert starts(actions) == []
    assert list(a.pending) == [("q/job0", 1)]
    assert a.cluster.job("q/job0").state == CLAIMED


def exchange(a: NodeCore, b: NodeCore, now: float, rounds: int = 20) -> list[Action]:
    """Pass frames both ways until both cores fall silent; returns all actions."""
    out: list[Action] = []
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for frame in src.poll(dst.node_id):
                moved = True
                out += dst.receive(src.node_id, frame, now)
        if not moved:
            break
    return out


def host_record(node_id: str) -> dict[str, Any]:
    return {"addr": "", "version": "0.1.0", "schema": 1, "os": "posix", "slots": 1}


def disk_with_own_claim(job: str = "q/job0") -> tuple[Document, Document]:
    """Replicas of A (holding an unsettled claim of its own) and of B.

    Both know both hosts and the queue; only A's replica has A's claim.
    """
    doc = genesis()
    doc.set_actor(bytes(15) + b"\x01")
    cluster = Cluster(doc)
    cluster.add_host(NODE_A, host_record(NODE_A))
    cluster.add_host(NODE_B, host_record(NODE_B))
    cluster.add_queue(make_queue("q", 1), NODE_A, 0.0)
    doc.commit(time=0)
    theirs = doc.fork(actor=bytes(15) + b"\x02")
    cluster.put_claim(job, 1, NODE_A, 0.5)
    doc.commit(time=500)
    return doc, theirs


def test_restarted_node_does_not_start_its_old_claim_before_catching_up() -> None:
    mine, theirs = disk_with_own_claim()
    b = NodeCore(Config(node_id=NODE_B, startup_grace=0.5), theirs, 0.0)
    b.startup(0.0)
    # B, alone past its start-up grace and never having seen A's claim,
    # claims and starts the attempt.
    assert starts(b.tick(1.0)) == [("q/job0", 1)]
    a = NodeCore(Config(node_id=NODE_A, startup_grace=0.5), mine, 10.0)

    actions = a.startup(10.0)
    actions += a.connected(NODE_B, {}, 10.01)
    b.connected(NODE_A, {}, 10.01)
    actions += exchange(a, b, 10.02)
    actions += a.tick(10.6)
    actions += exchange(a, b, 10.6)

    assert starts(actions) == []
    assert a.cluster.job("q/job0").state == "running"
    assert a.cluster.job("q/job0").node == NODE_B


def test_restarted_node_takes_up_its_own_claim_once_caught_up() -> None:
    mine, theirs = disk_with_own_claim()
    a = NodeCore(Config(node_id=NODE_A, startup_grace=0.5), mine, 10.0)
    b = NodeCore(Config(node_id=NODE_B, startup_grace=0.5), theirs, 0.0)

    actions = a.startup(10.0)
    assert starts(actions) == []
    actions += a.connected(NODE_B, {}, 10.01)
    b.connected(NODE_A, {}, 10.01)
    actions += exchange(a, b, 10.02)

    assert starts(actions) == [("q/job0", 1)]
    assert b.cluster.job("q/job0").node == NODE_A


def connect(a: NodeCore, b: NodeCore, now: float) -> None:
    a.connected(b.node_id, {}, now)
    b.connected(a.node_id, {}, now)


def deliver(src: NodeCore, dst: NodeCore, now: float) -> list[Action]:
    """Pass every frame due from ``src`` to ``dst``, one way only."""
    out: list[Action] = []
    for frame in src.poll(dst.node_id):
        out += dst.receive(src.node_id, frame, now)
    return out


def test_claim_won_by_a_node_that_died_is_taken_over_after_the_lease() -> None:
    # Both nodes claim the only job at once; B wins the rule, but dies after
    # its claim reached A and before it could settle and start.
    job = next(
        f"q/job{i}"
        for i in range(100)
        if winner(f"q/job{i}", 1, [NODE_A, NODE_B]) == NODE_B
    )
    queue = QueueSpec(
        name="q", jobs=(JobSpec(name=job.split("/")[1], cmd={"posix": "true"}),)
    )
    a, b = make_core(NODE_A), make_core(NODE_B)
    a.startup(0.0)
    b.startup(0.0)
    connect(a, b, 0.0)
    exchange(a, b, 0.0)
    a.push_queue(queue, 0.1)
    b.push_queue(queue, 0.1)
    deliver(b, a, 0.11)
    assert a.cluster.job(job).claimants == tuple(sorted([NODE_A, NODE_B]))

    actions = a.disconnected(NODE_B, 0.2)
    now = 0.2
    while now < 10.0:
        now += 0.1
        actions += a.tick(now)

    assert starts(actions) == [(job, 2)]
    assert a.stats.takeovers == 1


def test_node_does_not_claim_a_new_attempt_of_a_job_it_still_runs() -> None:
    a = make_core(slots=2)
    a.startup(0.0)
    _new, actions = a.push_queue(make_queue("q", 1), 0.1)
    assert starts(actions) == [("q/job0", 1)]
    # A peer, cut off from this node for longer than the lease, took the
    # attempt over; the record reaches this node while the job still runs.
    a.cluster.put_takeover("q/job0", 1, NODE_B, NODE_A, 5.0, "lease expired")

    actions = a.tick(5.1)

    assert starts(actions) == []
    assert a.running == {"q/job0": 1}
    assert a.pending == {}


def test_late_end_of_an_old_attempt_keeps_the_newer_attempt_running() -> None:
    a = make_core(slots=2)
    a.startup(0.0)
    a.push_queue(make_queue("q", 1), 0.1)
    a.cluster.put_takeover("q/job0", 1, NODE_B, NODE_A, 5.0, "lease expired")
    a.tick(5.1)

    actions = a.finished("q/job0", 1, ok(6.0), 6.0)

    assert a.running == {}
    assert a.cluster.job("q/job0").state == DONE
    assert starts(actions) == []


def test_lost_sync_message_is_recovered_by_a_new_epoch() -> None:
    a, b = make_core(NODE_A), make_core(NODE_B)
    a.startup(0.0)
    b.startup(0.0)
    connect(a, b, 0.0)
    exchange(a, b, 0.0)
    a.push_queue(make_queue("q", 3), 0.1)
    b.push_queue(make_queue("r", 3), 0.1)
    # The sync message that carries A's queue is lost on a live connection.
    # Automerge never sends those changes again on this sync state, while
    # both sides keep answering each other's messages.
    assert [f for f in a.poll(NODE_B) if isinstance(f, SyncFrame)]

    now = 0.1
    while now < 5.0 and b.doc.heads() != a.doc.heads():
        now += 0.1
        a.tick(now)
        b.tick(now)
        exchange(a, b, now, rounds=4)

    assert b.doc.heads() == a.doc.heads()
    assert now < 0.1 + 2 * 1.0
    assert a.stats.resets + b.stats.resets >= 1


def test_tick_persists_a_takeover_before_waking_any_peer() -> None:
    doc = genesis()
    doc.set_actor(bytes(15) + b"\x07")
    cluster = Cluster(doc)
    cluster.add_queue(make_queue("q", 1), NODE_C, 0.0)
    cluster.put_claim("q/job0", 1, NODE_C, 0.0)
    cluster.put_result("q/job0", 1, NODE_C, {"state": "running", "node": NODE_C})
    doc.commit(time=0)
    a = NodeCore(Config(node_id=NODE_A, lease=3.0), doc, 0.0)
    b = NodeCore(Config(node_id=NODE_B, lease=3.0), doc.fork(), 0.0)
    a.startup(0.0)
    b.startup(0.0)
    connect(a, b, 0.0)
    exchange(a, b, 0.0)

    actions = a.tick(3.5)

    assert a.stats.takeovers == 1
    kinds = [type(action) for action in actions]
    assert Persist in kinds and Wake in kinds
    assert kinds.index(Persist) < kinds.index(Wake)


def test_busy_node_lets_go_of_a_claim_it_comes_to_win() -> None:
    # B's claim beat A's on one job; A is busy with another job when B
    # withdraws, which makes A the winner of a claim it has no slot for.
    contested = next(
        f"job{i}"
        for i in range(1, 100)
        if winner(f"q/job{i}", 1, [NODE_A, NODE_B]) == NODE_B
    )
    spec = QueueSpec(
        "q",
        tuple(JobSpec(name, {"posix": "true"}) for name in ("job0", contested)),
    )
    doc = genesis()
    doc.set_actor(bytes(15) + b"\x07")
    cluster = Cluster(doc)
    cluster.add_queue(spec, NODE_B, 0.0)
    cluster.put_claim(f"q/{contested}", 1, NODE_A, 0.0)
    cluster.put_claim(f"q/{contested}", 1, NODE_B, 0.0)
    doc.commit(time=0)
    theirs = doc.fork(actor=bytes(15) + b"\x08")
    a = NodeCore(Config(node_id=NODE_A, slots=1), doc, 0.0)
    assert starts(a.startup(0.0)) == [("q/job0", 1)]

    Cluster(theirs).put_claim(f"q/{contested}", 1, NODE_B, 1.0, withdrawn="stop")
    theirs.commit(time=1000)
    a.doc.merge(theirs)
    actions = a.tick(1.1)

    assert starts(actions) == []
    assert a.running == {"q/job0": 1}
    assert a.cluster.job(f"q/{contested}").state == PENDING
    assert starts(a.finished("q/job0", 1, ok(2.0), 2.0)) == [(f"q/{contested}", 1)]


def test_loser_of_a_collision_never_starts_the_command() -> None:
    a, b = make_core(NODE_A), make_core(NODE_B)
    a.startup(0.0)
    b.startup(0.0)
    connect(a, b, 0.0)
    exchange(a, b, 0.0)

    # The same queue reaches both nodes at once; each claims its only job
    # before hearing of the other's claim.
    _new, a_actions = a.push_queue(make_queue("q", 1), 0.1)
    _new, b_actions = b.push_queue(make_queue("q", 1), 0.1)
    assert list(a.pending) == list(b.pending) == [("q/job0", 1)]
    a_started = starts(a_actions)
    b_started = starts(b_actions)
    for _ in range(20):
        for src, dst, out in ((a, b, b_started), (b, a, a_started)):
            for frame in src.poll(dst.node_id):
                out += starts(dst.receive(src.node_id, frame, 0.2))

    expected = winner("q/job0", 1, [NODE_A, NODE_B])
    assert (a_started, b_started) == (
        ([("q/job0", 1)], []) if expected == NODE_A else ([], [("q/job0", 1)])
    )
    assert a.stats.lost + b.stats.lost == 1
    assert a.cluster.job("q/job0").node == b.cluster.job("q/job0").node == expected
