"""The messages peers exchange once a connection is authenticated.

These are the core's own terms; :mod:`amucrdt.wire` turns them into bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyncFrame:
    """One Automerge sync message.

    Attributes:
        epoch: the link epoch it belongs to. Either side may start a new epoch
            with fresh sync states; frames of an older epoch are ignored, so
            a stalled exchange recovers the way a reconnect would.
        data: the encoded Automerge sync message.
    """

    epoch: int
    data: bytes


@dataclass(frozen=True)
class Heartbeat:
    """Ephemeral liveness news; never written to the document.

    Attributes:
        heads: the sender's current heads, so the receiver can tell whether
            the two replicas agree and which of its changes the sender holds.
        running: "attempt:job_id" of every job the sender is running; each
            heartbeat renews the lease on them.
        time: the sender's clock, for display only.
    """

    heads: tuple[bytes, ...]
    running: tuple[str, ...]
    time: float


@dataclass(frozen=True)
class Reset:
    """Start link epoch ``epoch``: both sides drop their sync state."""

    epoch: int


Frame = SyncFrame | Heartbeat | Reset
