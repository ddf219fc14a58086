"""A failed login takes the same time whichever factor failed, at the IMAPS and the SSH door.

The upstream here is a Dovecot with its own failure delay (1 s, as real servers have), so a
wrong password costs more upstream than a wrong code or an unknown user; the gateway's
failure delay, counted from the start of the attempt, has to hide that difference.
"""

from __future__ import annotations

import asyncio
import imaplib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import asyncssh
import pytest

from roamgate.demo.dovecot import PrivateDovecot
from tests.conftest import require_program
from tests.gateway.conftest import PASSWORDS, Gateway, running_gateway

UPSTREAM_DELAY_S = 1  # Dovecot's auth_failure_delay takes whole seconds
DELAY_MS = 1500  # the gateway's: above the upstream's check time, as the config asks
TRIES = 3  # per case; far below auth.lockout.user_threshold (10)
SPREAD_S = 0.15  # what a client may tell apart at most


@pytest.fixture(scope="module")
def slow_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    require_program("oathtool")
    tmp = tmp_path_factory.mktemp("timing")
    with PrivateDovecot(tmp / "dovecot", auth_failure_delay=UPSTREAM_DELAY_S) as dovecot:
        for user, password in PASSWORDS.items():
            dovecot.add_user(user, password)
        with running_gateway(
            dovecot,
            tmp / "gw",
            users={"bob": "", "carol": "", "dave": "", "erin": ""},
            proxy_settings={"failure_delay_ms": DELAY_MS},
            replace={
                "  keepalive_seconds: 30": f"  keepalive_seconds: 30\n  failure_delay_ms: {DELAY_MS}"
            },
        ) as gw:
            yield gw


def _medians(cases: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Run the cases in turns (so drift hits each alike); the median time of each."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(TRIES):
        for name, attempt in cases.items():
            times[name].append(attempt())
    medians = {name: statistics.median(t) for name, t in times.items()}
    print({name: round(m * 1000) for name, m in medians.items()}, "ms")
    return medians


def _assert_alike(medians: dict[str, float]) -> None:
    assert max(medians.values()) - min(medians.values()) < SPREAD_S, medians
    assert min(medians.values()) >= DELAY_MS / 1000, medians


def test_imaps_failures_take_the_same_time_whichever_factor_failed(
    slow_gateway: Gateway,
) -> None:
    gw = slow_gateway

    def imap_attempt(user: str, password: str, code: str) -> float:
        client = gw.imaps()
        try:
            began = time.monotonic()
            with pytest.raises(imaplib.IMAP4.error):
                client.login(user, password + code)
            return time.monotonic() - began
        finally:
            client.shutdown()

    medians = _medians(
        {
            "right password, wrong code": lambda: imap_attempt(
                "carol", PASSWORDS["carol"], "000000"
            ),
            "wrong password, right code": lambda: imap_attempt(
                "dave", "not dave's password", gw.code("dave")
            ),
            "unknown user": lambda: imap_attempt("nosuch", "whatever", "123456"),
        }
    )
    _assert_alike(medians)
    fails = [e["reason"] for e in gw.audit() if e["kind"] == "auth" and e["result"] == "fail"]
    assert {"bad_code:wrong", "bad_password", "unknown_user"} <= set(fails)


class _Client(asyncssh.SSHClient):
    """Answers the password and code prompts and notes when the code went out."""

    def __init__(self, password: str, code: str) -> None:
        self.answers = {"Password: ": password, "One-time code: ": code}
        self.tries = 0
        self.answered = 0.0

    def kbdint_auth_requested(self) -> str | None:
        self.tries += 1
        return "" if self.tries == 1 else None

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str]:
        self.answered = time.monotonic()
        return [self.answers.get(p, "") for p, _echo in prompts]


async def _ssh_attempt(gw: Gateway, user: str, password: str, code: str) -> float:
    client = _Client(password, code)
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.create_connection(
            lambda: client,
            "127.0.0.1",
            gw.ssh_port,
            username=user,
            known_hosts=None,
            agent_path=None,
            preferred_auth="keyboard-interactive",
            connect_timeout=15,
        )
    return time.monotonic() - client.answered


def test_ssh_failures_take_the_same_time_whichever_factor_failed(slow_gateway: Gateway) -> None:
    gw = slow_gateway

    def attempt(user: str, password: str, code: str) -> Callable[[], float]:
        return lambda: asyncio.run(_ssh_attempt(gw, user, password, code))

    medians = _medians(
        {
            "right password, wrong code": attempt("erin", PASSWORDS["erin"], "000000"),
            "wrong password, right code": lambda: attempt(
                "bob", "not bob's password", gw.code("bob")
            )(),
            "unknown user": attempt("nosuch", "whatever", "123456"),
        }
    )
    _assert_alike(medians)
