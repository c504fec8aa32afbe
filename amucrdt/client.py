"""The CLI's side of a control connection to a node."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from amucrdt import SCHEMA_VERSION, __version__
from amucrdt.errors import AuthError, ClientError, ProtocolError
from amucrdt.wire import Hello, check_proof, decode_json, encode_json, proof

#: Largest reply the CLI accepts (a dump of a big cluster).
MAX_REPLY = 1024 * 1024 * 1024

CONNECT_TIMEOUT = 10.0

#: Longest wait for the answer to one request (a dump of a big cluster).
REQUEST_TIMEOUT = 300.0


class Client:
    """An authenticated control connection; use as an async context manager.

    Raises ClientError (unreachable, closed) or AuthError (wrong secret) on
    entry, and ClientError for a request the node refused.
    """

    def __init__(self, url: str, secret: bytes, tls_ca: Path | None = None) -> None:
        self.url = url
        self.secret = secret
        self.tls_ca = tls_ca
        self._ws: ClientConnection | None = None
        self._next_id = 0

    async def __aenter__(self) -> Self:
        context = None
        if self.url.startswith("wss://"):
            context = ssl.create_default_context(
                cafile=str(self.tls_ca) if self.tls_ca else None
            )
        try:
            self._ws = await connect(
                self.url,
                max_size=MAX_REPLY,
                ssl=context,
                open_timeout=CONNECT_TIMEOUT,
                ping_interval=None,
                proxy=None,
            )
        except (TimeoutError, OSError, InvalidHandshake, InvalidURI) as exc:
            raise ClientError(
                f"cannot reach node at {self.url}: {_reason(exc)}; is `amucrdt node` "
                "running there?"
            ) from None
        try:
            await self._handshake()
        except TimeoutError:
            await self._ws.close()
            raise ClientError(
                f"node at {self.url} did not complete authentication within "
                f"{CONNECT_TIMEOUT:g}s; is it overloaded, or not an amucrdt node?"
            ) from None
        except ConnectionClosed as exc:
            await self._ws.close()
            raise AuthError(
                f"node at {self.url} closed the connection during authentication "
                f"({exc.rcvd.reason if exc.rcvd else 'no reason'}); check the "
                "cluster secret (--secret-file)"
            ) from None
        except BaseException:
            await self._ws.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def _handshake(self) -> None:
        assert self._ws is not None
        mine = Hello.new(os.urandom(16).hex(), "client", __version__, SCHEMA_VERSION)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await self._ws.send(encode_json(mine.to_json()))
            theirs = Hello.from_json(
                decode_json(_bytes(await self._ws.recv()), self.url), self.url
            )
            mac = proof(self.secret, "dialer", mine, theirs)
            await self._ws.send(encode_json({"t": "auth", "mac": mac.hex()}))
            reply = await self._ws.recv()
        try:
            check_proof(
                self.secret, "listener", decode_json(_bytes(reply), self.url),
                theirs, mine, self.url,
            )  # fmt: skip
        except AuthError:
            raise AuthError(
                f"node at {self.url} could not prove it holds the cluster secret; "
                "check --secret-file"
            ) from None

    async def request(self, op: str, **fields: Any) -> Any:
        """Send one request; returns its result.

        Raises:
            ClientError: when the node refuses it or the connection drops.
        """
        assert self._ws is not None
        self._next_id += 1
        rid = self._next_id
        try:
            request = {"t": "req", "id": rid, "op": op, **fields}
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self._ws.send(encode_json(request))
                reply = decode_json(_bytes(await self._ws.recv()), self.url)
        except TimeoutError:
            raise ClientError(
                f"node at {self.url} did not answer {op} within {REQUEST_TIMEOUT:g}s"
            ) from None
        except ConnectionClosed as exc:
            reason = (exc.rcvd.reason if exc.rcvd else "") or "no reason given"
            raise ClientError(
                f"node at {self.url} closed the connection: {reason}"
            ) from None
        except ProtocolError as exc:
            raise ClientError(str(exc)) from None
        if reply.get("id") != rid:
            raise ClientError(f"node at {self.url} answered another request")
        if not reply.get("ok"):
            raise ClientError(str(reply.get("error", "request failed")))
        return reply.get("result")


def _bytes(message: str | bytes) -> bytes:
    if isinstance(message, str):
        raise ProtocolError("text frame from node")
    return message


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
