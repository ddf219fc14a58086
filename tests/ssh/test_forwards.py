"""The forward allow-list: named services, exact targets for named users, nothing else."""

from __future__ import annotations

import pytest

from roamgate.config import SshForward
from roamgate.ssh.forwards import Refusal, Service, resolve

FORWARDS = {
    "wiki": SshForward("10.0.0.5:80", ("alice",)),
    "ldap": SshForward("[2001:db8::7]:636", ("*",)),
    "hr": SshForward("hr.corp.example:443", ()),
}
SMTP = ("mail.corp.example", 587)


def ask(host: str, port: int, user: str = "alice", smtp: tuple[str, int] | None = SMTP) -> object:
    return resolve(host, port, user, forwards=FORWARDS, submission=smtp)


def test_imap_is_the_gateways_own_proxy_whatever_the_port() -> None:
    assert ask("imap", 143) == Service("imap", "imap")
    assert ask("IMAP", 993) == Service("imap", "imap")


def test_submission_goes_to_the_upstream_smtp_server_or_nowhere() -> None:
    assert ask("submission", 587) == Service("submission", "tcp", "mail.corp.example", 587)
    assert ask("submission", 587, smtp=None) == Refusal("submission_not_configured")


def test_a_forward_by_name_or_by_exact_target_for_the_users_it_names() -> None:
    assert ask("wiki", 8080) == Service("wiki", "tcp", "10.0.0.5", 80)
    assert ask("10.0.0.5", 80) == Service("wiki", "tcp", "10.0.0.5", 80)
    assert ask("wiki", 80, user="bob") == Refusal("forward_not_allowed_for_user")
    assert ask("2001:db8::7", 636, user="bob") == Service("ldap", "tcp", "2001:db8::7", 636)
    # Listed with no users: nobody.
    assert ask("hr", 443) == Refusal("forward_not_allowed_for_user")


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("10.0.0.5", 81),  # right host, wrong port
        ("10.0.0.6", 80),
        ("mail.corp.example", 143),  # the upstream IMAP server itself: only via `imap`
        ("mail.corp.example", 587),  # the SMTP server by address: only via `submission`
        ("127.0.0.1", 22),
        ("localhost", 9993),
        ("", 0),
    ],
)
def test_everything_else_is_refused(host: str, port: int) -> None:
    assert ask(host, port) == Refusal("destination_not_allowed")
