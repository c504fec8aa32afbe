"""Frames on the websocket, and the handshake that proves the cluster secret.

Every websocket message is binary. Its first byte says what follows:

- ``0x01`` a JSON object (orjson): hello, auth, heartbeat, reset, requests
  and replies of the CLI;
- ``0x02`` an Automerge sync message: a 4-byte big-endian link epoch, then
  the message bytes.

The handshake is mutual and happens before anything about the document is
sent. Each side sends a hello with a fresh 32-byte nonce. Then each sends an
HMAC-SHA256 under the cluster secret over a label for its side of the
connection, its role, its node id, its nonce, the other side's nonce and node
id: the dialer first; the listener only after it has checked the dialer's, so
it never hands a MAC to a stranger. Each checks the other's MAC in constant
time. Fresh nonces both ways stop replays; the side label stops a MAC from
being reflected back on a second connection.

Until the dialer's MAC checks out, the listener accepts messages of at most
:data:`MAX_HANDSHAKE_FRAME` bytes, so a stranger cannot make it buffer more.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed

from amucrdt.errors import AuthError, ProtocolError
from amucrdt.frames import Frame, Heartbeat, Reset, SyncFrame

JSON = 0x01
SYNC = 0x02

#: Largest message before authentication; a hello is a few hundred bytes.
MAX_HANDSHAKE_FRAME = 4096

#: Seconds a closing handshake may take before the TCP connection is cut. A
#: peer that stopped reading never completes one: without this bound a node
#: would wait on it forever, at shutdown too.
CLOSE_TIMEOUT = 5.0

#: Longest close reason a websocket close frame carries, in bytes.
MAX_CLOSE_REASON = 123

#: Roles a connecting side may take.
ROLES = ("peer", "client")

_NODE_ID = re.compile(r"[0-9a-f]{32}")
_HEX = re.compile(r"[0-9a-f]*")
_LABEL = b"amucrdt-auth-v1"


def encode_json(obj: dict[str, Any]) -> bytes:
    """A JSON frame."""
    return bytes([JSON]) + orjson.dumps(obj)


def decode_json(data: bytes, peer: str) -> dict[str, Any]:
    """The object of a JSON frame.

    Raises:
        ProtocolError: naming ``peer``, when ``data`` is not a JSON object frame.
    """
    if not data or data[0] != JSON:
        raise ProtocolError(f"{peer}: expected a JSON frame")
    try:
        obj = orjson.loads(data[1:])
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{peer}: malformed JSON frame: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{peer}: JSON frame is not an object")
    return obj


def encode_frame(frame: Frame) -> bytes:
    """The bytes of a peer frame."""
    if isinstance(frame, SyncFrame):
        return bytes([SYNC]) + struct.pack(">I", frame.epoch) + frame.data
    if isinstance(frame, Heartbeat):
        return encode_json(
            {
                "t": "hb",
                "heads": [h.hex() for h in frame.heads],
                "running": list(frame.running),
                "time": frame.time,
            }
        )
    return encode_json({"t": "reset", "epoch": frame.epoch})


def decode_frame(data: bytes, peer: str) -> Frame:
    """A peer frame from its bytes.

    Raises:
        ProtocolError: naming ``peer``, for anything malformed.
    """
    if not data:
        raise ProtocolError(f"{peer}: empty frame")
    if data[0] == SYNC:
        if len(data) < 5:
            raise ProtocolError(f"{peer}: truncated sync frame")
        (epoch,) = struct.unpack(">I", data[1:5])
        return SyncFrame(epoch, bytes(data[5:]))
    obj = decode_json(data, peer)
    kind = obj.get("t")
    if kind == "hb":
        heads = obj.get("heads")
        running = obj.get("running")
        when = obj.get("time")
        if (
            not isinstance(heads, list)
            or not all(isinstance(h, str) and _is_hash(h) for h in heads)
            or not isinstance(running, list)
            or not all(isinstance(r, str) for r in running)
            or not isinstance(when, int | float)
        ):
            raise ProtocolError(f"{peer}: malformed heartbeat")
        return Heartbeat(
            tuple(sorted(bytes.fromhex(h) for h in heads)),
            tuple(running),
            float(when),
        )
    if kind == "reset":
        epoch = obj.get("epoch")
        if not isinstance(epoch, int) or not 0 <= epoch < 2**32:
            raise ProtocolError(f"{peer}: malformed reset")
        return Reset(epoch)
    raise ProtocolError(f"{peer}: unknown frame type {kind!r}")


def _is_hash(text: str) -> bool:
    return len(text) == 64 and _HEX.fullmatch(text) is not None


@dataclass(frozen=True)
class Hello:
    """What one side says about itself before authentication.

    Attributes:
        node: its node id (a random id for CLI clients).
        role: "peer" for a node, "client" for the CLI.
        version: its amucrdt version.
        schema: the document schema version it reads.
        nonce: 32 fresh random bytes.
        address: the URL it can be dialled at ("" for clients).
    """

    node: str
    role: str
    version: str
    schema: int
    nonce: bytes
    address: str = ""

    @classmethod
    def new(
        cls, node: str, role: str, version: str, schema: int, address: str = ""
    ) -> Hello:
        """A hello with a fresh nonce."""
        return cls(node, role, version, schema, os.urandom(32), address)

    def to_json(self) -> dict[str, Any]:
        return {
            "t": "hello",
            "node": self.node,
            "role": self.role,
            "version": self.version,
            "schema": self.schema,
            "nonce": self.nonce.hex(),
            "address": self.address,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], peer: str) -> Hello:
        """Validate a hello.

        Raises:
            ProtocolError: naming ``peer`` and the bad field.
        """
        if obj.get("t") != "hello":
            raise ProtocolError(f"{peer}: expected hello, got {obj.get('t')!r}")
        node, role = obj.get("node"), obj.get("role")
        version, schema = obj.get("version"), obj.get("schema")
        nonce, address = obj.get("nonce"), obj.get("address", "")
        if not isinstance(node, str) or not _NODE_ID.fullmatch(node):
            raise ProtocolError(f"{peer}: hello has a malformed node id")
        if role not in ROLES:
            raise ProtocolError(f"{peer}: hello has unknown role {role!r}")
        if not isinstance(version, str) or len(version) > 64:
            raise ProtocolError(f"{peer}: hello has a malformed version")
        if not isinstance(schema, int):
            raise ProtocolError(f"{peer}: hello has a malformed schema version")
        if not isinstance(nonce, str) or len(nonce) != 64 or not _HEX.fullmatch(nonce):
            raise ProtocolError(f"{peer}: hello has a malformed nonce")
        if not isinstance(address, str) or len(address) > 512:
            raise ProtocolError(f"{peer}: hello has a malformed address")
        assert isinstance(role, str)
        return cls(node, role, version, schema, bytes.fromhex(nonce), address)


def proof(secret: bytes, side: str, mine: Hello, theirs: Hello) -> bytes:
    """The MAC by which ``side`` ("dialer" or "listener") proves the secret."""
    message = b"\0".join(
        [
            _LABEL,
            side.encode(),
            mine.role.encode(),
            mine.node.encode(),
            mine.nonce,
            theirs.nonce,
            theirs.node.encode(),
        ]
    )
    return hmac.new(secret, message, hashlib.sha256).digest()


def check_proof(
    secret: bytes, side: str, obj: dict[str, Any], theirs: Hello, mine: Hello, peer: str
) -> None:
    """Check the other side's auth frame.

    ``side`` is the other side's label. Raises AuthError naming ``peer``
    when the MAC is missing or wrong; never says which part was wrong.
    """
    if obj.get("t") != "auth" or not isinstance(obj.get("mac"), str):
        raise AuthError(f"{peer}: expected an auth frame")
    try:
        given = bytes.fromhex(obj["mac"])
    except ValueError:
        raise AuthError(f"{peer}: malformed auth frame") from None
    expected = proof(secret, side, theirs, mine)
    if not hmac.compare_digest(given, expected):
        raise AuthError(
            f"{peer}: failed authentication (does it use this cluster's secret?)"
        )


async def close_connection(ws: Any, code: int, reason: str) -> None:
    """Close the websocket ``ws`` with ``code`` and ``reason`` (cut to fit).

    Cuts the TCP connection when the other side does not finish the closing
    handshake within :data:`CLOSE_TIMEOUT`. Never raises for a connection
    that is already closed.
    """
    text = reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await ws.close(code, text)
    except (TimeoutError, ConnectionClosed, OSError):
        ws.transport.abort()
