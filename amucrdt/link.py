"""What a node knows about one connected peer: sync state, epoch, liveness.

A link lives as long as one authenticated connection. Its sync state is fresh
with every connection (and with every epoch), which is how the Automerge
sync protocol recovers from anything lost in flight.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from amucrdt._automerge import SyncState
from amucrdt.frames import Frame, Heartbeat, Reset


@dataclass
class Link:
    """One peer connection as the core sees it.

    Attributes:
        peer_id: the peer's node id, proven by the handshake.
        info: the peer's hello (version, schema, address).
        sync: Automerge sync state for this link and epoch.
        epoch: the link epoch; raised by whichever side resets the exchange.
        connected_at: when the connection was authenticated.
        last_heard: when the last frame of any kind arrived.
        last_sync: when the last sync frame arrived.
        heads: the newest heads the peer reported (sync or heartbeat).
        running: what the peer's last heartbeat said it runs.
        dirty: a sync message may be due; cleared when one is generated.
        caught_up: once true, this node has held all of the peer's reported
            heads at least once since the connection opened.
        diverged_since: since when this node has waited for the exchange to
            catch up: for the peer to report heads that contain ``awaiting``
            while this node holds everything the peer reported; None while
            nothing is awaited.
        awaiting: this node's heads when the wait began.
        last_heartbeat_sent: when we last queued a heartbeat for this peer.
    """

    peer_id: str
    info: dict[str, Any]
    connected_at: float
    sync: SyncState = field(default_factory=SyncState)
    epoch: int = 0
    last_heard: float = 0.0
    last_sync: float = 0.0
    heads: tuple[bytes, ...] | None = None
    running: tuple[str, ...] = ()
    dirty: bool = True
    caught_up: bool = False
    diverged_since: float | None = None
    awaiting: tuple[bytes, ...] | None = None
    last_heartbeat_sent: float = float("-inf")
    # Control frames waiting to be sent. Only the newest heartbeat matters, so
    # the queue holds at most one heartbeat and one reset: its size is bounded
    # whatever the peer's speed.
    _control: deque[Frame] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.last_heard = self.connected_at
        self.last_sync = self.connected_at

    def queue_heartbeat(self, beat: Heartbeat) -> None:
        """Queue ``beat`` in place of any heartbeat not yet sent."""
        self._control = deque(f for f in self._control if not isinstance(f, Heartbeat))
        self._control.append(beat)

    def reset(self, epoch: int, announce: bool) -> None:
        """Drop the sync state and enter ``epoch``; tell the peer if asked."""
        self.epoch = epoch
        self.sync = SyncState()
        self.dirty = True
        self.diverged_since = None
        self.awaiting = None
        self._control = deque(f for f in self._control if not isinstance(f, Reset))
        if announce:
            # The reset goes before anything else so the peer drops its state
            # before it reads our first message of the new epoch.
            self._control.appendleft(Reset(epoch))

    def take_control(self) -> list[Frame]:
        """Remove and return the queued control frames."""
        frames = list(self._control)
        self._control.clear()
        return frames

    def live(self, now: float, timeout: float) -> bool:
        """True while the peer was heard from within ``timeout`` seconds."""
        return now - self.last_heard <= timeout
