"""PROXY protocol v1 (text) and v2 (binary) headers: a pure parser, fed bytes, returning a result.

A load balancer (HAProxy `send-proxy`, `send-proxy-v2`) puts one header in front of the
client's bytes to say who the client is. This module only reads that header; whether to
believe it (the sender must be a trusted proxy) is decided by roamgate.gateway.proxy_accept.

Rules, from HAProxy's doc/proxy-protocol.txt:
1. A v1 header is one line of at most 107 bytes: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`,
   or `PROXY UNKNOWN` followed by anything up to `\\r\\n`.
2. A v2 header is the 12-byte signature, a version/command byte (0x20 LOCAL, 0x21 PROXY),
   a family/transport byte, a 16-bit big-endian length, then that many bytes: the addresses
   of the family, then TLVs (kept as bytes, not interpreted).
3. LOCAL (a health check of the proxy itself) and UNSPEC/UNIX/UNKNOWN families carry no
   client address: the receiver uses the connection's own endpoints.
4. Anything else is invalid and the connection must be dropped: there is no way to find the
   start of the client's own bytes again.
5. The header is capped (`max_length`): a peer cannot make the gateway hold more than that.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107  # including CRLF (spec 2.1)
V2_FIXED_LENGTH: Final = 16
# TLVs (ALPN, SSL details, a unique id) make HAProxy's v2 headers a few hundred bytes at most.
DEFAULT_MAX_LENGTH: Final = 1024

_V2_ADDRESS_LENGTH: Final = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX
Family = Literal["tcp4", "tcp6", "unknown", "unspec", "unix"]
_V2_FAMILY_NAME: Final[dict[int, Family]] = {0x0: "unspec", 0x1: "tcp4", 0x2: "tcp6", 0x3: "unix"}


@dataclass(frozen=True)
class ProxyHeader:
    """A complete, valid header: `length` bytes of the input belong to it."""

    version: Literal[1, 2]
    command: Literal["proxy", "local"]
    family: Family
    length: int
    source: tuple[str, int] | None = None  # the client, when the header names one
    destination: tuple[str, int] | None = None  # the address the client connected to
    tlvs: bytes = b""


@dataclass(frozen=True)
class NeedMore:
    """The input is a prefix of a header that may still be valid: read more bytes."""


@dataclass(frozen=True)
class Invalid:
    """Not a valid PROXY header (or longer than allowed); the connection must be dropped."""

    reason: str


NEED_MORE: Final = NeedMore()
Result = ProxyHeader | NeedMore | Invalid


def looks_like_header(data: bytes) -> bool:
    """Whether data starts like a v1 or v2 header (for auditing a forged one)."""
    n = min(len(data), len(V2_SIGNATURE))
    if n and data[:n] == V2_SIGNATURE[:n]:
        return True
    n = min(len(data), len(V1_PREFIX))
    return bool(n) and data[:n] == V1_PREFIX[:n]


def parse(data: bytes, *, max_length: int = DEFAULT_MAX_LENGTH) -> Result:
    """Parse the header at the start of data (which may hold more than the header).

    Returns the header, NEED_MORE when data is a valid prefix shorter than a header, or
    Invalid. Never reads beyond max_length bytes.
    """
    if max_length < V1_MAX_LENGTH:
        raise ValueError("max_length must allow a v1 header (107 bytes)")
    if not data:
        return NEED_MORE
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data, max_length)
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    return Invalid("no PROXY header")


def _parse_v1(data: bytes) -> Result:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            return Invalid("v1 header longer than 107 bytes")
        if not V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
            return Invalid("no PROXY header")
        if b"\n" in data or b"\r" in data[:-1]:
            return Invalid("v1 header with a bare CR or LF")
        return NEED_MORE
    line = data[:end]
    length = end + 2
    if not line.startswith(V1_PREFIX):
        return Invalid("no PROXY header")
    if b"\n" in line or b"\r" in line:
        return Invalid("v1 header with a bare CR or LF")
    parts = line.split(b" ")
    if parts[1] == b"UNKNOWN":
        # Spec 2.1: after UNKNOWN the receiver ignores the rest of the line.
        return ProxyHeader(1, "proxy", "unknown", length)
    if len(parts) != 6:
        return Invalid("v1 header needs protocol, two addresses and two ports")
    proto, src, dst, sport, dport = parts[1:]
    if proto not in (b"TCP4", b"TCP6"):
        return Invalid("v1 protocol is not TCP4, TCP6 or UNKNOWN")
    version = 4 if proto == b"TCP4" else 6
    try:
        source = (_v1_address(src, version), _v1_port(sport))
        destination = (_v1_address(dst, version), _v1_port(dport))
    except ValueError as exc:
        return Invalid(f"v1 header: {exc}")
    family: Family = "tcp4" if version == 4 else "tcp6"
    return ProxyHeader(1, "proxy", family, length, source, destination)


def _v1_address(text: bytes, version: int) -> str:
    try:
        addr = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("malformed address") from None
    if addr.version != version:
        raise ValueError("address does not match the protocol")
    return str(addr)


def _v1_port(text: bytes) -> int:
    # Decimal 0-65535 without a sign or leading zeros (spec 2.1).
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ValueError("malformed port")
    port = int(text)
    if port > 65535:
        raise ValueError("port out of range")
    return port


def _parse_v2(data: bytes, max_length: int) -> Result:
    n = min(len(data), len(V2_SIGNATURE))
    if data[:n] != V2_SIGNATURE[:n]:
        return Invalid("no PROXY header")
    if len(data) < V2_FIXED_LENGTH:
        return NEED_MORE
    ver_cmd, fam, size = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if ver_cmd >> 4 != 2:
        return Invalid("v2 header with an unknown version")
    command = ver_cmd & 0x0F
    if command not in (0x0, 0x1):
        return Invalid("v2 header with an unknown command")
    length = V2_FIXED_LENGTH + size
    if length > max_length:
        return Invalid(f"v2 header longer than {max_length} bytes")
    family_code, transport = fam >> 4, fam & 0x0F
    if command == 0x0:
        if len(data) < length:
            return NEED_MORE
        # LOCAL: the proxy speaks for itself (a health check); the family and whatever
        # address block follows are ignored (spec 2.2).
        return ProxyHeader(2, "local", _V2_FAMILY_NAME.get(family_code, "unspec"), length)
    if family_code not in _V2_FAMILY_NAME or transport > 2:
        return Invalid("v2 header with an unknown address family or transport")
    need = _V2_ADDRESS_LENGTH.get(family_code, 0)
    if size < need:
        return Invalid("v2 header shorter than its addresses")
    if len(data) < length:
        return NEED_MORE
    body = data[V2_FIXED_LENGTH:length]
    family = _V2_FAMILY_NAME[family_code]
    if transport == 0x2:
        return Invalid("v2 header for a datagram transport")
    source = destination = None
    if family_code == 0x1:
        src4, dst4, sport, dport = struct.unpack_from("!4s4sHH", body)
        source = (str(ipaddress.IPv4Address(src4)), sport)
        destination = (str(ipaddress.IPv4Address(dst4)), dport)
    elif family_code == 0x2:
        src6, dst6, sport, dport = struct.unpack_from("!16s16sHH", body)
        source = (_v6_text(src6), sport)
        destination = (_v6_text(dst6), dport)
    return ProxyHeader(2, "proxy", family, length, source, destination, bytes(body[need:]))


def _v6_text(packed: bytes) -> str:
    addr = ipaddress.IPv6Address(packed)
    # A v4 client behind a dual-stack proxy arrives as ::ffff:a.b.c.d: keep one spelling per
    # client so throttling and travel windows see one address.
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 header (UNKNOWN without addresses); for tests and tools."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    version = ipaddress.ip_address(source[0]).version
    proto = "TCP4" if version == 4 else "TCP6"
    return f"PROXY {proto} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    *,
    local: bool = False,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header (LOCAL or UNSPEC without addresses); for tests and tools."""
    ver_cmd = 0x20 if local else 0x21
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, 0x00, len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version == 4:
        body = struct.pack("!4s4sHH", src.packed, dst.packed, source[1], destination[1])
        fam = 0x11
    else:
        body = struct.pack("!16s16sHH", src.packed, dst.packed, source[1], destination[1])
        fam = 0x21
    body += tlvs
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, len(body)) + body
