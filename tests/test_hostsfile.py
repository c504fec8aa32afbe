"""Hosts files: canonical peer URLs, and bad lines reported where they are."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markdown_blocks import read_blocks

from amucrdt.errors import FormatError
from amucrdt.formats import FormatErrors
from amucrdt.hostsfile import DEFAULT_PORT, load_hosts, normalize_address, parse_hosts

DOC = Path(__file__).resolve().parent.parent / "docs" / "formats.md"


def plain_doc_blocks() -> list[str]:
    return [block.text for block in read_blocks(DOC) if block.info[0] == ""]


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("10.0.0.2", "ws://10.0.0.2:7077"),
        ("10.0.0.2:7078", "ws://10.0.0.2:7078"),
        ("  10.0.0.2  ", "ws://10.0.0.2:7077"),
        ("[::1]", "ws://[::1]:7077"),
        ("[fe80::1]:7078", "ws://[fe80::1]:7078"),
        ("[FE80:0:0:0:0:0:0:1]", "ws://[fe80::1]:7077"),
        ("[::ffff:10.0.0.1]:9", "ws://[::ffff:a00:1]:9"),
        ("render-01", "ws://render-01:7077"),
        ("Render-01.Lab.Example:9000", "ws://render-01.lab.example:9000"),
        ("render-01.lab.example.", "ws://render-01.lab.example:7077"),
        ("localhost:1", "ws://localhost:1"),
        ("host:65535", "ws://host:65535"),
        ("ws://10.0.0.2", "ws://10.0.0.2:7077"),
        ("ws://10.0.0.2:7078/", "ws://10.0.0.2:7078"),
        ("WSS://Node.Example:443", "wss://node.example:443"),
        ("wss://[::1]", "wss://[::1]:7077"),
        ("ws://3com.example", "ws://3com.example:7077"),
    ],
)
def test_address_is_normalized(text: str, url: str) -> None:
    assert normalize_address(text, "--peer") == url


def test_default_port_is_the_node_port() -> None:
    assert DEFAULT_PORT == 7077


def test_empty_address_is_refused() -> None:
    with pytest.raises(FormatError) as info:
        normalize_address("  ", "--peer")
    assert str(info.value) == "--peer: empty address"


BAD = [
    ("10.0.0.256", 0, "invalid IPv4 address '10.0.0.256'"),
    ("010.0.0.1", 0, "invalid IPv4 address '010.0.0.1'"),
    ("10.0.0", 0, "invalid IPv4 address '10.0.0'"),
    ("10.0.0.2:", 9, "missing port after ':' in '10.0.0.2:'"),
    ("10.0.0.2:http", 9, "bad port 'http' in '10.0.0.2:http'"),
    ("10.0.0.2:-1", 9, "bad port '-1' in '10.0.0.2:-1'"),
    ("10.0.0.2:0", 9, "port 0 out of range (1 to 65535) in '10.0.0.2:0'"),
    ("h:65536", 2, "port 65536 out of range (1 to 65535) in 'h:65536'"),
    ("h:\u0667", 2, "bad port '\u0667' in 'h:\u0667'"),
    (
        "::1",
        0,
        "an IPv6 address needs brackets, with any port after them: write [::1]",
    ),
    (
        "fe80::1:7078",
        0,
        "an IPv6 address needs brackets, with any port after them: write "
        "[fe80::1:7078], or [fe80::1]:7078 if 7078 is the port",
    ),
    (
        "fe80::zz:1",
        0,
        "an IPv6 address needs brackets, with any port after them, e.g. "
        "[fe80::1]:7077 (in 'fe80::zz:1')",
    ),
    ("[::1", 0, "missing ']' after the IPv6 address in '[::1'"),
    ("[::g]", 1, "invalid IPv6 address '::g' in '[::g]'"),
    ("[::1]7078", 5, "unexpected '7078' after ']' in '[::1]7078'"),
    (
        "[fe80::1%eth0]",
        8,
        "IPv6 zone ids are not supported ('[fe80::1%eth0]'); use an address that "
        "needs no zone",
    ),
    (
        "render 01",
        6,
        "space inside address 'render 01'; write one address per line",
    ),
    (
        "render_01",
        6,
        "invalid character '_' in host name 'render_01' (letters, digits, '-' and "
        "'.' only)",
    ),
    (
        "rendér",
        4,
        "invalid character 'é' in host name 'rendér' (letters, digits, '-' and "
        "'.' only)",
    ),
    (
        "a..b",
        2,
        "invalid host name 'a..b': each dot-separated part is 1 to 63 letters, "
        "digits or '-', not starting or ending with '-'",
    ),
    (
        "ok.-bad",
        3,
        "invalid host name 'ok.-bad': each dot-separated part is 1 to 63 letters, "
        "digits or '-', not starting or ending with '-'",
    ),
    ("a" * 64, 0, None),
    (":7078", 0, "no host before ':' in ':7078'"),
    (
        "http://10.0.0.2",
        0,
        "unsupported scheme 'http' in 'http://10.0.0.2'; use ws:// or wss://, or a "
        "bare address",
    ),
    (
        "ws://10.0.0.2/sync",
        13,
        "a peer URL has no path, query or fragment: '/sync' in 'ws://10.0.0.2/sync'",
    ),
    (
        "ws://10.0.0.2?x=1",
        13,
        "a peer URL has no path, query or fragment: '?x=1' in 'ws://10.0.0.2?x=1'",
    ),
    ("ws://", 5, "no host in 'ws://'"),
    ("ws://user@h", 9, "a peer address carries no user name: 'ws://user@h'"),
    (
        "10.0.0.2/24",
        8,
        "unexpected '/24' after the address in '10.0.0.2/24' (only a ws:// or "
        "wss:// URL may end in '/')",
    ),
]


@pytest.mark.parametrize(("text", "offset", "reason"), BAD)
def test_bad_address_is_refused(text: str, offset: int, reason: str | None) -> None:
    with pytest.raises(FormatError) as info:
        normalize_address(text, "--peer")
    assert info.value.path == "--peer"
    if reason is not None:
        assert info.value.reason == reason


@pytest.mark.parametrize(("text", "offset", "reason"), BAD)
def test_bad_line_is_reported_at_its_column(
    text: str, offset: int, reason: str | None
) -> None:
    data = f"10.0.0.1\n\n  {text}  # a comment\n".encode()
    with pytest.raises(FormatError) as info:
        parse_hosts(data, "amu_remotehosts.txt")
    error = info.value
    assert (error.path, error.line, error.column) == (
        "amu_remotehosts.txt",
        3,
        3 + offset,
    )
    if reason is not None:
        assert error.reason == reason


def test_hosts_file_keeps_order_and_drops_repeats() -> None:
    data = b"""\
# render farm
10.0.0.2
10.0.0.3:7078   # the big one

render-01.lab.example
ws://10.0.0.2:7077/
[::1]
Render-01.LAB.example:7077
"""
    assert parse_hosts(data, "hosts.txt") == [
        "ws://10.0.0.2:7077",
        "ws://10.0.0.3:7078",
        "ws://render-01.lab.example:7077",
        "ws://[::1]:7077",
    ]


def test_hosts_file_with_crlf_and_byte_order_mark() -> None:
    data = b"\xef\xbb\xbf10.0.0.2\r\n10.0.0.3\r\n"
    assert parse_hosts(data, "hosts.txt") == [
        "ws://10.0.0.2:7077",
        "ws://10.0.0.3:7077",
    ]


def test_hosts_file_of_comments_only_is_empty() -> None:
    assert parse_hosts(b"# nobody yet\n\n   \n", "hosts.txt") == []


def test_every_bad_line_is_reported() -> None:
    data = b"10.0.0.2\n10.0.0.300\nok\nbad host\n"
    with pytest.raises(FormatErrors) as info:
        parse_hosts(data, "hosts.txt")
    assert str(info.value).splitlines() == [
        "hosts.txt:2:1: invalid IPv4 address '10.0.0.300'",
        "hosts.txt:4:4: space inside address 'bad host'; write one address per line",
    ]
    assert (info.value.line, info.value.column) == (2, 1)


def test_hosts_file_with_bad_utf8_names_the_byte() -> None:
    with pytest.raises(FormatError) as info:
        parse_hosts(b"10.0.0.2\nh\xe9st\n", "hosts.txt")
    assert (info.value.line, info.value.column) == (2, 2)
    assert info.value.reason == "invalid UTF-8 (byte 0xe9); save the file as UTF-8"


def test_load_hosts_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "amu_remotehosts.txt"
    path.write_text("10.0.0.2\n10.0.0.3\n")
    assert load_hosts(str(path)) == ["ws://10.0.0.2:7077", "ws://10.0.0.3:7077"]


def test_load_hosts_reports_unreadable_file(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.txt")
    with pytest.raises(FormatError) as info:
        load_hosts(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


@given(st.ip_addresses(v=4), st.integers(1, 65535))
def test_ipv4_with_port_round_trips(address: object, port: int) -> None:
    url = normalize_address(f"{address}:{port}", "x")
    assert url == f"ws://{address}:{port}"
    assert normalize_address(url, "x") == url


@given(st.ip_addresses(v=6), st.integers(1, 65535))
def test_ipv6_with_port_round_trips(address: object, port: int) -> None:
    url = normalize_address(f"[{address}]:{port}", "x")
    assert url == f"ws://[{address}]:{port}"
    assert normalize_address(url, "x") == url


def test_documented_hosts_file_is_real() -> None:
    (example,) = [b for b in plain_doc_blocks() if b.startswith("# render farm")]
    assert parse_hosts(example.encode(), "hosts.txt") == [
        "ws://10.0.0.2:7077",
        "ws://10.0.0.3:7078",
        "ws://[fd00::12]:7077",
        "ws://[fd00::13]:7078",
        "ws://render-01:7077",
        "ws://render-02.lab.example:9000",
        "wss://gateway.lab.example:443",
    ]


def test_documented_hosts_errors_are_real() -> None:
    data = b"10.0.0.2\n10.0.0.2:70000\nfe80::1\nrender_01\nhttp://10.0.0.9\n"
    with pytest.raises(FormatErrors) as info:
        parse_hosts(data, "amu_remotehosts.txt")
    documented = [line for b in plain_doc_blocks() for line in b.splitlines()]
    for line in str(info.value).splitlines():
        assert line in documented
