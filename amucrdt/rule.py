"""The winner rule and the pick order.

Both are pure functions of what is in the document: no clock, no randomness,
no message round. Every replica that holds the same set of claims for one
attempt of one job computes the same winner, whatever order the claims came in.

The rule is rendezvous (highest-random-weight) hashing: each claimant gets a
score from a hash of (job, attempt, node) and the lowest score wins. Over many
jobs every node wins an equal share of its collisions, unlike "lowest node id
wins", which would always starve the same nodes. The same score orders a
node's pending jobs, so two nodes seldom reach for the same job first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(job_id: str, attempt: int, node_id: str) -> bytes:
    """The rendezvous score of ``node_id`` for one attempt of one job.

    Lower is better. The encoding separates fields with NUL, which cannot
    appear in a node id and is rejected in queue and job names, so distinct
    triples never share an input.
    """
    data = f"{job_id}\0{attempt}\0{node_id}".encode()
    return hashlib.blake2b(data, digest_size=16).digest()


def winner(job_id: str, attempt: int, claimants: Iterable[str]) -> str:
    """The node that runs ``attempt`` of ``job_id`` among ``claimants``.

    Total over non-empty sets and independent of their order.

    Raises:
        ValueError: when there are no claimants.
    """
    nodes = set(claimants)
    if not nodes:
        raise ValueError(f"job {job_id!r} attempt {attempt}: no claims to decide")
    return min(nodes, key=lambda node: (score(job_id, attempt, node), node))


def preference(node_id: str, job_id: str) -> bytes:
    """How much ``node_id`` prefers ``job_id`` among pending jobs (lower first).

    Independent of the attempt, so a node's order stays stable while a job
    is retried.
    """
    data = f"pick\0{node_id}\0{job_id}".encode()
    return hashlib.blake2b(data, digest_size=16).digest()
