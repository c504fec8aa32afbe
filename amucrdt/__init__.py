"""amucrdt: a peer-to-peer job queue with no broker.

Every node holds one Automerge document with the whole shared state (hosts,
queues, jobs, claims, results) and syncs it with its peers over websockets.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Version of the document schema this release reads and writes.
SCHEMA_VERSION = 1
