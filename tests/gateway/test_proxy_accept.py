"""ProxyAcceptor on real loopback sockets: exact header consumption, trust, refusals, audit."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roamgate.audit import Auditor
from roamgate.gateway import proxy_accept
from roamgate.gateway.proxy_accept import Origin, ProxyAcceptor, TrustedProxies
from roamgate.proxy_protocol import encode_v1, encode_v2
from roamgate.store import Store, open_store

# Linux routes all of 127.0.0.0/8 to loopback: a second address plays the untrusted client.
UNTRUSTED = "127.0.0.2"


class Harness:
    def __init__(self, store: Store, acceptor: ProxyAcceptor) -> None:
        self.store = store
        self.acceptor = acceptor
        self.handed: asyncio.Queue[tuple[Origin, bytes]] = asyncio.Queue()

    async def connect(
        self, source: str = "127.0.0.1"
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.acceptor.port, local_addr=(source, 0)
        )

    async def audit(self) -> list[tuple[str, str | None, str | None, dict[str, object]]]:
        records = await self.store.query_audit(limit=100)
        return [(r.kind, r.source, r.reason, dict(r.detail)) for r in records]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    store = await open_store(str(tmp_path / "state.db"), create=True)
    auditor = Auditor(store, tmp_path / "audit.jsonl")

    async def handler(sock: socket.socket, origin: Origin) -> None:
        # What the next owner of the socket reads: the client's own first bytes.
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 100), 10)
            await harness_obj.handed.put((origin, data))
        finally:
            sock.close()

    acceptor = ProxyAcceptor(
        "imaps", "127.0.0.1", 0, TrustedProxies(["127.0.0.1/32"]), auditor, handler
    )
    harness_obj = Harness(store, acceptor)
    await acceptor.start()
    try:
        yield harness_obj
    finally:
        await acceptor.close()
        await store.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(10), 10) == b""
    except ConnectionResetError:
        return True


async def test_a_header_in_pieces_is_consumed_exactly(harness: Harness) -> None:
    _reader, writer = await harness.connect()
    header = encode_v2(("198.51.100.20", 40001), ("10.0.0.5", 993))
    for piece in (header[:5], header[5:17], header[17:]):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)
    writer.write(b"SSH-2.0-client\r\n")
    await writer.drain()
    origin, data = await asyncio.wait_for(harness.handed.get(), 10)
    assert (origin.source, origin.port, origin.proxy) == ("198.51.100.20", 40001, "127.0.0.1")
    assert data == b"SSH-2.0-client\r\n"
    writer.close()


async def test_a_v1_header_with_the_client_bytes_in_the_same_packet(harness: Harness) -> None:
    _reader, writer = await harness.connect()
    writer.write(encode_v1(("2001:db8::7", 5555), ("2001:db8::1", 993)) + b"\x16\x03\x01rest")
    await writer.drain()
    origin, data = await asyncio.wait_for(harness.handed.get(), 10)
    assert (origin.source, origin.port) == ("2001:db8::7", 5555)
    assert data == b"\x16\x03\x01rest"
    writer.close()


async def test_local_keeps_the_proxy_address(harness: Harness) -> None:
    _reader, writer = await harness.connect()
    writer.write(encode_v2(None, None, local=True) + b"x")
    await writer.drain()
    origin, data = await asyncio.wait_for(harness.handed.get(), 10)
    assert origin.source == "127.0.0.1" and origin.header.command == "local"
    assert data == b"x"
    writer.close()


@pytest.mark.parametrize("forged", [True, False])
async def test_an_untrusted_address_is_refused_and_audited(harness: Harness, forged: bool) -> None:
    reader, writer = await harness.connect(UNTRUSTED)
    if forged:
        writer.write(encode_v1(("203.0.113.50", 1), ("127.0.0.1", 993)) + b"a1 NOOP\r\n")
        await writer.drain()
    assert await _closed(reader)
    assert harness.handed.empty()
    assert await harness.audit() == [
        ("proxy_refused", UNTRUSTED, "untrusted_source", {"forged_header": forged})
    ]
    writer.close()


async def test_a_trusted_proxy_without_a_header_is_refused(harness: Harness) -> None:
    reader, writer = await harness.connect()
    writer.write(b"a001 CAPABILITY\r\n")
    await writer.drain()
    assert await _closed(reader)
    [(kind, source, reason, detail)] = await harness.audit()
    assert (kind, source, reason) == ("proxy_refused", "127.0.0.1", "header_missing")
    assert detail["proxy"] == "127.0.0.1"
    writer.close()


async def test_a_broken_header_is_refused(harness: Harness) -> None:
    reader, writer = await harness.connect()
    writer.write(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n")
    await writer.drain()
    assert await _closed(reader)
    [(kind, _, reason, _)] = await harness.audit()
    assert (kind, reason) == ("proxy_refused", "header_invalid")
    writer.close()


async def test_a_stalled_header_times_out(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy_accept, "HEADER_TIMEOUT", 0.5)
    reader, writer = await harness.connect()
    writer.write(b"PROXY TCP4 1.2")
    await writer.drain()
    assert await _closed(reader)
    [(kind, _, reason, _)] = await harness.audit()
    assert (kind, reason) == ("proxy_refused", "header_timeout")
    writer.close()


async def test_a_bare_health_check_is_not_audited(harness: Harness) -> None:
    _, writer = await harness.connect()
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.3)
    assert await harness.audit() == []


def test_trusted_proxies_match_networks_and_mapped_addresses() -> None:
    trusted = TrustedProxies(["10.0.0.0/24", "2001:db8::5", "192.0.2.7/32"])
    assert "10.0.0.200" in trusted
    assert "::ffff:10.0.0.3" in trusted
    assert "2001:db8::5" in trusted
    assert "10.0.1.1" not in trusted
    assert "not an address" not in trusted
