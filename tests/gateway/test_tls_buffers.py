"""Adaptive TLS read buffers: a bulk transfer reads big, an idle connection keeps a small buffer."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import hashlib
import os
import ssl
from pathlib import Path
from typing import Any

from roamgate.gateway import tls_buffers
from roamgate.pki import cert_pem, issue_server_cert, key_pem, make_ca


def _contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca_key, ca = make_ca("test CA")
    key, cert = issue_server_cert(ca_key, ca, "localhost", [])
    (tmp / "c.pem").write_bytes(cert_pem(cert))
    (tmp / "k.pem").write_bytes(key_pem(key))
    (tmp / "ca.pem").write_bytes(cert_pem(ca))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    client = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    return server, client


def test_buffer_grows_for_bulk_and_shrinks_when_quiet(tmp_path: Path) -> None:
    assert tls_buffers.install()
    assert asyncio.sslproto.SSLProtocol.max_size == tls_buffers.IDLE_BUFFER
    server_ctx, client_ctx = _contexts(tmp_path)
    payload = os.urandom(8 * 1024 * 1024)
    sizes: list[int] = []

    async def main() -> str:
        got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            proto: Any = getattr(writer.transport, "_ssl_protocol")  # noqa: B009 (private on purpose)
            sizes.append(len(proto._ssl_buffer))
            digest = hashlib.sha256()
            left = len(payload)
            while left:
                chunk = await reader.read(left)
                digest.update(chunk)
                left -= len(chunk)
            sizes.append(len(proto._ssl_buffer))  # after the bulk transfer
            assert await reader.readexactly(5) == b"ping\n"
            sizes.append(len(proto._ssl_buffer))  # after a short read
            got.set_result(digest.hexdigest())
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        writer.write(payload)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"ping\n")
        await writer.drain()
        digest = await asyncio.wait_for(got, 60)
        writer.close()
        await reader.read()
        server.close()
        await server.wait_closed()
        return digest

    assert asyncio.run(main()) == hashlib.sha256(payload).hexdigest()
    first, after_bulk, after_short = sizes
    assert first == tls_buffers.IDLE_BUFFER
    assert after_bulk > tls_buffers.IDLE_BUFFER  # grew while the bulk data streamed
    assert after_short == tls_buffers.IDLE_BUFFER
