"""Hosts files: the peers a node connects to, one address per line.

The format follows Amu-chan's ``amu_remotehosts.txt`` (one IP address per
line) and widens it: an address may be an IPv4 or bracketed IPv6 address, a
host name, any of these with ``:port``, or a full ``ws://`` or ``wss://``
URL. Blank lines are skipped and ``#`` starts a comment, on its own line or
after an address.

Every address comes out in one canonical form, ``ws://host:port`` or
``wss://host:port``: scheme and host name in lower case, IPv6 compressed,
the port always written (:data:`DEFAULT_PORT` when none is given), so two
spellings of one peer compare equal.
"""

from __future__ import annotations

import ipaddress
import re

from amucrdt.errors import FormatError
from amucrdt.formats import FormatErrors, decode_utf8

__all__ = ["DEFAULT_PORT", "load_hosts", "normalize_address", "parse_hosts"]

#: The port a node listens on unless told otherwise, and the port assumed
#: for an address that names none, whatever its scheme.
DEFAULT_PORT = 7077

_SCHEMES = ("ws", "wss")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class _BadAddress(Exception):
    """An address is wrong: why, and the offset in it where the fault is."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def normalize_address(text: str, where: str) -> str:
    """Return the canonical URL of a peer address.

    Args:
        text: an address as a user writes it: ``10.0.0.2``, ``[::1]:7078``,
            ``render-01.lab.example:9000``, ``wss://host:7077`` and so on;
            surrounding whitespace is ignored.
        where: what the address came from (a file, an option), for messages.

    Returns:
        ``ws://host:port`` or ``wss://host:port``, with no path.

    Raises:
        FormatError: with ``where`` as its path, saying what is wrong.
    """
    try:
        return _normalize(text.strip())
    except _BadAddress as exc:
        raise FormatError(where, exc.message) from None


def parse_hosts(data: bytes, path: str) -> list[str]:
    """Parse a hosts file's bytes into canonical peer URLs.

    Returns:
        The addresses in file order, each once (later repeats are dropped).

    Raises:
        FormatError: at the line and column of the first bad address, or of
            a byte that is not UTF-8; :class:`~amucrdt.formats.FormatErrors`
            when several lines are bad.
    """
    text = decode_utf8(data, path)
    faults: list[FormatError] = []
    urls: dict[str, None] = {}  # a dict keeps first-seen order
    for number, line in enumerate(text.split("\n"), start=1):
        address = line.split("#", 1)[0].rstrip()
        stripped = address.lstrip()
        if not stripped:
            continue
        indent = len(address) - len(stripped)
        try:
            urls.setdefault(_normalize(stripped))
        except _BadAddress as exc:
            column = indent + exc.offset + 1
            faults.append(FormatError(path, exc.message, number, column))
    if len(faults) == 1:
        raise faults[0]
    if faults:
        raise FormatErrors(faults)
    return list(urls)


def load_hosts(path: str) -> list[str]:
    """Read and parse a hosts file; see :func:`parse_hosts`.

    Raises:
        FormatError: when the file cannot be read (naming the file and the
            reason) or has a bad line.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise FormatError(path, f"cannot read: {exc.strerror or exc}") from None
    return parse_hosts(data, path)


def _normalize(text: str) -> str:
    """Canonicalize a stripped address, or raise _BadAddress."""
    if not text:
        raise _BadAddress("empty address")
    space = re.search(r"\s", text)
    if space:
        raise _BadAddress(
            f"space inside address {text!r}; write one address per line",
            space.start(),
        )

    scheme = "ws"
    start = 0
    match = _SCHEME_RE.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme not in _SCHEMES:
            raise _BadAddress(
                f"unsupported scheme {match.group(1)!r} in {text!r}; "
                "use ws:// or wss://, or a bare address"
            )
        start = match.end()
        authority_end = len(text)
        for mark in "/?#":
            found = text.find(mark, start)
            if found >= 0:
                authority_end = min(authority_end, found)
        rest = text[authority_end:]
        if rest not in ("", "/"):
            raise _BadAddress(
                f"a peer URL has no path, query or fragment: {rest!r} in {text!r}",
                authority_end,
            )
        authority = text[start:authority_end]
    else:
        authority = text
        if "/" in text:
            slash = text.index("/")
            raise _BadAddress(
                f"unexpected {text[slash:]!r} after the address in {text!r} "
                "(only a ws:// or wss:// URL may end in '/')",
                slash,
            )

    if "@" in authority:
        raise _BadAddress(
            f"a peer address carries no user name: {text!r}",
            start + authority.index("@"),
        )
    host, port = _split_host_port(authority, start, text)
    return f"{scheme}://{host}:{port}"


def _split_host_port(authority: str, start: int, text: str) -> tuple[str, int]:
    """Split ``host[:port]``; ``start`` is its offset in ``text``, for columns."""
    if not authority:
        raise _BadAddress(f"no host in {text!r}", start)

    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise _BadAddress(f"missing ']' after the IPv6 address in {text!r}", start)
        host = _ipv6(authority[1:close], start + 1, text)
        after = authority[close + 1 :]
        if after and not after.startswith(":"):
            raise _BadAddress(
                f"unexpected {after!r} after ']' in {text!r}", start + close + 1
            )
        port_text = after[1:] if after else None
        port_at = start + close + 2
    elif authority.count(":") > 1:
        raise _BadAddress(_bare_ipv6_message(authority, text), start)
    else:
        name, colon, port_part = authority.partition(":")
        host = _host(name, start, text)
        port_text = port_part if colon else None
        port_at = start + len(name) + 1

    if port_text is None:
        return host, DEFAULT_PORT
    return host, _port(port_text, port_at, text)


def _ipv6(inside: str, at: int, text: str) -> str:
    if "%" in inside:
        raise _BadAddress(
            f"IPv6 zone ids are not supported ({text!r}); use an address "
            "that needs no zone",
            at + inside.index("%"),
        )
    try:
        return f"[{ipaddress.IPv6Address(inside).compressed}]"
    except ValueError:
        raise _BadAddress(f"invalid IPv6 address {inside!r} in {text!r}", at) from None


def _bare_ipv6_message(authority: str, text: str) -> str:
    advice = "an IPv6 address needs brackets, with any port after them"
    try:
        address = ipaddress.IPv6Address(authority).compressed
    except ValueError:
        return f"{advice}, e.g. [fe80::1]:{DEFAULT_PORT} (in {text!r})"
    suggestion = f"write [{address}]"
    # "fe80::1:7078" is a valid address on its own, but the user may have
    # meant the last group as a port.
    head, _, tail = authority.rpartition(":")
    if tail.isdigit() and _is_ipv6(head):
        suggestion += f", or [{ipaddress.IPv6Address(head).compressed}]:{tail}"
        suggestion += f" if {tail} is the port"
    return f"{advice}: {suggestion}"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _host(name: str, at: int, text: str) -> str:
    """Check an IPv4 address or a host name; return it in canonical form."""
    if not name:
        raise _BadAddress(f"no host before ':' in {text!r}", at)
    if re.fullmatch(r"[0-9.]+", name):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise _BadAddress(f"invalid IPv4 address {name!r}", at) from None
    bad = re.search(r"[^A-Za-z0-9.-]", name)
    if bad:
        raise _BadAddress(
            f"invalid character {bad.group()!r} in host name {name!r} "
            "(letters, digits, '-' and '.' only)",
            at + bad.start(),
        )
    host = name.lower()
    # One trailing dot marks a fully qualified name; it names the same host.
    labels = host.removesuffix(".").split(".")
    if len(host) > 253:
        raise _BadAddress(f"host name {name!r} is longer than 253 characters", at)
    offset = at
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            raise _BadAddress(
                f"invalid host name {name!r}: each dot-separated part is 1 to 63 "
                "letters, digits or '-', not starting or ending with '-'",
                offset,
            )
        offset += len(label) + 1
    return ".".join(labels)


def _port(port_text: str, at: int, text: str) -> int:
    if not port_text:
        raise _BadAddress(f"missing port after ':' in {text!r}", at)
    if not port_text.isascii() or not port_text.isdigit():
        raise _BadAddress(f"bad port {port_text!r} in {text!r}", at)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise _BadAddress(f"port {port} out of range (1 to 65535) in {text!r}", at)
    return port
