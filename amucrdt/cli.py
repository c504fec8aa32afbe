"""The ``amucrdt`` command line.

Errors print one line (what, where, what to do) and exit non-zero; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from amucrdt import __version__
from amucrdt.errors import AmucrdtError, ClientError

log = logging.getLogger(__name__)

#: Exit statuses.
EXIT_OK = 0
EXIT_JOBS_FAILED = 1
EXIT_ERROR = 2
EXIT_TIMEOUT = 3

ADDRESS_FILE = "address"

#: Characters of a value ``dump`` shows without --json; --json shows it all.
DUMP_VALUE_CHARS = 160


def _data_dir(args: argparse.Namespace) -> Path:
    from amucrdt.datadir import default_data_dir

    return Path(args.data_dir) if args.data_dir else default_data_dir()


def _secret(args: argparse.Namespace) -> bytes:
    from amucrdt.datadir import DataDir, read_secret_file

    if args.secret_file:
        return read_secret_file(Path(args.secret_file))
    return DataDir.open(_data_dir(args)).secret()


def _target(args: argparse.Namespace) -> str:
    from amucrdt.hostsfile import normalize_address
    from amucrdt.node import DEFAULT_LISTEN

    if args.to:
        return normalize_address(args.to, "--to")
    address_file = _data_dir(args) / ADDRESS_FILE
    if address_file.exists():
        return address_file.read_text().strip()
    return normalize_address(DEFAULT_LISTEN, "default address")


async def _request(args: argparse.Namespace, op: str, **fields: Any) -> Any:
    from amucrdt.client import Client

    tls_ca = Path(args.tls_ca) if getattr(args, "tls_ca", None) else None
    async with Client(_target(args), _secret(args), tls_ca) as client:
        return await client.request(op, **fields)


def _print_json(obj: Any) -> None:
    sys.stdout.write(
        orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
        + "\n"
    )


# Commands ---------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from amucrdt.datadir import DataDir

    path = _data_dir(args)
    # A secret copied in before init is kept; the node id is what init adds.
    existed = (path / "node.json").exists()
    datadir = DataDir.init(path)
    word = "already initialised" if existed else "initialised"
    print(f"data directory {path} {word}; node id {datadir.node_id}")
    print(f"cluster secret: {path / 'secret'} (copy it to every node, mode 0600)")
    return EXIT_OK


def cmd_node(args: argparse.Namespace) -> int:
    from amucrdt.datadir import read_secret_file
    from amucrdt.hostsfile import load_hosts, normalize_address
    from amucrdt.node import Node, NodeOptions, parse_listen

    # Refuse a mistyped address before the data directory is touched.
    parse_listen(args.listen)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    path = _data_dir(args)
    if args.data_dir and not (path / "secret").exists() and not args.secret_file:
        # A mistyped --data-dir would otherwise start a stranger node with a
        # secret of its own that no peer accepts.
        raise AmucrdtError(
            f"{path} holds no cluster secret; run `amucrdt init --data-dir {path}` "
            "and copy the cluster's secret file there, or pass --secret-file"
        )
    if not args.data_dir:
        print(f"amucrdt: using data directory {path}", file=sys.stderr)
    peers = [normalize_address(p, "--peer") for p in args.peer]
    for hosts_file in args.hosts_file:
        peers += load_hosts(hosts_file)
    options = NodeOptions(
        data_dir=path,
        listen=args.listen,
        advertise=normalize_address(args.advertise, "--advertise")
        if args.advertise
        else None,
        peers=peers,
        secret=read_secret_file(Path(args.secret_file)) if args.secret_file else None,
        slots=args.slots,
        heartbeat_interval=args.heartbeat,
        peer_timeout=args.peer_timeout,
        lease=args.lease,
        startup_grace=args.startup_grace,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_ca=Path(args.tls_ca) if args.tls_ca else None,
        max_frame=args.max_frame,
    )
    if bool(options.tls_cert) != bool(options.tls_key):
        raise AmucrdtError("--tls-cert and --tls-key go together")
    node = Node(options)
    address_file = path / ADDRESS_FILE

    async def ready(node: Node) -> None:
        address_file.write_text(node.address + "\n")
        print(
            f"amucrdt node {node.node_id} listening on {node.address}",
            file=sys.stderr,
            flush=True,
        )

    try:
        asyncio.run(node.run(ready))
    finally:
        if address_file.exists():
            address_file.unlink()
    return EXIT_OK


def cmd_push_queue(args: argparse.Namespace) -> int:
    from amucrdt.formats import load_queue

    spec = load_queue(args.file, args.format, args.name)
    if args.dry_run:
        _print_json({"queue": spec.name, "jobs": [job.to_json() for job in spec.jobs]})
        return EXIT_OK
    result = asyncio.run(_request(args, "push_queue", queue=spec.to_json()))
    if args.json:
        _print_json(result)
    elif result["new"]:
        print(f"queue {result['queue']}: {result['jobs']} jobs pushed")
    else:
        print(f"queue {result['queue']}: {result['jobs']} jobs, already pushed")
    return EXIT_OK


def cmd_push_hosts(args: argparse.Namespace) -> int:
    from amucrdt.hostsfile import load_hosts

    hosts = load_hosts(args.file)
    result = asyncio.run(_request(args, "push_hosts", hosts=hosts))
    if args.json:
        _print_json(result)
    else:
        print(f"{len(result['added'])} new of {len(hosts)} hosts; cluster knows:")
        for url in result["known"]:
            print(f"  {url}")
    return EXIT_OK


def cmd_dump(args: argparse.Namespace) -> int:
    if args.to and args.data_dir_only:
        raise AmucrdtError("give either --to or --data-dir, not both")
    if args.data_dir_only:
        from amucrdt.control import dump
        from amucrdt.state import Cluster, check_schema
        from amucrdt.storage import DocStore

        path = Path(args.data_dir_only)
        store = DocStore(path)
        # A running node may be appending to this log; read without repairing.
        doc, report = store.load(repair=False)
        store.close()
        if doc is None:
            raise AmucrdtError(f"{path}: no document (is this a data directory?)")
        check_schema(doc, str(path))
        for dropped in report.dropped:
            print(
                f"amucrdt: {dropped.file}: dropped damaged record {dropped.index} "
                f"at byte {dropped.offset}: {dropped.reason}",
                file=sys.stderr,
            )
        result = dump(Cluster(doc), None)
    else:
        result = asyncio.run(_request(args, "dump"))
    if args.json:
        _print_json(result)
    else:
        _print_dump(result)
    return EXIT_OK


def _print_dump(result: dict[str, Any]) -> None:
    from amucrdt.state import ROOT_MAPS

    doc = result["document"]
    heads = ", ".join(h[:12] for h in result["heads"])
    print(f"schema {doc.get('schema')}, heads {heads}")
    for part in ROOT_MAPS:
        entries = doc.get(part, {})
        print(f"\n{part} ({len(entries)})")
        for key in sorted(entries):
            value = orjson.dumps(entries[key], option=orjson.OPT_SORT_KEYS).decode()
            if len(value) > DUMP_VALUE_CHARS:
                value = value[: DUMP_VALUE_CHARS - 3] + "..."
            print(f"  {key}: {value}")


def cmd_status(args: argparse.Namespace) -> int:
    while True:
        result = asyncio.run(_request(args, "status"))
        if args.queue is not None:
            if args.queue not in result["queues"]:
                raise AmucrdtError(f"no queue named {args.queue!r} on this node")
            result["jobs"] = [j for j in result["jobs"] if j["queue"] == args.queue]
            result["queues"] = {args.queue: result["queues"][args.queue]}
        if args.json:
            _print_json(result)
        else:
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            _print_status(result, args.queue)
        if not args.watch:
            return EXIT_OK
        time.sleep(args.interval)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def _print_status(result: dict[str, Any], queue: str | None) -> None:
    node = result["node"]
    print(f"node {node['id'][:12]} at {node['address']}, amucrdt {node['version']}")
    if node.get("newest_version_seen") != node["version"]:
        print(f"  a peer runs newer amucrdt {node['newest_version_seen']}")
    jobs = [j for j in result["jobs"] if queue is None or j["queue"] == queue]
    rows = [
        [
            j["job"],
            j["state"],
            (j["node"] or "")[:12],
            str(j["attempt"]),
            "" if j["exit_code"] is None else str(j["exit_code"]),
            "" if j["duration"] is None else f"{j['duration']:.1f}s",
        ]
        for j in jobs
    ]
    print()
    print(_table(rows, ["JOB", "STATE", "NODE", "ATTEMPT", "EXIT", "DURATION"]))
    print()
    totals = [
        [name, str(t["total"]), str(t["pending"]), str(t["claimed"]), str(t["running"]),
         str(t["done"]), str(t["failed"])]
        for name, t in sorted(result["queues"].items())
        if queue is None or name == queue
    ]  # fmt: skip
    print(
        _table(
            totals,
            ["QUEUE", "TOTAL", "PENDING", "CLAIMED", "RUNNING", "DONE", "FAILED"],
        )
    )
    print()
    peers = [
        [
            p["node"][:12],
            p["address"],
            p["version"],
            "up" if p["up"] else "down",
            "" if p["last_heard"] is None else f"{p['last_heard']:.1f}s ago",
            "yes" if p["in_sync"] else "no",
        ]
        for p in result["peers"]
    ]
    print(
        _table(peers, ["PEER", "ADDRESS", "VERSION", "STATE", "LAST HEARD", "IN SYNC"])
    )


def cmd_wait(args: argparse.Namespace) -> int:
    return asyncio.run(_wait(args))


async def _wait(args: argparse.Namespace) -> int:
    from amucrdt.client import Client

    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    tty = sys.stderr.isatty()
    tls_ca = Path(args.tls_ca) if args.tls_ca else None
    last_line = ""
    async with Client(_target(args), _secret(args), tls_ca) as client:
        while True:
            result = await client.request("status")
            totals = result["queues"].get(args.queue)
            if totals is not None:
                finished = totals["done"] + totals["failed"]
                line = (
                    f"{args.queue}: {finished}/{totals['total']} finished "
                    f"({totals['done']} done, {totals['failed']} failed, "
                    f"{totals['running']} running, {totals['pending']} pending)"
                )
                if finished == totals["total"]:
                    if tty:
                        sys.stderr.write("\r\x1b[K")
                    return _wait_summary(args, result)
            else:
                line = f"{args.queue}: waiting for the queue to reach this node"
            if line != last_line:
                sys.stderr.write(("\r\x1b[K" + line) if tty else line + "\n")
                sys.stderr.flush()
                last_line = line
            if deadline is not None and time.monotonic() >= deadline:
                if tty:
                    sys.stderr.write("\n")
                print(
                    f"amucrdt: timed out after {args.timeout:g}s; {line}",
                    file=sys.stderr,
                )
                return EXIT_TIMEOUT
            await asyncio.sleep(0.25)


def _wait_summary(args: argparse.Namespace, result: dict[str, Any]) -> int:
    jobs = [j for j in result["jobs"] if j["queue"] == args.queue]
    failed = [j for j in jobs if j["state"] == "failed"]
    if args.json:
        _print_json(
            {"queue": args.queue, "totals": result["queues"][args.queue], "jobs": jobs}
        )
    else:
        done = len(jobs) - len(failed)
        print(f"queue {args.queue}: {done} done, {len(failed)} failed of {len(jobs)}")
        for j in failed:
            reason = j["error"] or f"exit code {j['exit_code']}"
            print(f"  failed: {j['name']} (attempt {j['attempt']}, {reason})")
    return EXIT_JOBS_FAILED if failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from amucrdt.demo import run_demo

    return run_demo(keep=args.keep, jobs=args.jobs)


# Parser -----------------------------------------------------------------------


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to", metavar="ADDR", help="node to talk to (default: the local node)"
    )
    parser.add_argument(
        "--data-dir", metavar="DIR", help="local data directory (default: see docs)"
    )
    parser.add_argument(
        "--secret-file", metavar="FILE", help="cluster secret (default: in data dir)"
    )
    parser.add_argument("--tls-ca", metavar="FILE", help="CA bundle for wss:// nodes")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="amucrdt",
        description="A peer-to-peer job queue with no broker.",
        formatter_class=formatter,
        epilog=textwrap.dedent(
            """\
            example:
              amucrdt init && amucrdt node &
              amucrdt push queue jobs.toml && amucrdt wait jobs
            """
        ),
    )
    parser.add_argument("--version", action="version", version=f"amucrdt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "init",
        help="create a data directory and a cluster secret",
        formatter_class=formatter,
        epilog="example:\n  amucrdt init --data-dir /var/lib/amucrdt",
    )
    p.add_argument("--data-dir", metavar="DIR")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "node",
        help="run a node",
        formatter_class=formatter,
        epilog=textwrap.dedent(
            """\
            example:
              amucrdt node --listen 0.0.0.0:7077 --advertise ws://10.0.0.1:7077 \\
                  --peer 10.0.0.2
            """
        ),
    )
    p.add_argument("--data-dir", metavar="DIR", help="data directory (see init)")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:7077",
        help="where to accept peers and the CLI (default: %(default)s)",
    )
    p.add_argument("--advertise", metavar="URL", help="address peers should dial")
    p.add_argument(
        "--peer",
        metavar="ADDR",
        action="append",
        default=[],
        help="a node to connect to; repeat for more",
    )
    p.add_argument(
        "--hosts-file",
        metavar="FILE",
        action="append",
        default=[],
        help="peers, one address a line (docs/formats.md)",
    )
    p.add_argument(
        "--secret-file", metavar="FILE", help="cluster secret (default: in data dir)"
    )
    p.add_argument(
        "--slots",
        type=int,
        default=os.cpu_count() or 1,
        help="jobs run at once (default: the number of CPUs, %(default)s)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between heartbeats (default: %(default)s)",
    )
    p.add_argument(
        "--peer-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="silence after which a peer counts as down (default: %(default)s)",
    )
    p.add_argument(
        "--lease",
        type=float,
        default=30.0,
        metavar="S",
        help="how long a down node keeps its jobs before they are taken over "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--startup-grace",
        type=float,
        default=3.0,
        metavar="S",
        help="how long to wait for known peers before claiming work alone "
        "(default: %(default)s)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="serve wss:// with this cert")
    p.add_argument("--tls-key", metavar="FILE", help="key of --tls-cert")
    p.add_argument("--tls-ca", metavar="FILE", help="CA bundle for wss:// peers")
    p.add_argument(
        "--max-frame",
        type=int,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="largest message accepted from a peer (default: %(default)s)",
    )
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    p.set_defaults(func=cmd_node)

    push = sub.add_parser(
        "push",
        help="hand a queue or a host list to a node",
        formatter_class=formatter,
        epilog=textwrap.dedent(
            """\
            example:
              amucrdt push queue nightly.toml
              amucrdt push hosts amu_remotehosts.txt
            """
        ),
    )
    push_sub = push.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = push_sub.add_parser(
        "queue",
        help="push a queue file",
        formatter_class=formatter,
        epilog=textwrap.dedent(
            """\
            formats: amu, amu3, toml, json (see docs/formats.md)
            example:
              amucrdt push queue nightly.toml
              amucrdt push queue jobs.txt --format amu --name build-42
            """
        ),
    )
    p.add_argument("file", metavar="FILE", help="queue file, - for stdin")
    p.add_argument("--format", choices=["amu", "amu3", "toml", "json"])
    p.add_argument("--name", metavar="QUEUE")
    p.add_argument("--dry-run", action="store_true", help="print the jobs as JSON")
    p.add_argument("--json", action="store_true")
    _client_options(p)
    p.set_defaults(func=cmd_push_queue)

    p = push_sub.add_parser(
        "hosts",
        help="add peer addresses to the cluster",
        formatter_class=formatter,
        epilog="example:\n  amucrdt push hosts amu_remotehosts.txt",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true")
    _client_options(p)
    p.set_defaults(func=cmd_push_hosts)

    p = sub.add_parser(
        "status",
        help="jobs and nodes",
        formatter_class=formatter,
        epilog="example:\n  amucrdt status --watch",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true")
    p.add_argument("--interval", type=float, default=1.0, metavar="S")
    p.add_argument("--queue", metavar="QUEUE")
    _client_options(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "dump",
        help="the merged state",
        formatter_class=formatter,
        epilog=textwrap.dedent(
            """\
            example:
              amucrdt dump --json
              amucrdt dump --data-dir /var/lib/amucrdt --json   # node stopped
            """
        ),
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--to", metavar="ADDR")
    p.add_argument(
        "--data-dir",
        dest="data_dir_only",
        metavar="DIR",
        help="read a data directory instead of asking a node",
    )
    p.add_argument("--secret-file", metavar="FILE")
    p.add_argument("--tls-ca", metavar="FILE")
    p.set_defaults(func=cmd_dump, data_dir=None)

    p = sub.add_parser(
        "wait",
        help="block until a queue is finished",
        formatter_class=formatter,
        epilog="exit status: 0 all done, 1 some failed, 3 timed out\n"
        "example:\n  amucrdt wait nightly --timeout 3600",
    )
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument("--timeout", type=float, metavar="S")
    p.add_argument("--json", action="store_true")
    _client_options(p)
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser(
        "demo",
        help="run three local nodes on a real workload",
        description=textwrap.dedent(
            """\
            Start three nodes on 127.0.0.1, push a queue that hashes and compresses
            files of Python's standard library, and check that every job ran
            exactly once and matches a sequential run.
            """
        ),
        formatter_class=formatter,
        epilog="exit status: 0 every check passed, 1 a check failed, 2 an error\n"
        "example:\n  amucrdt demo\n  amucrdt demo --jobs 50 --keep",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (node logs, data, outputs)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="number of files, one job each (default: 200)",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (AmucrdtError, OSError) as exc:
        if args.debug:
            raise
        message = str(exc)
        if isinstance(exc, OSError) and not isinstance(exc, AmucrdtError):
            message = f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
        if not message:
            message = f"{type(exc).__name__} (run with --debug for details)"
        print(f"amucrdt: error: {message}", file=sys.stderr)
        return EXIT_ERROR


__all__ = ["ClientError", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
