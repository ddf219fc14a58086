"""A TLS-door client that reconnects re-syncs cheaply: no code in the travel window, QRESYNC relayed."""

from __future__ import annotations

import imaplib
import re

from roamgate.demo.dovecot import PrivateDovecot
from tests.gateway.conftest import PASSWORDS, Gateway

USER = "dave"
FOLDER = "Resync"


def _message(n: int) -> bytes:
    return f"From: a@example.com\r\nSubject: resync {n}\r\nMessage-ID: <resync-{n}@x>\r\n\r\nbody {n}\r\n".encode()


def _status(client: imaplib.IMAP4, what: str) -> int:
    typ, data = client.status(FOLDER, f"({what})")
    assert typ == "OK"
    found = re.search(rf"{what} (\d+)".encode(), bytes(data[0] or b""))
    assert found is not None, data
    return int(found.group(1))


def _untagged(client: imaplib.IMAP4, name: str) -> list[bytes]:
    return [bytes(x) for x in client.untagged_responses.pop(name, []) if isinstance(x, bytes)]


def test_a_reconnecting_client_gets_only_what_changed_with_qresync(
    gateway: Gateway, dovecot: PrivateDovecot
) -> None:
    with dovecot.imap(USER, PASSWORDS[USER]) as direct:
        direct.create(FOLDER)
        for n in (1, 2, 3):
            assert direct.append(FOLDER, "", None, _message(n))[0] == "OK"
    # First session: password and code.
    client = gateway.login(USER)
    typ, data = client.capability()  # after login: the upstream's, as the proxy relays them
    caps = bytes(data[0] or b"").upper().split()
    assert b"CONDSTORE" in caps and b"QRESYNC" in caps
    typ, data = client._simple_command("ENABLE", "QRESYNC")
    assert typ == "OK"
    assert b"QRESYNC" in b" ".join(_untagged(client, "ENABLED"))
    assert client.select(FOLDER)[0] == "OK"
    uidvalidity = _status(client, "UIDVALIDITY")
    modseq = _status(client, "HIGHESTMODSEQ")
    client.logout()
    # Meanwhile, on the mail server: one message flagged, one expunged.
    with dovecot.imap(USER, PASSWORDS[USER]) as direct:
        direct.select(FOLDER)
        direct.uid("STORE", "2", "+FLAGS", "(\\Flagged)")
        direct.uid("STORE", "3", "+FLAGS", "(\\Deleted)")
        direct.expunge()
    # The client comes back within the travel window: the password alone, no code.
    again = gateway.imaps()
    assert again.login(USER, PASSWORDS[USER])[0] == "OK"
    assert again._simple_command("ENABLE", "QRESYNC")[0] == "OK"
    typ, data = again._simple_command("SELECT", f"{FOLDER} (QRESYNC ({uidvalidity} {modseq}))")
    assert typ == "OK", data
    vanished = _untagged(again, "VANISHED")
    fetches = _untagged(again, "FETCH")
    again.logout()
    assert vanished == [b"(EARLIER) 3"]
    # Only the changed message is told again, with its new flag and mod-sequence.
    assert len(fetches) == 1, fetches
    assert b"UID 2" in fetches[0] and b"\\Flagged" in fetches[0] and b"MODSEQ" in fetches[0]
    logins = [e for e in gateway.audit() if e["kind"] == "auth" and e.get("user") == USER]
    assert logins[-1]["result"] == "ok" and logins[-1]["factor"] == "password+window", logins[-1]
