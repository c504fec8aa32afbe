"""Multi-process tests of the wire: authentication, hostile input, schemas, TLS.

The hostile clients here speak raw websockets (or raw TCP) to real node
processes; the authenticated ones use the real handshake of
:mod:`amucrdt.wire`, so what they send after it reaches the node's peer code.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from amucrdt import SCHEMA_VERSION, __version__
from amucrdt._automerge import SyncState
from amucrdt.client import Client
from amucrdt.errors import AuthError, ClientError
from amucrdt.state import genesis
from amucrdt.testing import LocalCluster, LocalNode, TlsFiles, free_port, wait_for
from amucrdt.wire import Hello, check_proof, decode_json, encode_json, proof

FAST = [
    "--heartbeat",
    "0.2",
    "--peer-timeout",
    "3",
    "--startup-grace",
    "0.5",
    "--slots",
    "2",
]

#: The --max-frame of the node that takes the hostile input.
SMALL_FRAME = 64 * 1024


def run(coro: Awaitable[Any], timeout: float = 60) -> Any:
    """Run one coroutine to its end, within ``timeout`` seconds."""

    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def raw_connect(node: LocalNode) -> ClientConnection:
    return await connect(node.url, max_size=None, ping_interval=None, proxy=None)


async def handshake(
    ws: ClientConnection,
    secret: bytes,
    role: str = "peer",
    schema: int = SCHEMA_VERSION,
    version: str = __version__,
) -> tuple[Hello, Hello, dict[str, Any]]:
    """The real dialer's handshake; returns both hellos and the auth we sent."""
    mine = Hello.new(os.urandom(16).hex(), role, version, schema, "")
    await ws.send(encode_json(mine.to_json()))
    theirs = Hello.from_json(decode_json(await recv_bytes(ws), "node"), "node")
    auth = {"t": "auth", "mac": proof(secret, "dialer", mine, theirs).hex()}
    await ws.send(encode_json(auth))
    check_proof(
        secret,
        "listener",
        decode_json(await recv_bytes(ws), "node"),
        theirs,
        mine,
        "node",
    )
    return mine, theirs, auth


async def recv_bytes(ws: ClientConnection) -> bytes:
    message = await ws.recv()
    assert isinstance(message, bytes)
    return message


async def closed_by_node(ws: ClientConnection) -> tuple[int | None, str]:
    """Read until the node closes the connection; its close code and reason."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as exc:
        if exc.rcvd is None:
            return None, ""
        return exc.rcvd.code, exc.rcvd.reason


def append_jobs(names: list[str], out: Path) -> list[dict[str, object]]:
    return [{"name": name, "cmd": {"posix": f"echo {name} >> {out}"}} for name in names]


def assert_still_serving(cluster: LocalCluster, target: LocalNode, tag: str) -> None:
    """``target`` answers status, and a queue pushed to it runs to the end."""
    assert target.status()["node"]["accepting"] is True
    out = cluster.root / f"{tag}.out"
    queue = {"name": tag, "jobs": append_jobs(["x", "y"], out)}
    assert target.request("push_queue", queue=queue)["new"] is True
    cluster.wait_queue_done(tag, timeout=60)
    assert sorted(out.read_text().split()) == ["x", "y"]


@pytest.fixture
def closing(tmp_path: Path) -> Iterator[list[LocalCluster]]:
    made: list[LocalCluster] = []
    yield made
    for cluster in made:
        cluster.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two nodes; node0 takes the hostile input and has a small --max-frame."""
    root = tmp_path_factory.mktemp("guarded")
    cluster = LocalCluster(root, 2, topology="chain", extra=FAST)
    cluster.nodes[0].args += ["--max-frame", str(SMALL_FRAME)]
    try:
        cluster.start()
        cluster.wait_connected(timeout=60)
        yield cluster
    finally:
        cluster.close()


# Each attack opens its own connection to the node and returns how the node
# ended it: (close code, reason), or (None, "") when the TCP stream just ended.

Attack = Callable[[LocalNode], Awaitable[tuple[int | None, str]]]


async def garbage_bytes(node: LocalNode) -> tuple[int | None, str]:
    # Not even HTTP: the websocket opening handshake fails.
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(os.urandom(3000) + b"\r\n\r\n")
    await writer.drain()
    answer = await reader.read()  # the node answers (or not) and hangs up
    writer.close()
    return None, answer.decode("latin-1")[:40]


async def truncated_websocket_frame(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    # A masked binary frame header announcing 1000 bytes, then 10, then EOF.
    header = struct.pack("!BBH", 0x82, 0x80 | 126, 1000) + os.urandom(4)
    ws.transport.write(header + b"0123456789")
    ws.transport.write_eof()
    return await closed_by_node(ws)


async def truncated_hello(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    await ws.send(encode_json(Hello.new("0" * 32, "peer", "1", 1).to_json())[:30])
    return await closed_by_node(ws)


async def text_frame(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    await ws.send('{"t": "hello"}')
    return await closed_by_node(ws)


async def malformed_json(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    await ws.send(b"\x01{not json at all")
    return await closed_by_node(ws)


async def bad_hello(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    hello = Hello.new("0" * 32, "peer", "1", 1).to_json()
    hello["node"] = "../../etc/passwd"
    await ws.send(encode_json(hello))
    return await closed_by_node(ws)


async def invalid_mac(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    mine = Hello.new(os.urandom(16).hex(), "peer", __version__, SCHEMA_VERSION)
    await ws.send(encode_json(mine.to_json()))
    await ws.recv()
    await ws.send(encode_json({"t": "auth", "mac": os.urandom(32).hex()}))
    return await closed_by_node(ws)


async def replayed_mac(node: LocalNode) -> tuple[int | None, str]:
    # A real client's hello and auth, recorded, then played back on a new
    # connection: the node's fresh nonce makes the old MAC worthless.
    first = await raw_connect(node)
    mine, _theirs, auth = await handshake(first, node.secret, role="client")
    await first.close()
    second = await raw_connect(node)
    await second.send(encode_json(mine.to_json()))
    await second.recv()
    await second.send(encode_json(auth))
    return await closed_by_node(second)


async def oversized_before_auth(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    await ws.send(b"\x01" + b" " * (SMALL_FRAME // 2))
    return await closed_by_node(ws)


async def oversized_after_auth(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    await handshake(ws, node.secret)
    await ws.send(b"\x02" + bytes(4) + os.urandom(SMALL_FRAME + 1))
    return await closed_by_node(ws)


async def malformed_sync_frame(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    await handshake(ws, node.secret)
    await ws.send(b"\x02" + bytes(4) + b"\x42this is no automerge sync message")
    return await closed_by_node(ws)


async def truncated_sync_frame(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    await handshake(ws, node.secret)
    await ws.send(b"\x02\x00\x00")
    return await closed_by_node(ws)


async def malformed_heartbeat(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    await handshake(ws, node.secret)
    await ws.send(encode_json({"t": "hb", "heads": ["zz"], "running": 3, "time": 0}))
    return await closed_by_node(ws)


async def malformed_request(node: LocalNode) -> tuple[int | None, str]:
    ws = await raw_connect(node)
    await handshake(ws, node.secret, role="client")
    await ws.send(b"\x01[1, 2, 3]")
    return await closed_by_node(ws)


@pytest.mark.parametrize(
    ("attack", "expect"),
    [
        (garbage_bytes, (None, "")),
        (truncated_websocket_frame, (None, "")),
        (truncated_hello, (1008, "malformed JSON frame")),
        (text_frame, (1008, "text frame")),
        (malformed_json, (1008, "malformed JSON frame")),
        (bad_hello, (1008, "malformed node id")),
        (invalid_mac, (1008, "failed authentication")),
        (replayed_mac, (1008, "failed authentication")),
        (oversized_before_auth, (1009, "")),
        (oversized_after_auth, (1009, "")),
        (malformed_sync_frame, (1008, "bad sync message")),
        (truncated_sync_frame, (1008, "truncated sync frame")),
        (malformed_heartbeat, (1008, "malformed heartbeat")),
        (malformed_request, (1008, "not an object")),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_hostile_input_closes_only_that_connection(
    guarded: LocalCluster, attack: Attack, expect: tuple[int | None, str]
) -> None:
    node = guarded.nodes[0]
    code, reason = run(attack(node))
    assert code == expect[0], reason
    assert expect[1] in reason
    # The node goes on: it answers, still has its peer, and runs new work.
    peer_id = guarded.nodes[1].node_id
    wait_for(
        lambda: [p["node"] for p in node.status()["peers"] if p["up"]] == [peer_id],
        60,
        "the node's one real peer to be up",
    )
    assert_still_serving(guarded, node, f"after-{attack.__name__.replace('_', '-')}")
    if attack is oversized_after_auth:
        assert "every node needs a --max-frame larger than" in node.read_log()


def test_node_with_wrong_secret_is_refused_and_never_sees_queues(
    tmp_path: Path, closing: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 2, topology="chain", extra=FAST)
    closing.append(cluster)
    good = list(cluster.nodes)
    intruder = cluster.add_node(
        peers=[node.url for node in good], secret=os.urandom(32)
    )
    cluster.start()
    cluster.wait_connected(timeout=60, nodes=good)
    out = tmp_path / "out.txt"
    queue = {"name": "secret-work", "jobs": append_jobs(["a", "b"], out)}
    good[0].request("push_queue", queue=queue)

    # Each good node names the intruder's address in the line that refuses it.
    for node in good:
        wait_for(
            lambda node=node: any(
                "failed authentication" in line and intruder.url in line
                for line in node.read_log().splitlines()
            ),
            60,
            f"{node.name} to log the refused intruder",
        )
    cluster.wait_queue_done("secret-work", timeout=60, nodes=good)
    document = intruder.request("dump")["document"]
    assert document["jobs"] == {}
    assert document["queues"] == {}
    assert intruder.status()["peers"] == []
    for node in good:
        assert intruder.node_id not in {p["node"] for p in node.status()["peers"]}

    # A CLI client with the wrong secret is told so, and pushes nothing.
    wrong = tmp_path / "wrong-secret"
    wrong.write_text(os.urandom(32).hex() + "\n")
    wrong.chmod(0o600)
    bad_queue = tmp_path / "bad.toml"
    bad_queue.write_text('[[job]]\nname = "evil"\ncommand = "touch pwned"\n')
    result = subprocess.run(
        [sys.executable, "-m", "amucrdt", "push", "queue", str(bad_queue),
         "--to", good[0].url, "--secret-file", str(wrong)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2
    assert "closed the connection during authentication" in result.stderr
    assert "failed authentication" in result.stderr
    with pytest.raises(AuthError, match=good[0].url):
        run(Client(good[0].url, os.urandom(32)).__aenter__())
    assert set(good[0].request("dump")["document"]["queues"]) == {"secret-work"}


def test_peer_with_other_schema_is_refused_naming_both_versions(
    tmp_path: Path, closing: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 1, extra=FAST)
    closing.append(cluster)
    node = cluster.nodes[0]
    cluster.start()

    async def newer_peer() -> tuple[int | None, str]:
        ws = await raw_connect(node)
        # The node checks the MAC, then refuses before sending its own.
        with pytest.raises(ConnectionClosed) as refused:
            await handshake(ws, node.secret, schema=99, version="9.0.0")
        assert refused.value.rcvd is not None
        return refused.value.rcvd.code, refused.value.rcvd.reason

    code, reason = run(newer_peer())
    assert code == 1008
    assert "schema 99" in reason
    assert f"schema {SCHEMA_VERSION}" in reason
    wait_for(
        lambda: "uses document schema 99; this node reads schema 1" in node.read_log(),
        30,
        "the refusal in the node's log",
    )
    # The refused peer is no peer, but its newer version is reported.
    status = node.status()
    assert status["peers"] == []
    assert status["node"]["newest_version_seen"] == "9.0.0"
    assert status["node"]["version"] == __version__


def test_node_dialling_peer_with_other_schema_refuses_it(
    tmp_path: Path, closing: list[LocalCluster]
) -> None:
    secret = os.urandom(32)
    port = free_port()
    refusals: list[tuple[int | None, str]] = []

    async def listener(ws: ServerConnection) -> None:
        # The listener's half of the real handshake, claiming schema 99.
        mine = Hello.new(os.urandom(16).hex(), "peer", "9.0.0", 99, "")
        await ws.send(encode_json(mine.to_json()))
        message = await ws.recv()
        assert isinstance(message, bytes)
        theirs = Hello.from_json(decode_json(message, "node"), "node")
        mac = proof(secret, "listener", mine, theirs)
        await ws.send(encode_json({"t": "auth", "mac": mac.hex()}))
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            refusals.append(
                (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
            )

    cluster = LocalCluster(tmp_path, 1, extra=FAST, secret=secret)
    closing.append(cluster)
    node = cluster.nodes[0]
    node.args += ["--peer", f"ws://127.0.0.1:{port}"]

    done = threading.Event()

    async def serve_until_done() -> None:
        async with serve(listener, "127.0.0.1", port, ping_interval=None):
            while not done.is_set():
                await asyncio.sleep(0.05)

    server = threading.Thread(target=run, args=(serve_until_done(), 120))
    server.start()
    try:
        cluster.start()
        wait_for(lambda: refusals, 60, "the node to refuse the schema 99 peer")
    finally:
        done.set()
        server.join(30)
    code, reason = refusals[0]
    assert code == 1008
    assert "schema 99" in reason
    assert f"schema {SCHEMA_VERSION}" in reason
    wait_for(
        lambda: "uses document schema 99; this node reads schema 1" in node.read_log(),
        30,
        "the refusal in the node's log",
    )
    assert node.status()["node"]["newest_version_seen"] == "9.0.0"


def test_newer_peer_version_is_reported_and_never_installed(
    tmp_path: Path, closing: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 1, extra=FAST)
    closing.append(cluster)
    node = cluster.nodes[0]
    cluster.start()
    pid = node.process.pid  # type: ignore[union-attr]

    async def newer_peer_connected() -> dict[str, Any]:
        ws = await raw_connect(node)
        await handshake(ws, node.secret, version="99.1.0")
        async with Client(node.url, node.secret) as client:
            status: dict[str, Any] = await client.request("status")
        await ws.close()
        return status

    status = run(newer_peer_connected())
    assert status["node"]["newest_version_seen"] == "99.1.0"
    assert status["node"]["version"] == __version__
    # Still the same process running the same code: nothing was installed,
    # and the node's own host record still names its own version.
    assert node.process.pid == pid and node.running  # type: ignore[union-attr]
    hosts = node.request("dump")["document"]["hosts"]
    assert hosts[node.node_id]["version"] == __version__
    assert "a peer runs amucrdt 99.1.0, newer than this node's" in node.read_log()


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_peer_that_stops_reading_is_cut_off_and_others_are_served(
    tmp_path: Path, closing: list[LocalCluster]
) -> None:
    cluster = LocalCluster(tmp_path, 2, topology="chain", extra=FAST)
    closing.append(cluster)
    cluster.start()
    cluster.wait_connected(timeout=60)
    node, other = cluster.nodes
    pid = node.process.pid  # type: ignore[union-attr]
    before = rss_bytes(pid)

    # About 6 MB of job records: far more than the socket buffers hold.
    pad = os.urandom(30_000).hex()
    queue = {
        "name": "big",
        "jobs": [
            {"name": f"j{i}", "cmd": {"posix": "true"}, "env": {"PAD": f"{i}{pad}"}}
            for i in range(100)
        ],
    }
    stuck = threading.Event()
    release = threading.Event()

    async def stuck_peer() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", node.port))
        ws = await connect(
            node.url, sock=sock, max_size=None, ping_interval=None, proxy=None
        )
        await handshake(ws, node.secret)
        # Ask for everything the node has, then never read nor write again.
        message = genesis().generate_sync_message(SyncState())
        assert message is not None
        await ws.send(b"\x02" + bytes(4) + message)
        ws.transport.pause_reading()
        stuck.set()
        while not release.is_set():
            await asyncio.sleep(0.1)
        ws.transport.abort()

    peer = threading.Thread(target=run, args=(stuck_peer(), 180))
    peer.start()
    try:
        wait_for(stuck.is_set, 60, "the stuck peer to connect")
        assert node.request("push_queue", queue=queue)["new"] is True
        # The node answers and, once the silent peer times out, runs the
        # queue with the peer that does read.
        cluster.wait_queue_done("big", timeout=120)
        wait_for(
            lambda: len(node.status()["peers"]) == 1,
            60,
            "the stuck connection to be cut",
        )
        assert node.status()["peers"][0]["node"] == other.node_id
        grown = rss_bytes(pid) - before
        assert grown < 400 * 1024 * 1024, f"node grew by {grown} bytes"
    finally:
        release.set()
        peer.join(60)
    assert "closing peer" in node.read_log()
    # Nothing left hanging: the node stops at once when asked.
    assert node.stop(timeout=60) == 0


def make_certificate(directory: Path) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    cert, key = directory / "node.crt", directory / "node.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
         "-subj", "/CN=amucrdt test node", "-addext",
         "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    key.chmod(0o600)
    # Self-signed: the certificate is its own CA.
    return TlsFiles(cert=cert, key=key, ca=cert)


def test_nodes_over_tls_run_a_queue(
    tmp_path: Path, closing: list[LocalCluster]
) -> None:
    tls = make_certificate(tmp_path)
    cluster = LocalCluster(tmp_path / "tls", 2, topology="chain", extra=FAST, tls=tls)
    closing.append(cluster)
    cluster.start()
    cluster.wait_connected(timeout=60)
    first, second = cluster.nodes
    assert first.url.startswith("wss://")
    assert second.status()["node"]["address"] == second.url
    assert {p["address"] for p in first.status()["peers"]} == {second.url}

    out = tmp_path / "out.txt"
    first.request(
        "push_queue",
        queue={"name": "tls", "jobs": append_jobs(["a", "b", "c", "d"], out)},
    )
    cluster.wait_queue_done("tls", timeout=60)
    assert sorted(out.read_text().split()) == ["a", "b", "c", "d"]

    # The same port does not speak plain websockets, and a client that does
    # not trust the certificate cannot connect.
    with pytest.raises(ClientError):
        run(Client(f"ws://127.0.0.1:{first.port}", first.secret).__aenter__())
    with pytest.raises(ClientError, match="certificate verify failed"):
        run(Client(first.url, first.secret).__aenter__())
