"""Tests of the cluster document: schema, genesis, derived job state, winner rule."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from amucrdt import SCHEMA_VERSION
from amucrdt._automerge import Document
from amucrdt.errors import AmucrdtError, SchemaError
from amucrdt.formats import JobSpec, QueueSpec
from amucrdt.rule import preference, score, winner
from amucrdt.state import (
    CLAIMED,
    DONE,
    FAILED,
    MAX_LOST_ATTEMPTS,
    PENDING,
    ROOT_MAPS,
    RUNNING,
    Cluster,
    check_schema,
    entry_key,
    genesis,
    job_id,
    split_key,
)

NODE_A = "a" * 32
NODE_B = "b" * 32
NODE_C = "c" * 32
JOB = "q/build"

node_ids = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)


def replica(actor: int) -> Cluster:
    doc = genesis()
    doc.set_actor(actor.to_bytes(16, "big"))
    return Cluster(doc)


def queue(retries: int = 0, names: tuple[str, ...] = ("build",)) -> QueueSpec:
    return QueueSpec(
        name="q",
        jobs=tuple(
            JobSpec(name=name, cmd={"posix": f"make {name}"}, retries=retries)
            for name in names
        ),
    )


def cluster_with_job(retries: int = 0) -> Cluster:
    cluster = replica(1)
    cluster.add_queue(queue(retries), NODE_A, 1.0)
    cluster.refresh()
    return cluster


def result(state: str, **extra: Any) -> dict[str, Any]:
    return {"state": state, **extra}


def view_after(cluster: Cluster) -> Any:
    cluster.refresh()
    return cluster.job(JOB)


# Genesis and schema ----------------------------------------------------------


def test_genesis_is_the_same_bytes_and_heads_on_every_node() -> None:
    first, second = genesis(), genesis()

    assert first.save() == second.save()
    assert first.heads() == second.heads()
    assert len(first.heads()) == 1


def test_genesis_holds_schema_version_and_every_root_map() -> None:
    doc = genesis()

    assert doc.get(("schema",)) == SCHEMA_VERSION
    for name in ROOT_MAPS:
        assert doc.get((name,)) == {}
    check_schema(doc, "genesis")


def test_replicas_built_from_genesis_merge_without_losing_root_maps() -> None:
    a, b = replica(1), replica(2)
    a.add_host(NODE_A, {"addr": "ws://a"})
    b.add_host(NODE_B, {"addr": "ws://b"})
    a.doc.commit()
    b.doc.commit()

    a.merge(b.doc)
    a.refresh()

    assert sorted(a.hosts) == [NODE_A, NODE_B]


def test_check_schema_names_both_versions_and_the_source() -> None:
    doc = genesis()
    doc.set_actor(bytes(15) + b"\x09")
    doc.put(("schema",), SCHEMA_VERSION + 1)

    with pytest.raises(SchemaError) as caught:
        check_schema(doc, "peer 10.0.0.2")

    message = str(caught.value)
    assert "peer 10.0.0.2" in message
    assert str(SCHEMA_VERSION + 1) in message
    assert f"schema version {SCHEMA_VERSION}" in message


def test_check_schema_names_a_missing_root_map() -> None:
    doc = Document(actor=bytes(15) + b"\x09")
    doc.put(("schema",), SCHEMA_VERSION)

    with pytest.raises(SchemaError, match="claims"):
        check_schema(doc, "file.bin")


# Keys ------------------------------------------------------------------------


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    node=node_ids,
    job=st.text(min_size=1).filter(lambda s: "\0" not in s),
)
def test_entry_keys_split_back_into_their_parts(
    attempt: int, node: str, job: str
) -> None:
    assert split_key(entry_key(attempt, node, job)) == (attempt, node, job)


def test_split_key_rejects_a_key_without_attempt() -> None:
    with pytest.raises(ValueError):
        split_key("nonsense")


def test_job_id_joins_queue_and_name() -> None:
    assert job_id("nightly", "encode 1") == "nightly/encode 1"


# Queues ----------------------------------------------------------------------


def test_pushing_the_same_queue_again_changes_nothing() -> None:
    cluster = replica(1)

    assert cluster.add_queue(queue(), NODE_A, 1.0) is True
    heads = cluster.doc.heads()
    assert cluster.add_queue(queue(), NODE_B, 2.0) is False
    assert cluster.doc.heads() == heads


def test_pushing_other_jobs_under_a_taken_name_is_refused() -> None:
    cluster = replica(1)
    cluster.add_queue(queue(), NODE_A, 1.0)

    with pytest.raises(AmucrdtError, match="already exists"):
        cluster.add_queue(queue(names=("build", "test")), NODE_A, 2.0)


def test_same_queue_pushed_on_two_replicas_at_once_merges_to_one_set_of_jobs() -> None:
    a, b = replica(1), replica(2)
    a.add_queue(queue(names=("one", "two")), NODE_A, 5.0)
    b.add_queue(queue(names=("one", "two")), NODE_B, 5.0)

    a.merge(b.doc)
    b.merge(a.doc)
    a.refresh()
    b.refresh()

    assert a.doc.heads() == b.doc.heads()
    assert a.job_ids() == b.job_ids() == ["q/one", "q/two"]
    assert a.spec("q/one") == b.spec("q/one") == queue(names=("one",)).jobs[0]
    assert a.add_queue(queue(names=("one", "two")), NODE_A, 6.0) is False


def test_jobs_are_listed_queue_by_queue_in_push_order() -> None:
    cluster = replica(1)
    later = QueueSpec("later", (JobSpec("z", {"posix": "true"}),))
    cluster.add_queue(later, NODE_A, 2.0)
    cluster.add_queue(queue(names=("b", "a")), NODE_A, 1.0)
    cluster.refresh()

    assert cluster.job_ids() == ["q/b", "q/a", "later/z"]


# Derived job state -------------------------------------------------------------


def test_job_without_claims_is_pending_on_attempt_one() -> None:
    view = cluster_with_job().job(JOB)

    assert (view.state, view.attempt, view.node, view.claimants) == (
        PENDING,
        1,
        None,
        (),
    )


def test_claimed_job_names_the_winner_of_its_claimants() -> None:
    cluster = cluster_with_job()
    for node in (NODE_A, NODE_B, NODE_C):
        cluster.put_claim(JOB, 1, node, 2.0)

    view = view_after(cluster)

    assert view.state == CLAIMED
    assert view.claimants == (NODE_A, NODE_B, NODE_C)
    assert view.node == winner(JOB, 1, [NODE_A, NODE_B, NODE_C])


def test_withdrawn_claim_does_not_count() -> None:
    cluster = cluster_with_job()
    cluster.put_claim(JOB, 1, NODE_A, 2.0, withdrawn="node stopping")
    assert view_after(cluster).state == PENDING

    cluster.put_claim(JOB, 1, NODE_B, 3.0)
    view = view_after(cluster)
    assert (view.state, view.node, view.claimants) == (CLAIMED, NODE_B, (NODE_B,))


def test_start_record_makes_the_job_running_whoever_wins_the_rule() -> None:
    cluster = cluster_with_job()
    cluster.put_claim(JOB, 1, NODE_A, 2.0)
    cluster.put_claim(JOB, 1, NODE_B, 2.0)
    loser = NODE_A if winner(JOB, 1, [NODE_A, NODE_B]) == NODE_B else NODE_B
    cluster.put_result(JOB, 1, loser, result(RUNNING, node=loser))

    view = view_after(cluster)

    assert (view.state, view.node) == (RUNNING, loser)


def test_successful_result_makes_the_job_done() -> None:
    cluster = cluster_with_job()
    cluster.put_result(JOB, 1, NODE_A, result(DONE, exit_code=0))

    view = view_after(cluster)

    assert (view.state, view.attempt, view.node) == (DONE, 1, NODE_A)
    assert view.result is not None and view.result["exit_code"] == 0


def test_failed_attempt_opens_the_next_while_retries_remain() -> None:
    cluster = cluster_with_job(retries=1)
    cluster.put_result(JOB, 1, NODE_A, result(FAILED))
    view = view_after(cluster)
    assert (view.state, view.attempt, view.failures) == (PENDING, 2, 1)

    cluster.put_result(JOB, 2, NODE_B, result(FAILED))
    view = view_after(cluster)
    assert (view.state, view.attempt, view.node, view.failures) == (
        FAILED,
        2,
        NODE_B,
        2,
    )


def test_failed_job_without_retries_fails_on_its_first_attempt() -> None:
    cluster = cluster_with_job(retries=0)
    cluster.put_result(JOB, 1, NODE_A, result(FAILED))

    view = view_after(cluster)

    assert (view.state, view.attempt) == (FAILED, 1)


def test_interrupted_attempt_opens_the_next_without_using_a_retry() -> None:
    cluster = cluster_with_job(retries=0)
    cluster.put_result(JOB, 1, NODE_A, result("interrupted"))

    view = view_after(cluster)

    assert (view.state, view.attempt, view.failures, view.lost) == (PENDING, 2, 0, 1)


def test_takeover_opens_the_next_attempt() -> None:
    cluster = cluster_with_job()
    cluster.put_claim(JOB, 1, NODE_A, 2.0)
    cluster.put_result(JOB, 1, NODE_A, result(RUNNING))
    cluster.put_takeover(JOB, 1, NODE_B, NODE_A, 40.0, "lease expired")

    view = view_after(cluster)

    assert (view.state, view.attempt, view.lost) == (PENDING, 2, 1)


def test_late_success_of_a_taken_over_attempt_ends_the_job_as_done() -> None:
    cluster = cluster_with_job()
    cluster.put_result(JOB, 1, NODE_A, result(RUNNING))
    cluster.put_takeover(JOB, 1, NODE_B, NODE_A, 40.0, "lease expired")
    cluster.put_result(JOB, 2, NODE_B, result(RUNNING))
    cluster.put_result(JOB, 1, NODE_A, result(DONE, late=True))

    view = view_after(cluster)

    assert (view.state, view.attempt, view.node) == (DONE, 1, NODE_A)


def test_job_fails_after_too_many_lost_attempts() -> None:
    cluster = cluster_with_job(retries=3)
    for attempt in range(1, MAX_LOST_ATTEMPTS + 1):
        cluster.put_result(JOB, attempt, NODE_A, result("interrupted"))

    view = view_after(cluster)

    assert (view.state, view.attempt, view.lost) == (
        FAILED,
        MAX_LOST_ATTEMPTS,
        MAX_LOST_ATTEMPTS,
    )


def test_open_jobs_skips_finished_jobs_in_push_order() -> None:
    cluster = replica(1)
    cluster.add_queue(queue(names=("a", "b", "c", "d")), NODE_A, 1.0)
    cluster.put_result("q/a", 1, NODE_A, result(DONE))
    cluster.put_result("q/c", 1, NODE_A, result(FAILED))
    cluster.refresh()

    assert [v.job_id for v in cluster.open_jobs()] == ["q/b", "q/d"]
    cluster.put_result("q/b", 1, NODE_A, result(DONE))
    cluster.refresh()
    assert [v.job_id for v in cluster.open_jobs()] == ["q/d"]


def test_incremental_index_matches_a_fresh_read_after_merges() -> None:
    rng = random.Random(5)
    replicas = [replica(i + 1) for i in range(3)]
    nodes = [NODE_A, NODE_B, NODE_C]
    replicas[0].add_queue(queue(retries=1, names=("a", "b", "c")), NODE_A, 1.0)
    for step in range(60):
        i = rng.randrange(3)
        cluster, node = replicas[i], nodes[i]
        cluster.refresh()
        job = rng.choice(["q/a", "q/b", "q/c"])
        attempt = rng.randint(1, 3)
        kind = rng.randrange(4)
        if kind == 0:
            cluster.put_claim(job, attempt, node, float(step))
        elif kind == 1:
            cluster.put_result(
                job, attempt, node, result(rng.choice([RUNNING, FAILED, DONE]))
            )
        elif kind == 2:
            cluster.put_takeover(job, attempt, node, NODE_A, float(step), "test")
        else:
            other = replicas[rng.randrange(3)]
            cluster.merge(other.doc)
        cluster.refresh()

        fresh = Cluster(cluster.doc)
        assert [cluster.job(j) for j in cluster.job_ids()] == [
            fresh.job(j) for j in fresh.job_ids()
        ]


# The winner rule ---------------------------------------------------------------


@given(
    job=st.text(min_size=1, max_size=40),
    attempt=st.integers(min_value=1, max_value=100),
    claimants=st.sets(node_ids, min_size=1, max_size=8),
)
def test_winner_is_a_claimant_and_ignores_claim_order(
    job: str, attempt: int, claimants: set[str]
) -> None:
    ordered = sorted(claimants)
    chosen = winner(job, attempt, ordered)

    assert chosen in claimants
    for permutation in itertools.islice(itertools.permutations(ordered), 24):
        assert winner(job, attempt, permutation) == chosen
    assert winner(job, attempt, [*ordered, *ordered]) == chosen


@given(
    job=st.text(min_size=1, max_size=40),
    claimants=st.sets(node_ids, min_size=2, max_size=6),
)
def test_winner_keeps_winning_when_a_loser_leaves(
    job: str, claimants: set[str]
) -> None:
    chosen = winner(job, 1, claimants)
    loser = next(node for node in sorted(claimants) if node != chosen)

    assert winner(job, 1, claimants - {loser}) == chosen


def test_winner_of_no_claims_is_an_error_naming_the_job() -> None:
    with pytest.raises(ValueError, match="q/build"):
        winner("q/build", 1, [])


def test_every_node_wins_its_share_of_collisions() -> None:
    nodes = [NODE_A, NODE_B, NODE_C]

    wins = {node: 0 for node in nodes}
    for i in range(3000):
        wins[winner(f"q/job{i}", 1, nodes)] += 1

    assert all(800 < count < 1200 for count in wins.values()), wins


def test_scores_differ_between_attempts_of_one_job() -> None:
    assert score(JOB, 1, NODE_A) != score(JOB, 2, NODE_A)
    assert len(score(JOB, 1, NODE_A)) == 16


def test_preference_does_not_depend_on_the_attempt_and_differs_by_node() -> None:
    assert preference(NODE_A, JOB) == preference(NODE_A, JOB)
    assert preference(NODE_A, JOB) != preference(NODE_B, JOB)


evidence = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=7),
        st.sampled_from([NODE_A, NODE_B, NODE_C]),
        st.sampled_from([FAILED, "interrupted", "takeover", RUNNING]),
    ),
    max_size=25,
)


@given(retries=st.integers(min_value=0, max_value=3), records=evidence)
@example(
    retries=1,
    records=[(a, NODE_A, "interrupted") for a in range(1, MAX_LOST_ATTEMPTS + 1)]
    + [(1, NODE_B, FAILED)],
)
def test_finished_job_never_reopens_whatever_arrives_later(
    retries: int, records: list[tuple[int, str, str]]
) -> None:
    # Replicas learn records in any order and never lose one, so once a job
    # is done or failed no later record may open it again: nodes stop looking
    # at finished jobs, and a waiting user has been told the job ended.
    cluster = cluster_with_job(retries=retries)
    finished = False
    for attempt, node, kind in records:
        if kind == "takeover":
            cluster.put_takeover(JOB, attempt, node, NODE_A, 9.0, "lease expired")
        elif cluster.results(JOB, attempt).get(node, {}).get("state") in (
            None,
            RUNNING,
        ):
            # A node's own record only moves on from "running".
            cluster.put_result(JOB, attempt, node, result(kind))
        state = view_after(cluster).state
        if finished:
            assert state in (DONE, FAILED)
        finished = state in (DONE, FAILED)
