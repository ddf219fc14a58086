"""The PROXY protocol parser: the examples of HAProxy's proxy-protocol.txt, refusals, properties."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import roamgate.proxy_protocol as pp
from roamgate.proxy_protocol import NEED_MORE, Invalid, ProxyHeader, encode_v1, encode_v2, parse

SIG = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"


def test_the_module_is_pure() -> None:
    tree = ast.parse(Path(pp.__file__).read_text())
    imported = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    imported |= {
        (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
    }
    assert not imported & {"asyncio", "socket", "ssl", "subprocess"}


# -- v1: the spec's examples (section 2.1)
def test_v1_tcp4_worst_case_example() -> None:
    line = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(line) == 56
    result = parse(line + b"a001 CAPABILITY\r\n")
    assert result == ProxyHeader(
        1, "proxy", "tcp4", 56, ("255.255.255.255", 65535), ("255.255.255.255", 65535)
    )


def test_v1_tcp6_worst_case_example() -> None:
    ff = ":".join(["ffff"] * 8)
    line = f"PROXY TCP6 {ff} {ff} 65535 65535\r\n".encode()
    assert len(line) == 104
    result = parse(line)
    assert isinstance(result, ProxyHeader)
    assert result.family == "tcp6" and result.length == 104
    assert result.source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)


def test_v1_unknown_short_and_worst_case() -> None:
    assert parse(b"PROXY UNKNOWN\r\nSSH-2.0-x\r\n") == ProxyHeader(1, "proxy", "unknown", 15)
    ff = ":".join(["ffff"] * 8)
    line = f"PROXY UNKNOWN {ff} {ff} 65535 65535\r\n".encode()
    assert len(line) == 107
    result = parse(line)
    assert isinstance(result, ProxyHeader) and result.source is None and result.length == 107


def test_v1_typical_haproxy_line() -> None:
    result = parse(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n")
    assert isinstance(result, ProxyHeader)
    assert result.source == ("192.168.0.1", 56324)
    assert result.destination == ("192.168.0.11", 443)
    assert result.length == len(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF alone
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # a port missing
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # v6 addresses under TCP4
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # leading zero
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXYTCP4\r\n",
        b"a001 LOGIN bob secret\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"PROXY " + b"A" * 120,  # no CRLF within 107 bytes
    ],
)
def test_v1_malformed_is_invalid(line: bytes) -> None:
    assert isinstance(parse(line), Invalid)


def test_v1_prefixes_need_more() -> None:
    line = b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 993\r\n"
    for i in range(1, len(line)):
        assert parse(line[:i]) is NEED_MORE, line[:i]
    assert isinstance(parse(line), ProxyHeader)


# -- v2: hand-made binary headers (section 2.2)
def test_v2_tcp4_by_hand() -> None:
    body = bytes([203, 0, 113, 9, 10, 0, 0, 5]) + struct.pack("!HH", 51234, 993)
    data = SIG + b"\x21\x11" + struct.pack("!H", len(body)) + body + b"\x16\x03\x01"
    result = parse(data)
    assert result == ProxyHeader(2, "proxy", "tcp4", 28, ("203.0.113.9", 51234), ("10.0.0.5", 993))


def test_v2_tcp6_by_hand_with_tlvs() -> None:
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8000000000000000000000002")
    tlv = b"\x04\x00\x05hello"  # PP2_TYPE_NOOP, kept as bytes
    body = src + dst + struct.pack("!HH", 40000, 22) + tlv
    data = SIG + b"\x21\x21" + struct.pack("!H", len(body)) + body + b"SSH-2.0-x\r\n"
    result = parse(data)
    assert isinstance(result, ProxyHeader)
    assert result.source == ("2001:db8::1", 40000) and result.destination == ("2001:db8::2", 22)
    assert result.tlvs == tlv and result.length == 16 + len(body)


def test_v2_ipv4_mapped_source_is_spelled_as_ipv4() -> None:
    src = bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 7])
    body = src + bytes(16) + struct.pack("!HH", 1, 2)
    result = parse(SIG + b"\x21\x21" + struct.pack("!H", len(body)) + body)
    assert isinstance(result, ProxyHeader) and result.source == ("198.51.100.7", 1)


def test_v2_local_command_ignores_family_and_addresses() -> None:
    assert parse(SIG + b"\x20\x00\x00\x00") == ProxyHeader(2, "local", "unspec", 16)
    body = bytes(12)
    result = parse(SIG + b"\x20\x11\x00\x0c" + body + b"rest")
    assert result == ProxyHeader(2, "local", "tcp4", 28)
    # An unknown family under LOCAL is still accepted (the spec: the block is discarded).
    assert parse(SIG + b"\x20\xf0\x00\x00") == ProxyHeader(2, "local", "unspec", 16)


def test_v2_unspec_and_unix_carry_no_client_address() -> None:
    assert parse(SIG + b"\x21\x00\x00\x00") == ProxyHeader(2, "proxy", "unspec", 16)
    body = b"/run/lb.sock".ljust(108, b"\0") + b"/run/gw.sock".ljust(108, b"\0")
    result = parse(SIG + b"\x21\x31" + struct.pack("!H", 216) + body)
    assert result == ProxyHeader(2, "proxy", "unix", 232)


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"\x11\x11\x00\x0c", "version 1 in the binary form"),
        (b"\x31\x11\x00\x0c", "version 3"),
        (b"\x22\x11\x00\x0c", "command 2"),
        (b"\x21\x41\x00\x0c", "family 4"),
        (b"\x21\x13\x00\x0c", "transport 3"),
        (b"\x21\x12\x00\x0c", "datagram"),
        (b"\x21\x11\x00\x08", "shorter than a TCP4 address block"),
        (b"\x21\x21\x00\x0c", "shorter than a TCP6 address block"),
        (b"\x21\x11\xff\xff", "longer than the cap"),
    ],
)
def test_v2_refusals(head: bytes, why: str) -> None:
    assert isinstance(parse(SIG + head + bytes(40)), Invalid), why


def test_v2_prefixes_need_more_and_a_wrong_signature_is_invalid() -> None:
    data = encode_v2(("10.1.2.3", 5), ("10.0.0.1", 993))
    for i in range(1, len(data)):
        assert parse(data[:i]) is NEED_MORE, i
    assert isinstance(parse(SIG[:5] + b"X"), Invalid)


def test_the_cap_bounds_a_v2_header() -> None:
    tlvs = bytes(200)
    data = encode_v2(("10.1.2.3", 5), ("10.0.0.1", 993), tlvs=tlvs)
    assert isinstance(parse(data, max_length=len(data)), ProxyHeader)
    assert isinstance(parse(data, max_length=len(data) - 1), Invalid)
    with pytest.raises(ValueError, match="107"):
        parse(data, max_length=50)


def test_looks_like_header() -> None:
    assert pp.looks_like_header(b"PROXY TCP4")
    assert pp.looks_like_header(b"PRO")
    assert pp.looks_like_header(SIG[:7])
    assert not pp.looks_like_header(b"SSH-2.0-x")
    assert not pp.looks_like_header(b"\x16\x03\x01")
    assert not pp.looks_like_header(b"")


# -- properties
ipv4 = st.ip_addresses(v=4).map(str)


def _not_mapped(addr: object) -> bool:
    return getattr(addr, "ipv4_mapped", None) is None


ipv6 = st.ip_addresses(v=6).filter(_not_mapped).map(str)
ports = st.integers(0, 65535)


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports, st.binary(max_size=64)
)
def test_v1_round_trip(addrs: tuple[str, str], sport: int, dport: int, rest: bytes) -> None:
    header = encode_v1((addrs[0], sport), (addrs[1], dport))
    result = parse(header + rest)
    assert isinstance(result, ProxyHeader)
    assert result.length == len(header) <= 107
    assert result.source == (addrs[0], sport) and result.destination == (addrs[1], dport)


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    ports,
    ports,
    st.binary(max_size=300),
    st.binary(max_size=64),
)
def test_v2_round_trip(
    addrs: tuple[str, str], sport: int, dport: int, tlvs: bytes, rest: bytes
) -> None:
    header = encode_v2((addrs[0], sport), (addrs[1], dport), tlvs=tlvs)
    result = parse(header + rest)
    assert isinstance(result, ProxyHeader)
    assert result.length == len(header)
    assert result.source == (addrs[0], sport) and result.tlvs == tlvs


@given(st.binary(max_size=2000), st.integers(107, 4096))
def test_any_input_gives_a_result_within_the_cap(data: bytes, cap: int) -> None:
    result = parse(data, max_length=cap)
    assert isinstance(result, ProxyHeader | Invalid) or result is NEED_MORE
    if isinstance(result, ProxyHeader):
        assert result.length <= min(len(data), cap)
    if result is NEED_MORE:
        assert len(data) < cap


@given(st.sampled_from([b"v1", b"v2"]), ipv4, ports, st.binary(min_size=1, max_size=40))
def test_a_header_fed_byte_by_byte_is_found_once_whole(
    kind: bytes, addr: str, port: int, rest: bytes
) -> None:
    enc = encode_v1 if kind == b"v1" else encode_v2
    header = enc((addr, port), ("10.0.0.1", 993))
    data = header + rest
    results = [parse(data[:i]) for i in range(1, len(data) + 1)]
    first = next(i for i, r in enumerate(results, 1) if r is not NEED_MORE)
    assert first == len(header)
    assert all(r == results[first - 1] for r in results[first - 1 :])
