"""The submission door behind a load balancer: the PROXY header's client is who sent."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

from roamgate.demo.dovecot import free_port
from tests.gateway.conftest import running_gateway, wait_for_port
from tests.submission.conftest import SUB_USERS, SubmissionGateway, message

CLIENT = "192.0.2.9"  # TEST-NET-1: only ever a name in a header, never a destination


def test_a_proxy_header_names_the_client(sub_gw: SubmissionGateway, tmp_path: Path) -> None:
    smtps_port = free_port()
    with running_gateway(
        sub_gw.gw.dovecot,
        tmp_path / "gw",
        users={"carol": SUB_USERS["carol"]},
        extra_init=(
            "--upstream-smtp", f"127.0.0.1:{sub_gw.postfix.port}",
            "--submission-port", str(smtps_port),
            "--submission-starttls-port", str(free_port()),
        ),
        replace={
            f"    port: {smtps_port}\n": f"    port: {smtps_port}\n    proxy_protocol: true\n",
            'hostname: "localhost"\n': 'hostname: "localhost"\ntrusted_proxies: ["127.0.0.1"]\n',
            "  # sender_domain: example.com ": "  sender_domain: example.com ",
        },
    ) as gw:  # fmt: skip
        wait_for_port(smtps_port, gw.process, gw.log_file)
        raw = socket.create_connection(("127.0.0.1", smtps_port), timeout=30)
        raw.sendall(f"PROXY TCP4 {CLIENT} 127.0.0.1 40001 {smtps_port}\r\n".encode())
        with (
            gw.context().wrap_socket(raw, server_hostname="127.0.0.1") as sock,
            sock.makefile("rb") as stream,
        ):

            def say(line: bytes) -> bytes:
                sock.sendall(line + b"\r\n")
                reply = stream.readline()
                while reply[3:4] == b"-":
                    reply = stream.readline()
                return reply

            assert stream.readline().startswith(b"220")
            assert say(b"EHLO behind-the-balancer").startswith(b"250")
            blob = base64.b64encode(f"\0carol\0{SUB_USERS['carol']}{gw.code('carol')}".encode())
            assert say(b"AUTH PLAIN " + blob).startswith(b"235")
            assert say(b"MAIL FROM:<carol@example.com>").startswith(b"250")
            assert say(b"RCPT TO:<x@example.com>").startswith(b"250")
            assert say(b"DATA").startswith(b"354")
            body = message("carol@example.com", "x@example.com", "proxied", "via the balancer")
            assert say(body + b".").startswith(b"250")
            say(b"QUIT")
        audit = gw.audit()
    delivered = sub_gw.postfix.wait_for(b"via the balancer")
    assert f"([{CLIENT}])".encode() in delivered
    logins = [e for e in audit if e["kind"] == "auth" and e["door"] == "submissions"]
    assert logins and logins[-1]["source"] == CLIENT and logins[-1]["result"] == "ok"
    sent = [e for e in audit if e["kind"] == "submission_message"]
    assert sent and sent[-1]["source"] == CLIENT
