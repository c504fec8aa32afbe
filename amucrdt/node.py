"""The asyncio node: moves bytes, runs processes, and lets the core decide.

The node owns the I/O around one :class:`~amucrdt.core.NodeCore`: the
websocket server and the dialer, one sender task per peer that pulls frames
from the core when the socket can take them, the job runner, the document
store on disk, and the timer. Everything the node does with the document is
an event handed to the core and the actions the core returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from amucrdt import SCHEMA_VERSION, __version__
from amucrdt.control import Control
from amucrdt.core import (
    Action,
    Close,
    Config,
    KillJob,
    NodeCore,
    Persist,
    Rebuilt,
    StartJob,
    Wake,
)
from amucrdt.datadir import DataDir
from amucrdt.errors import AmucrdtError, AuthError, ProtocolError, SchemaError
from amucrdt.leftovers import stop_leftovers
from amucrdt.runner import Runner, RunOutcome, RunSpec, local_os
from amucrdt.state import check_schema, genesis
from amucrdt.storage import DocStore
from amucrdt.wire import (
    MAX_HANDSHAKE_FRAME,
    Hello,
    check_proof,
    close_connection,
    decode_frame,
    decode_json,
    encode_frame,
    encode_json,
    proof,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 7077
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"

#: Largest websocket message a node accepts from an authenticated peer. A sync
#: message carrying a whole large document must fit; anything bigger closes
#: that connection only.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024

#: Seconds a connection has to complete the handshake.
HANDSHAKE_TIMEOUT = 10.0

#: Compact the log into a snapshot past either bound.
COMPACT_LOG_BYTES = 16 * 1024 * 1024
COMPACT_LOG_RECORDS = 20_000

Connection = Any  # a websockets client or server connection


@dataclass
class NodeOptions:
    """Everything ``amucrdt node`` can be told on its command line."""

    data_dir: Path
    listen: str = DEFAULT_LISTEN
    advertise: str | None = None
    peers: list[str] = field(default_factory=list)
    secret: bytes | None = None
    slots: int = os.cpu_count() or 1
    heartbeat_interval: float = 1.0
    peer_timeout: float = 5.0
    lease: float = 30.0
    startup_grace: float = 3.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    max_frame: int = DEFAULT_MAX_FRAME


def parse_listen(text: str) -> tuple[str, int]:
    """Split "HOST:PORT" ("[v6]:PORT" for IPv6).

    Raises:
        AmucrdtError: when the text is not a host and a port.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise AmucrdtError(
            f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}"
        )
    return host.strip("[]"), int(port)


@dataclass
class _Session:
    """One authenticated connection to a peer."""

    ws: Connection
    peer_id: str
    dialer: str  # node id of the side that dialled
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sender: asyncio.Task[None] | None = None
    # Set once the node has begun closing this connection.
    closing: bool = False


class Node:
    """A running node; :meth:`run` serves until :meth:`stop` is called."""

    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        self.datadir = DataDir.init(options.data_dir)
        self.datadir.lock()
        self.node_id = self.datadir.node_id
        # Before the document marks their attempts interrupted (which lets
        # them run again), so that no job runs twice at once.
        stop_leftovers(self.node_id)
        self.secret = options.secret if options.secret else self.datadir.secret()
        host, port = parse_listen(options.listen)
        self.host, self.port = host, port
        scheme = "wss" if options.tls_cert else "ws"
        self.address = options.advertise or f"{scheme}://{_url_host(host)}:{port}"
        self.store = DocStore(self.datadir.path)
        self.runner = Runner()
        self.sessions: dict[str, _Session] = {}
        self.control = Control(self)
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._backoff: dict[str, tuple[float, float]] = {}  # url -> (delay, next)
        self._self_urls: set[str] = {self.address}
        self._url_peer: dict[str, str] = {}
        # Addresses whose last dial failed to connect; the first failure is
        # logged as a warning, the rest quietly.
        self._unreachable: set[str] = set()
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._stopped_jobs: set[str] = set()
        self._server: Server | None = None
        # Fire-and-forget work (closing a link, waking waiters), kept here so
        # that no task is collected before it ends.
        self._tasks: set[asyncio.Task[None]] = set()
        # Incremental saves not yet on disk. They are written with one fsync
        # for every batch of events (group commit) and always before anything
        # that depends on them leaves the node: a frame, a reply, a job start.
        self._unsaved: list[bytes] = []
        # Why the last write to the store failed; None while writes succeed.
        self.storage_error: str | None = None
        # Set when the timer or the dialer died of an unexpected error.
        self._crashed: str | None = None
        self.core = self._load_core()
        # Waiters for the next change of the core's heads (wait, status --watch).
        self.changed = asyncio.Condition()

    # Start-up ------------------------------------------------------------------

    def _load_core(self) -> NodeCore:
        doc, _report = self.store.load()
        where = str(self.store.snapshot_path)
        if doc is None:
            doc = genesis()
            self.store.compact(doc.save())
            log.info("node %s: new document in %s", self.node_id, self.datadir.path)
        else:
            # The store has already logged each damaged record it dropped.
            check_schema(doc, where)
        # A fresh actor per process: if the last run's newest changes were
        # lost with a torn log, reusing its actor would write a second,
        # different change under the same sequence number.
        doc.set_actor(os.urandom(16))
        config = Config(
            node_id=self.node_id,
            address=self.address,
            slots=self.options.slots,
            os_name=local_os(),
            heartbeat_interval=self.options.heartbeat_interval,
            peer_timeout=self.options.peer_timeout,
            lease=self.options.lease,
            startup_grace=self.options.startup_grace,
            resync_after=max(3.0, 3 * self.options.heartbeat_interval),
        )
        return NodeCore(config, doc, time.time())

    def _server_ssl(self) -> ssl.SSLContext | None:
        if not self.options.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.options.tls_cert, self.options.tls_key)
        return context

    def _client_ssl(self, url: str) -> ssl.SSLContext | None:
        if not url.startswith("wss://"):
            return None
        ca = self.options.tls_ca
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        return context

    async def run(self, ready: Callable[[Node], Awaitable[None]] | None = None) -> None:
        """Serve until stopped; then shut down cleanly.

        Raises:
            AmucrdtError: when the port cannot be opened.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        try:
            self._server = await serve(
                self._accept,
                self.host,
                self.port,
                # Raised to --max-frame once the other side has authenticated:
                # a stranger cannot make the node buffer more than a hello.
                max_size=MAX_HANDSHAKE_FRAME,
                ssl=self._server_ssl(),
                process_request=None,
                ping_interval=None,
            )
        except OSError as exc:
            raise AmucrdtError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        if self.options.advertise is None and self.host in ("0.0.0.0", "::"):
            log.warning(
                "node %s: listening on %s without --advertise: peers learn the "
                "address %s, which they cannot dial; give --advertise "
                "ws://IP:PORT with this machine's address",
                self.node_id,
                self.options.listen,
                self.address,
            )
        log.info(
            "node %s listening on %s (data %s, %d slots)",
            self.node_id,
            self.address,
            self.datadir.path,
            self.options.slots,
        )
        self._do(self.core.startup(time.time()))
        if ready is not None:
            await ready(self)
        ticker = asyncio.create_task(self._ticker(), name="timer")
        dialer = asyncio.create_task(self._dialer(), name="dialer")
        for task in (ticker, dialer):
            task.add_done_callback(self._loop_ended)
        await self._stopping.wait()
        await self._shutdown(ticker, dialer)
        if self._crashed is not None:
            raise AmucrdtError(
                f"node {self.node_id} stopped after an internal error in its "
                f"{self._crashed}; see the log above"
            )

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """Stop the node when its timer or dialer dies of a bug.

        Without its timer a node sends no heartbeats and takes over no lease,
        while still answering requests: better to stop, say why, and let the
        service manager restart it.
        """
        if task.cancelled() or task.exception() is None:
            return
        log.critical(
            "node %s: %s failed; stopping",
            self.node_id,
            task.get_name(),
            exc_info=task.exception(),
        )
        self._crashed = f"{task.get_name()}: {task.exception()!r}"
        self.stop()

    def stop(self) -> None:
        """Ask the node to shut down (signal handlers call this)."""
        if not self._stopping.is_set():
            log.info("node %s: stopping", self.node_id)
            self._stopping.set()

    async def _shutdown(self, *tasks: asyncio.Task[None]) -> None:
        for task in tasks:
            task.cancel()
        # A task that failed was reported by _loop_ended already.
        await asyncio.gather(*tasks, return_exceptions=True)
        self._stopped_jobs = set(self._jobs)
        self._do(self.core.stop(time.time()))
        if self._jobs:
            await self.runner.kill_all("node stopping")
            await asyncio.gather(*self._jobs.values(), return_exceptions=True)
        # Give connected peers a moment to take our last changes (interrupted
        # jobs above all), so they can rerun them without waiting for a lease.
        await self._flush_peers(deadline=time.monotonic() + 2.0)
        for task in self._dialing.values():
            task.cancel()
        await asyncio.gather(
            *(
                close_connection(session.ws, 1001, "node stopping")
                for session in list(self.sessions.values())
            )
        )
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.store.compact(self.core.doc.save())
        self._unsaved.clear()
        self.store.close()
        self.datadir.unlock()
        # The heads let an operator check that a restart loads this state.
        heads = " ".join(h.hex() for h in self.core.doc.heads())
        log.info("node %s: stopped; document saved with heads %s", self.node_id, heads)

    async def _flush_peers(self, deadline: float) -> None:
        while self.sessions and time.monotonic() < deadline:
            if all(self.core.in_sync(peer) for peer in self.sessions):
                return
            for session in self.sessions.values():
                session.wake.set()
            await asyncio.sleep(0.05)

    # Actions -------------------------------------------------------------------

    def _do(self, actions: list[Action]) -> None:
        """Carry out the core's actions, in order."""
        for action in actions:
            if isinstance(action, Persist):
                if not self._unsaved:
                    asyncio.get_running_loop().call_soon(self.flush)
                self._unsaved.append(action.data)
            elif isinstance(action, Wake):
                session = self.sessions.get(action.peer_id)
                if session is not None:
                    session.wake.set()
            elif isinstance(action, StartJob):
                # The start record must be on disk before the command runs,
                # so a restarted node knows what it may have left running.
                self.flush()
                self._start(action)
            elif isinstance(action, KillJob):
                pass  # _shutdown stops every job through the runner
            elif isinstance(action, Close):
                session = self.sessions.get(action.peer_id)
                if session is not None and not session.closing:
                    session.closing = True
                    log.warning(
                        "node %s: closing peer %s: %s",
                        self.node_id,
                        action.peer_id,
                        action.reason,
                    )
                    self._background(close_connection(session.ws, 1008, action.reason))
            elif isinstance(action, Rebuilt):
                self._unsaved.clear()
                self.store.compact(action.snapshot)

    def flush(self) -> None:
        """Write every pending change to the store, with one fsync."""
        if not self._unsaved:
            return
        data = b"".join(self._unsaved)
        # Kept until the append succeeds, so a failed write (a full disk) is
        # retried by the next flush instead of losing the changes. Meanwhile
        # the node takes no work: it could not record what it starts.
        try:
            self.store.append(data)
        except AmucrdtError as exc:
            if self.storage_error is None:
                log.error(
                    "node %s: cannot write to %s (%s); taking no work until it can",
                    self.node_id,
                    self.datadir.path,
                    exc,
                )
            self.storage_error = str(exc)
            self.core.accepting = False
            raise
        self._unsaved.clear()
        if self.storage_error is not None:
            log.warning("node %s: data directory writable again", self.node_id)
            self.storage_error = None
            self.core.accepting = not self._stopping.is_set()
        self._maybe_compact()
        self._background(self._notify())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task the node keeps until it ends."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def _maybe_compact(self) -> None:
        if (
            self.store.log_bytes > COMPACT_LOG_BYTES
            or self.store.log_records > COMPACT_LOG_RECORDS
        ):
            self.store.compact(self.core.doc.save())

    def _start(self, action: StartJob) -> None:
        spec = action.spec
        queue, _, name = action.job_id.partition("/")
        log_path = (
            self.datadir.logs_dir / queue / f"{_log_name(name)}.{action.attempt}.log"
        )
        run = RunSpec(
            job_id=action.job_id,
            queue=queue,
            name=name,
            attempt=action.attempt,
            node_id=self.node_id,
            command=action.command,
            cwd=spec.cwd,
            env=spec.env,
            timeout=spec.timeout,
            log_path=log_path,
        )
        self._jobs[action.job_id] = asyncio.create_task(self._run_job(run))

    async def _run_job(self, run: RunSpec) -> None:
        started = time.time()
        try:
            outcome = await self.runner.run(run)
        except OSError as exc:
            # The job could not even be set up (its log file cannot be made,
            # the disk is full): record it failed rather than leave it running.
            log.error("node %s: job %s cannot run: %s", self.node_id, run.job_id, exc)
            outcome = RunOutcome(
                exit_code=None,
                signal=None,
                timed_out=False,
                started=started,
                ended=time.time(),
                tail="",
                error=f"cannot run the job on this node: {exc}",
            )
        finally:
            self._jobs.pop(run.job_id, None)
        record: dict[str, Any] = {
            "ok": outcome.ok,
            "exit_code": outcome.exit_code,
            "signal": outcome.signal,
            "timed_out": outcome.timed_out,
            "started": outcome.started,
            "ended": outcome.ended,
            "tail": outcome.tail,
            "error": outcome.error,
            "log": str(run.log_path),
        }
        if run.job_id in self._stopped_jobs:
            record["interrupted"] = True
        self._do(self.core.finished(run.job_id, run.attempt, record, time.time()))

    # Timer and dialer ------------------------------------------------------------

    async def _ticker(self) -> None:
        interval = min(self.options.heartbeat_interval / 2, 0.5)
        while True:
            await asyncio.sleep(interval)
            try:
                self._do(self.core.tick(time.time()))
                self._do(self.core.recover(time.time()))
                if self.storage_error is not None:
                    self.flush()
            except AmucrdtError as exc:
                log.error("node %s: timer: %s", self.node_id, exc)
            if self.core.failed_reason is not None:
                await self._reload_from_disk()

    async def _reload_from_disk(self) -> None:
        """Last resort after a fault the core could not rebuild from memory."""
        reason = self.core.failed_reason
        try:
            doc, _report = self.store.load()
            if doc is None:
                raise AmucrdtError("no document on disk")
            doc.set_actor(os.urandom(16))
            self._do(self.core.replace_document(doc, time.time()))
            log.error(
                "node %s: document reloaded from %s after: %s",
                self.node_id,
                self.datadir.path,
                reason,
            )
        except AmucrdtError as exc:
            log.critical(
                "node %s: cannot recover (%s; reload failed: %s); the node takes "
                "no more work and leaves %s untouched",
                self.node_id,
                reason,
                exc,
                self.datadir.path,
            )
            self.stop()

    def _targets(self) -> set[str]:
        urls = set(self.options.peers)
        urls |= set(self.core.cluster.addresses)
        urls |= {
            str(host.get("addr"))
            for host in self.core.cluster.hosts.values()
            if host.get("addr")
        }
        connected = set(self.sessions)
        return {
            url
            for url in urls
            if url not in self._self_urls and self._url_peer.get(url) not in connected
        }

    async def _dialer(self) -> None:
        while True:
            now = time.monotonic()
            for url in self._targets():
                if url in self._dialing:
                    continue
                _, next_try = self._backoff.get(url, (0.0, 0.0))
                if now < next_try:
                    continue
                self._dialing[url] = asyncio.create_task(self._dial(url))
            await asyncio.sleep(0.25)

    def _failed_dial(self, url: str) -> None:
        delay, _ = self._backoff.get(url, (0.0, 0.0))
        delay = min(max(delay * 2, 0.5), 30.0)
        # Jitter keeps a cluster that lost a node from redialling in lockstep.
        self._backoff[url] = (
            delay,
            time.monotonic() + delay * random.uniform(0.5, 1.5),
        )

    async def _dial(self, url: str) -> None:
        try:
            async with connect(
                url,
                max_size=MAX_HANDSHAKE_FRAME,
                ssl=self._client_ssl(url),
                open_timeout=HANDSHAKE_TIMEOUT,
                ping_interval=None,
                proxy=None,
            ) as ws:
                self._unreachable.discard(url)
                theirs = await self._handshake(ws, "dialer", url)
                self._url_peer[url] = theirs.node
                if theirs.node == self.node_id:
                    self._self_urls.add(url)
                    return
                self._backoff.pop(url, None)
                await self._peer_session(ws, theirs, dialer=self.node_id, where=url)
        except (TimeoutError, OSError, InvalidHandshake, InvalidURI) as exc:
            # Once per address until it answers again: a node that is gone
            # for good would otherwise fill the log, once per backoff.
            level = logging.DEBUG if url in self._unreachable else logging.WARNING
            self._unreachable.add(url)
            log.log(
                level,
                "node %s: cannot reach %s: %s (retrying with backoff)",
                self.node_id,
                url,
                _reason(exc),
            )
        except (ProtocolError, AuthError, SchemaError) as exc:
            log.warning("node %s: %s", self.node_id, exc)
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == 1008:
                # The other side refused us; its reason is worth a warning.
                log.warning(
                    "node %s: %s refused the connection: %s",
                    self.node_id,
                    url,
                    exc.rcvd.reason,
                )
            else:
                log.debug(
                    "node %s: connection to %s closed: %s", self.node_id, url, exc
                )
        finally:
            self._dialing.pop(url, None)
            if not self._stopping.is_set():
                self._failed_dial(url)

    # Connections -----------------------------------------------------------------

    async def _accept(self, ws: ServerConnection) -> None:
        where = _remote(ws)
        try:
            theirs = await self._handshake(ws, "listener", where)
            if theirs.role == "client":
                await self.control.serve(ws, theirs, where)
                return
            if theirs.node == self.node_id:
                return
            await self._peer_session(ws, theirs, dialer=theirs.node, where=where)
        except (ProtocolError, AuthError, SchemaError) as exc:
            log.warning("node %s: %s", self.node_id, exc)
        except (TimeoutError, ConnectionClosed):
            pass

    async def _handshake(self, ws: Connection, side: str, where: str) -> Hello:
        """Authenticate both ways; returns the other side's hello.

        On failure the connection is closed with the reason (less ``where``)
        before the error is raised.

        Raises:
            ProtocolError, AuthError, SchemaError: naming ``where``.
        """
        described = [where]
        try:
            return await self._authenticate(ws, side, described)
        except (ProtocolError, AuthError, SchemaError) as exc:
            await close_connection(ws, 1008, _detail(exc, described[-1]))
            raise

    async def _authenticate(
        self, ws: Connection, side: str, described: list[str]
    ) -> Hello:
        where = described[-1]
        mine = Hello.new(
            self.node_id, "peer", __version__, SCHEMA_VERSION, self.address
        )
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            await ws.send(encode_json(mine.to_json()))
            theirs = Hello.from_json(
                decode_json(await _recv_small(ws, where), where), where
            )
            mac = encode_json(
                {"t": "auth", "mac": proof(self.secret, side, mine, theirs).hex()}
            )
            if side == "dialer":
                await ws.send(mac)
                # The listener may follow its auth with large frames at once,
                # read before this coroutine runs again: accept them from now.
                # Only the listener at an address this node dials could send
                # them before proving the secret.
                _set_max_size(ws, self.options.max_frame)
                auth = decode_json(await _recv_small(ws, where), where)
                check_proof(self.secret, "listener", auth, theirs, mine, where)
                self._check_schema(theirs, where)
            else:
                # From here on, messages name what the other side says it is,
                # so a refused node is found by its address, not only by the
                # port its connection came from.
                where = _describe(where, theirs)
                described.append(where)
                # The listener proves nothing to a stranger: it checks the
                # dialer's MAC first, and only then accepts large frames and
                # sends its own.
                auth = decode_json(await _recv_small(ws, where), where)
                check_proof(self.secret, "dialer", auth, theirs, mine, where)
                self._check_schema(theirs, where)
                _set_max_size(ws, self.options.max_frame)
                await ws.send(mac)
        return theirs

    def _check_schema(self, theirs: Hello, where: str) -> None:
        """Refuse an authenticated peer that reads another document schema.

        Raises:
            SchemaError: naming both versions.
        """
        if theirs.role == "peer" and theirs.schema != SCHEMA_VERSION:
            # Authenticated: the version it claims is the cluster's word.
            self.core.note_version(theirs.version)
            raise SchemaError(
                f"{where}: peer {theirs.node} uses document schema {theirs.schema}; "
                f"this node reads schema {SCHEMA_VERSION}"
            )

    async def _peer_session(
        self, ws: Connection, theirs: Hello, dialer: str, where: str
    ) -> None:
        peer_id = theirs.node
        existing = self.sessions.get(peer_id)
        if existing is not None:
            # Both sides dialled at once. Both keep the connection dialled by
            # the smaller node id, so they agree without another message.
            keeper = min(self.node_id, peer_id)
            if existing.dialer == keeper or dialer != keeper:
                await close_connection(ws, 1000, "duplicate connection")
                return
            self._drop(existing)
            await close_connection(existing.ws, 1000, "duplicate connection")
        session = _Session(ws, peer_id, dialer)
        self.sessions[peer_id] = session
        info = {
            "version": theirs.version,
            "schema": theirs.schema,
            "address": theirs.address,
        }
        if theirs.address:
            self._url_peer[theirs.address] = peer_id
        log.info("node %s: peer %s connected (%s)", self.node_id, peer_id, where)
        self._do(self.core.connected(peer_id, info, time.time()))
        session.sender = asyncio.create_task(self._send_loop(session))
        try:
            async for message in ws:
                if self.sessions.get(peer_id) is not session:
                    break
                if isinstance(message, str):
                    raise ProtocolError(f"peer {peer_id} ({where}): text frame")
                frame = decode_frame(message, f"peer {peer_id} ({where})")
                self._do(self.core.receive(peer_id, frame, time.time()))
                self._do(self.core.recover(time.time()))
        except ProtocolError as exc:
            log.warning("node %s: closing: %s", self.node_id, exc)
            session.closing = True
            await close_connection(ws, 1008, _detail(exc, f"peer {peer_id} ({where})"))
        except AmucrdtError as exc:
            # The core refused the frame; the node goes on, without this link.
            log.error(
                "node %s: closing peer %s (%s): %s", self.node_id, peer_id, where, exc
            )
            session.closing = True
            await close_connection(ws, 1011, "internal error")
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:
                # Nodes with different --max-frame would otherwise redial and
                # fail on the same message forever without a word.
                log.warning(
                    "node %s: closed peer %s (%s): %s; every node needs a "
                    "--max-frame larger than its largest queue",
                    self.node_id,
                    peer_id,
                    where,
                    exc.sent.reason or "message too big",
                )
        finally:
            if self.sessions.get(peer_id) is session:
                self._drop(session)

    def _drop(self, session: _Session) -> None:
        del self.sessions[session.peer_id]
        if session.sender is not None:
            session.sender.cancel()
        self._do(self.core.disconnected(session.peer_id, time.time()))

    async def _send_loop(self, session: _Session) -> None:
        try:
            while True:
                await session.wake.wait()
                session.wake.clear()
                frames = self.core.poll(session.peer_id)
                self._do(self.core.recover(time.time()))
                # What the frames carry must be durable before it is sent.
                self.flush()
                for frame in frames:
                    # Awaiting each send is the backpressure: while a slow peer
                    # drains, no new message is generated for it.
                    await session.ws.send(encode_frame(frame))
        except ConnectionClosed:
            pass
        except Exception:
            # A bug here must not leave the link up with no sender: the peer
            # would wait on it until it timed out.
            log.exception(
                "node %s: sending to peer %s failed", self.node_id, session.peer_id
            )
            session.closing = True
            await close_connection(session.ws, 1011, "internal error")


async def _recv_small(ws: Connection, where: str) -> bytes:
    message = await ws.recv()
    if isinstance(message, str):
        raise ProtocolError(f"{where}: text frame during handshake")
    if len(message) > MAX_HANDSHAKE_FRAME:
        raise ProtocolError(
            f"{where}: oversized handshake frame ({len(message)} bytes)"
        )
    return bytes(message)


def _detail(exc: Exception, where: str) -> str:
    """An error's message without its leading "where: ", for a close reason."""
    text = str(exc)
    prefix = f"{where}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _describe(where: str, hello: Hello) -> str:
    """``where`` with what the other side's hello says it is."""
    if hello.role == "client":
        return f"{where} (client)"
    if hello.address:
        return f"{where} (says node {hello.node} at {hello.address})"
    return f"{where} (says node {hello.node})"


def _set_max_size(ws: Connection, size: int) -> None:
    """Raise the largest message ``ws`` accepts, once it is authenticated."""
    protocol = ws.protocol
    if hasattr(protocol, "max_message_size"):
        protocol.max_message_size = size
    else:  # websockets before 15
        protocol.max_size = size


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _remote(ws: Connection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _log_name(name: str) -> str:
    """A file name for a job's log: readable, and distinct for distinct names.

    Characters unsafe in a file name are replaced, so a short hash of the
    real name keeps "a/b" and "a_b" apart.
    """
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    return f"{_safe_name(name)}-{digest}"


def _safe_name(name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    return safe[:100] or "_"
