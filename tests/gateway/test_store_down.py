"""The database goes away under a running node: logins fail closed, one log line, no secret."""

from __future__ import annotations

import pytest

from roamgate.demo.dovecot import PrivateDovecot
from roamgate.demo.postgres import PrivatePostgres
from tests.gateway.conftest import read_line, read_until_tagged, running_gateway


def test_logins_fail_closed_while_postgres_is_down(
    dovecot: PrivateDovecot, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = PrivatePostgres().start()
    try:
        url = server.url(server.create_database())
        d = tmp_path_factory.mktemp("store_down") / "gw"
        with running_gateway(dovecot, d, users={"bob": "x"}, extra_init=("--store", url)) as gw:
            client = gw.login("bob")  # the store works
            client.logout()
            server.stop()
            sock = gw.raw()
            try:
                code = gw.code("bob")
                sock.sendall(b"a LOGIN bob {%d}\r\n" % len("bob's Secret pass" + code))
                lines = [read_line(sock)]
                if lines[0].startswith(b"+"):
                    sock.sendall(("bob's Secret pass" + code).encode() + b"\r\n")
                    lines = read_until_tagged(sock, b"a")
            finally:
                sock.close()
            # No OK: the code could not be used up, so the login is not let through.
            assert not any(line.startswith(b"a OK") for line in lines), lines
            # A temporary refusal (the login's store call failed), or the session ended when
            # the store was found gone before the login: either way [UNAVAILABLE], no OK.
            assert lines[-1] in (
                b"",
                b"* BYE [UNAVAILABLE] Service unavailable, try again later.\r\n",
                b"a NO [UNAVAILABLE] Authentication service unavailable, try again later.\r\n",
            )
            logs = gw.logs()
            # One line naming the database (without its password), whichever path saw it.
            assert "database postgresql://roamgate@127.0.0.1:" in logs
            assert server.password not in logs and "Traceback" not in logs
    finally:
        server.stop()
