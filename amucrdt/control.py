"""Requests of the CLI, served by a node over its own port.

A CLI connection authenticates like a peer (role "client") and then sends
requests, one JSON object each, answered in order::

    {"t": "req", "id": 1, "op": "push_queue", "queue": {...}}
    {"t": "resp", "id": 1, "ok": true, "result": {...}}
    {"t": "resp", "id": 1, "ok": false, "error": "what went wrong"}

A reply to a push is sent only after the change is on disk.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from amucrdt import SCHEMA_VERSION, __version__
from amucrdt.errors import AmucrdtError, FormatError, ProtocolError
from amucrdt.formats import JobSpec, QueueSpec, validate_queue_name
from amucrdt.hostsfile import normalize_address
from amucrdt.state import Cluster, JobView
from amucrdt.wire import Hello, close_connection, decode_json, encode_json

if TYPE_CHECKING:
    from amucrdt.node import Node

log = logging.getLogger(__name__)

#: Most jobs one pushed queue may hold.
MAX_JOBS_PER_QUEUE = 1_000_000


class Control:
    """Serves CLI connections for one node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def serve(self, ws: Any, hello: Hello, where: str) -> None:
        """Answer requests on ``ws`` until the client closes it."""
        client = f"client {where}"
        try:
            async for message in ws:
                if isinstance(message, str):
                    raise ProtocolError(f"{client}: text frame")
                request = decode_json(message, client)
                rid = request.get("id")
                try:
                    result = self.handle(request)
                    reply: dict[str, Any] = {"t": "resp", "id": rid, "ok": True}
                    reply["result"] = result
                except AmucrdtError as exc:
                    reply = {"t": "resp", "id": rid, "ok": False, "error": str(exc)}
                await ws.send(encode_json(reply))
        except ProtocolError as exc:
            log.warning("node %s: %s", self.node.node_id, exc)
            await close_connection(ws, 1008, str(exc))
        except ConnectionClosed:
            pass

    def handle(self, request: dict[str, Any]) -> Any:
        """One request's result.

        Raises:
            AmucrdtError: a message for the user, sent back as the error.
        """
        op = request.get("op")
        now = time.time()
        if op == "push_queue":
            spec = _queue_from_json(request.get("queue"))
            new, actions = self.node.core.push_queue(spec, now)
            self.node._do(actions)
            try:
                self.node.flush()  # on disk before the reply
            except AmucrdtError as exc:
                raise AmucrdtError(
                    f"queue {spec.name}: the node could not write it to disk "
                    f"({exc}); it holds the queue in memory, takes no work and "
                    "saves it once it can write again: do not push it elsewhere"
                ) from None
            return {"queue": spec.name, "jobs": len(spec.jobs), "new": new}
        if op == "push_hosts":
            hosts = request.get("hosts")
            if not isinstance(hosts, list) or not all(
                isinstance(h, str) for h in hosts
            ):
                raise AmucrdtError("push_hosts: hosts must be a list of addresses")
            urls = [normalize_address(h, "push_hosts") for h in hosts]
            added, actions = self.node.core.push_hosts(urls, now)
            self.node._do(actions)
            self.node.flush()
            return {"added": added, "known": sorted(self.node.core.cluster.addresses)}
        if op == "dump":
            return dump(self.node.core.cluster, self.node.node_id)
        if op == "status":
            return status(self.node, now)
        if op == "stats":
            return {
                "node": self.node.node_id,
                "settle_latency": list(self.node.core.stats.settle_latency),
                **summary_stats(self.node),
            }
        raise AmucrdtError(f"unknown request {op!r}")


def _queue_from_json(obj: Any) -> QueueSpec:
    if not isinstance(obj, dict):
        raise FormatError("request", "queue must be an object")
    name = obj.get("name")
    jobs = obj.get("jobs")
    if not isinstance(name, str):
        raise FormatError("request", "queue name must be a string")
    validate_queue_name(name, "request")
    if not isinstance(jobs, list) or not jobs:
        raise FormatError("request", f"queue {name}: jobs must be a non-empty list")
    if len(jobs) > MAX_JOBS_PER_QUEUE:
        raise FormatError(
            "request", f"queue {name}: more than {MAX_JOBS_PER_QUEUE} jobs"
        )
    specs = tuple(
        JobSpec.from_json(job, f"queue {name} job {i + 1}")
        for i, job in enumerate(jobs)
    )
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise FormatError("request", f"queue {name}: duplicate job names")
    return QueueSpec(name, specs)


def dump(cluster: Cluster, node_id: str | None) -> dict[str, Any]:
    """The merged document as plain JSON, with its heads."""
    return {
        "node": node_id,
        "schema": SCHEMA_VERSION,
        "heads": [h.hex() for h in cluster.doc.heads()],
        "document": cluster.doc.materialize(()),
    }


def job_json(view: JobView) -> dict[str, Any]:
    """One job's row of ``status --json``."""
    result = view.result or {}
    started, ended = result.get("started"), result.get("ended")
    duration = None
    if isinstance(started, int | float) and isinstance(ended, int | float):
        duration = round(ended - started, 3)
    return {
        "job": view.job_id,
        "queue": view.queue,
        "name": view.name,
        "state": view.state,
        "node": view.node,
        "attempt": view.attempt,
        "exit_code": result.get("exit_code"),
        "started": started,
        "ended": ended,
        "duration": duration,
        "error": result.get("error"),
    }


def queue_totals(views: list[JobView]) -> dict[str, dict[str, int]]:
    """Per queue, how many jobs are in each state."""
    totals: dict[str, dict[str, int]] = {}
    for view in views:
        row = totals.setdefault(
            view.queue,
            {
                "total": 0,
                "pending": 0,
                "claimed": 0,
                "running": 0,
                "done": 0,
                "failed": 0,
            },
        )
        row["total"] += 1
        row[view.state] += 1
    return totals


def status(node: Node, now: float) -> dict[str, Any]:
    """What ``amucrdt status --json`` prints."""
    core = node.core
    views = list(core.cluster.jobs())
    return {
        "node": {
            "id": node.node_id,
            "address": node.address,
            "version": __version__,
            "newest_version_seen": core.newest_version,
            "schema": SCHEMA_VERSION,
            "slots": core.config.slots,
            "running": sorted(core.running),
            "accepting": core.accepting,
            "heads": [h.hex() for h in core.doc.heads()],
        },
        "peers": core.peer_status(now),
        "queues": queue_totals(views),
        "jobs": [job_json(view) for view in views],
        "stats": summary_stats(node),
    }


def summary_stats(node: Node) -> dict[str, Any]:
    """The claim-path counters of a node, and its settle latency quantiles."""
    stats = node.core.stats
    ordered = sorted(stats.settle_latency)

    def quantile(q: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 6)

    return {
        "claims": stats.claims,
        "won": stats.won,
        "lost": stats.lost,
        "withdrawn": stats.withdrawn,
        "takeovers": stats.takeovers,
        "started": stats.started,
        "finished": stats.finished,
        "resets": stats.resets,
        "rebuilds": stats.rebuilds,
        "settle_p50": quantile(0.5),
        "settle_p99": quantile(0.99),
        "settle_max": ordered[-1] if ordered else None,
    }
