"""The callback state machine: a transcript per path, then random event sequences (rules 1-6)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roamgate.auth.callback import (
    CHANNELS,
    Audit,
    CallbackMachine,
    Confirmation,
    Deny,
    Event,
    Notify,
    PlaceCall,
    ProviderAccepted,
    ProviderStatus,
    RemoteApproval,
    Start,
    State,
    Tick,
    secret_digest,
)

ENDPOINT = "+15550100"
SECRET = b"482913"


def machine(channel: str = "webhook", timeout: float = 120.0) -> CallbackMachine:
    expected = None if channel == "approve" else secret_digest(SECRET)
    return CallbackMachine(channel, ENDPOINT, expected, timeout=timeout)


def test_a_code_confirms_once() -> None:
    m = machine()
    assert m.handle(Start(0)) == [
        Audit("callback_start", "ok", "webhook"),
        PlaceCall("webhook", ENDPOINT),
    ]
    assert m.state.value == "calling"
    [notice] = m.handle(ProviderAccepted(1))
    assert isinstance(notice, Notify)
    assert m.handle(ProviderStatus(2, "delivered")) == []
    assert m.handle(Confirmation(3, SECRET)) == [
        Audit("callback_result", "ok", "webhook", "confirmed", None)
    ]
    assert m.state is State.CONFIRMED
    assert m.handle(Confirmation(4, SECRET)) == []  # final: nothing more happens


def test_wrong_codes_fail_after_the_limit() -> None:
    m = machine()
    m.handle(Start(0))
    m.handle(ProviderAccepted(0))
    assert isinstance(m.handle(Confirmation(1, b"000000"))[0], Notify)
    m.handle(Confirmation(1, b"000001"))
    [result] = m.handle(Confirmation(1, b"000002"))
    assert result == Audit("callback_result", "fail", "webhook", "failed", "wrong_secret")
    assert m.handle(Confirmation(2, SECRET)) == []
    assert m.state is State.FAILED


def test_a_late_right_answer_expires() -> None:
    m = machine(timeout=10)
    m.handle(Start(100))
    m.handle(ProviderAccepted(101))
    [result] = m.handle(Confirmation(110, SECRET))
    assert result == Audit("callback_result", "fail", "webhook", "expired", "timeout")


def test_a_failed_delivery_fails_and_approval_needs_the_approve_channel() -> None:
    m = machine()
    m.handle(Start(0))
    assert m.handle(ProviderStatus(1, "failed"))[0] == Audit(
        "callback_result", "fail", "webhook", "failed", "provider_failed"
    )
    code = machine("dialback")
    code.handle(Start(0))
    code.handle(ProviderAccepted(0))
    assert code.handle(RemoteApproval(1)) == []
    approve = machine("approve")
    approve.handle(Start(0))
    assert approve.handle(RemoteApproval(1)) == []  # nothing was sent yet
    approve.handle(ProviderAccepted(1))
    assert approve.handle(Confirmation(2, b"")) == []  # approve takes no typed secret
    assert approve.handle(RemoteApproval(2))[0].outcome == "confirmed"  # type: ignore[union-attr]


def test_an_oversized_answer_is_wrong_and_bad_arguments_are_refused() -> None:
    m = machine()
    m.handle(Start(0))
    m.handle(ProviderAccepted(0))
    m.handle(Confirmation(1, SECRET + b"x" * 10_000))
    assert m.attempts == 1
    with pytest.raises(ValueError):
        CallbackMachine("carrier-pigeon", ENDPOINT, None)
    with pytest.raises(ValueError):
        CallbackMachine("webhook", ENDPOINT, None)


def _events(channel: str) -> st.SearchStrategy[list[Event]]:
    now = st.floats(min_value=0, max_value=300, allow_nan=False)
    secrets = st.binary(max_size=12).filter(lambda b: b != SECRET)
    event = st.one_of(
        st.builds(Start, now),
        st.builds(ProviderAccepted, now),
        st.builds(ProviderStatus, now, st.sampled_from(["delivered", "failed", "queued"])),
        st.builds(Confirmation, now, secrets),
        st.builds(Deny, now),
        st.builds(Tick, now),
        *([st.builds(RemoteApproval, now)] if channel != "approve" else []),
    )
    return st.lists(event, max_size=40)


@settings(max_examples=300, deadline=None)
@given(channel=st.sampled_from(CHANNELS), data=st.data())
def test_random_events_never_confirm_without_the_secret(channel: str, data: st.DataObject) -> None:
    m = machine(channel)
    calls: list[PlaceCall] = []
    finals = 0
    for event in data.draw(_events(channel)):
        actions = m.handle(event)
        calls += [a for a in actions if isinstance(a, PlaceCall)]
        finals += sum(1 for a in actions if isinstance(a, Audit) and a.kind == "callback_result")
        assert all(SECRET.decode() not in repr(a) for a in actions)  # rule 6
    assert m.state is not State.CONFIRMED  # rule 3
    assert all(c.endpoint == ENDPOINT and c.channel == channel for c in calls)  # rule 1
    assert len(calls) <= 1  # rule 2
    assert finals == (1 if m.done else 0)  # rule 6


@settings(max_examples=200, deadline=None)
@given(data=st.data(), channel=st.sampled_from(("webhook", "dialback")))
def test_the_right_secret_confirms_only_in_time_and_while_waiting(
    data: st.DataObject, channel: str
) -> None:
    m = machine(channel, timeout=60)
    before = data.draw(_events(channel))
    for event in before:
        m.handle(event)
    state, deadline = m.state, m.deadline
    at = data.draw(st.floats(min_value=0, max_value=300, allow_nan=False))
    m.handle(Confirmation(at, SECRET))
    if m.state is State.CONFIRMED:
        assert state is State.AWAITING_CONFIRMATION  # rule 3
        assert deadline is not None and at < deadline  # rule 5
