"""Seeded simulations of whole clusters: the claim protocol's invariants.

Each test runs one seed; the cluster's size and work are drawn from the seed
too. A failure prints its seed and the command that replays it, e.g.::

    AMUCRDT_SIM_SEED=1234 pytest tests/test_simulation.py -k crash

``AMUCRDT_SIM_SEEDS=500`` runs more seeds per profile than the default.
"""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
from sim import CHAOS, CRASH, FAULT_FREE, PARTITION, Profile, Sim, Workload

DEFAULT_SEEDS = {"fault_free": 60, "crash": 50, "partition": 50, "chaos": 20}


def seeds(profile: Profile) -> list[object]:
    """The seeds to run for ``profile``, as pytest params with readable ids."""
    only = os.environ.get("AMUCRDT_SIM_SEED")
    if only:
        chosen = [int(only)]
    else:
        count = int(os.environ.get("AMUCRDT_SIM_SEEDS", DEFAULT_SEEDS[profile.name]))
        chosen = list(range(count))
    return [pytest.param(seed, id=f"seed_{seed}") for seed in chosen]


def workload_for(seed: int, profile: Profile) -> Workload:
    """A cluster and its work, drawn from the seed: 2 to 6 nodes, 5 to 60 jobs."""
    rng = random.Random(f"{profile.name}:{seed}")
    nodes = rng.choice([2, 3, 3, 4, 4, 5, 6])
    jobs = rng.randint(5, 60) if nodes <= 3 else rng.randint(5, 30)
    return Workload(
        nodes=nodes,
        jobs=jobs,
        queues=rng.randint(1, 3),
        everywhere=rng.random() < 0.35,
        slots=rng.choice([1, 1, 1, 2]),
        push_window=rng.uniform(0.0, 4.0),
        fault_time=4.0 if profile.name == FAULT_FREE.name else 8.0,
    )


def simulate(seed: int, profile: Profile) -> Sim:
    # A third of the runs keep each link in order, as one websocket does.
    rng = random.Random(f"links:{seed}")
    profile = dataclasses.replace(profile, reorder=rng.random() < 0.67)
    sim = Sim(seed, profile, workload_for(seed, profile))
    sim.run()
    return sim


def assert_clean(sim: Sim, problems: list[str]) -> None:
    if problems:
        pytest.fail(sim.report(problems), pytrace=False)


@pytest.mark.parametrize("seed", seeds(FAULT_FREE))
def test_fault_free_cluster_starts_each_job_once(seed: int) -> None:
    sim = simulate(seed, FAULT_FREE)
    resets = sim.result().total("resets")

    assert_clean(
        sim,
        [f"{resets} sync resets on a network that loses nothing"] * (resets > 0)
        + sim.check_each_attempt_started_once()
        + sim.check_no_overlap()
        + sim.check_all_ended()
        + sim.check_results_match_ledger()
        + sim.check_slots()
        + sim.check_persist_first()
        + sim.check_disks()
        + sim.check_converged(),
    )


@pytest.mark.parametrize("seed", seeds(CRASH))
def test_crashing_cluster_never_runs_a_job_on_two_live_nodes(seed: int) -> None:
    sim = simulate(seed, CRASH)

    assert_clean(
        sim,
        sim.check_no_overlap()
        + sim.check_all_ended()
        + sim.check_results_match_ledger()
        + sim.check_slots()
        + sim.check_persist_first()
        + sim.check_disks()
        + sim.check_converged(),
    )


@pytest.mark.parametrize("seed", seeds(PARTITION))
def test_partitioned_cluster_loses_no_job_and_converges(seed: int) -> None:
    sim = simulate(seed, PARTITION)

    assert_clean(
        sim,
        sim.check_all_ended()
        + sim.check_results_match_ledger()
        + sim.check_slots()
        + sim.check_persist_first()
        + sim.check_disks()
        + sim.check_converged(),
    )


@pytest.mark.parametrize("seed", seeds(CHAOS))
def test_cluster_under_every_fault_at_once_loses_no_job_and_converges(
    seed: int,
) -> None:
    sim = simulate(seed, CHAOS)

    assert_clean(
        sim,
        sim.check_all_ended()
        + sim.check_results_match_ledger()
        + sim.check_slots()
        + sim.check_persist_first()
        + sim.check_disks()
        + sim.check_converged(),
    )


def test_same_seed_replays_the_same_run() -> None:
    first = Sim(7, CRASH, Workload(nodes=3, jobs=10)).run()
    second = Sim(7, CRASH, Workload(nodes=3, jobs=10)).run()

    assert [str(run) for run in first.ledger] == [str(run) for run in second.ledger]
    assert first.trace == second.trace
    assert first.events == second.events


def test_colliding_pushes_make_claims_lose_and_still_run_each_job_once() -> None:
    sim = Sim(3, FAULT_FREE, Workload(nodes=6, jobs=30, everywhere=True))
    result = sim.run()

    assert result.total("lost") > 0
    assert result.duplicate_starts() == 0
    assert len(result.settle_latencies()) >= result.total("claims") > 0
    assert_clean(sim, sim.check_each_attempt_started_once())


def test_crash_profile_takes_over_attempts_of_dead_nodes() -> None:
    takeovers = 0
    for seed in range(5):
        sim = Sim(seed, CRASH, Workload(nodes=4, jobs=20))
        result = sim.run()
        takeovers += result.total("takeovers")

        assert_clean(sim, sim.check_no_overlap() + sim.check_all_ended())
    assert takeovers > 0
