"""The floor under any claim protocol: a websocket round trip on this machine.

``python bench/ws_echo.py`` starts an echo server in a subprocess (the
websockets library, 127.0.0.1, a port the kernel picks), sends it small binary
messages one at a time over one connection, and prints the round-trip
quantiles. ``--serve`` is the server side; it prints its port and echoes until
its stdin closes or it is terminated.

A claim cannot settle faster than one such round trip: the claimant's change
has to reach each peer and the peer's heads have to come back.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

#: Bytes per message: about the size of a sync message that carries one claim.
MESSAGE_BYTES = 200


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def _serve() -> None:
    async with serve(_echo, "127.0.0.1", 0, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(port, flush=True)
        loop = asyncio.get_running_loop()
        # Serve until the parent closes our stdin (or kills us).
        await loop.run_in_executor(None, sys.stdin.read)


async def _round_trips(port: int, count: int) -> list[float]:
    payload = bytes(MESSAGE_BYTES)
    times = []
    async with connect(
        f"ws://127.0.0.1:{port}", ping_interval=None, proxy=None, open_timeout=10
    ) as ws:
        for _ in range(50):  # warm up both ends
            await ws.send(payload)
            await ws.recv()
        for _ in range(count):
            start = time.perf_counter()
            await ws.send(payload)
            await ws.recv()
            times.append(time.perf_counter() - start)
    return times


def measure(count: int = 2000, timeout: float = 60.0) -> list[float]:
    """``count`` round trips to an echo server in another process, in seconds."""
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"echo server did not start (said {line!r})")

        async def go() -> list[float]:
            async with asyncio.timeout(timeout):
                return await _round_trips(int(line), count)

        return asyncio.run(go())
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="be the echo server")
    parser.add_argument("--count", type=int, default=2000, help="round trips")
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve())
        return 0
    from benchlib import quantiles

    figures: dict[str, Any] = quantiles(measure(args.count))
    print(
        f"websocket round trip ({MESSAGE_BYTES} B, {figures['count']} trips): "
        f"p50 {figures['p50'] * 1e6:.0f} us, p99 {figures['p99'] * 1e6:.0f} us, "
        f"max {figures['max'] * 1e6:.0f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
