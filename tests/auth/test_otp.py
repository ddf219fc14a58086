"""TOTP/HOTP: RFC vectors, oathtool as an independent generator, windows, replay, resync."""

from __future__ import annotations

import base64
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roamgate.auth import otp
from roamgate.auth.otp import HotpParams, TotpParams, Verdict
from tests.conftest import require_program

RFC4226_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC4226_CODES = [
    "755224",
    "287082",
    "359152",
    "969429",
    "338314",
    "254676",
    "287922",
    "162583",
    "399871",
    "520489",
]


@pytest.mark.parametrize("counter", range(10))
def test_rfc4226_vectors(counter: int) -> None:
    assert otp.hotp_code(HotpParams(RFC4226_SECRET), counter) == RFC4226_CODES[counter]


_SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890" * 6 + b"1234",
}
# RFC 6238 Appendix B: (time, sha1, sha256, sha512), eight digits.
RFC6238 = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("t", "sha1", "sha256", "sha512"), RFC6238)
def test_rfc6238_vectors(t: int, sha1: str, sha256: str, sha512: str) -> None:
    for algorithm, expected in (("sha1", sha1), ("sha256", sha256), ("sha512", sha512)):
        p = TotpParams(base64.b32encode(_SEEDS[algorithm]).decode(), 8, 30, algorithm)  # type: ignore[arg-type]
        assert otp.totp_code(p, otp.time_step(t, 30)) == expected
        check = otp.check_totp(p, expected, t, None, window=0)
        assert check.verdict is Verdict.OK


def _oathtool(*args: str) -> str:
    exe = require_program("oathtool")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


@pytest.mark.peer
@settings(max_examples=15, deadline=None)
@given(
    seed=st.binary(min_size=20, max_size=32),
    t=st.integers(min_value=0, max_value=4_000_000_000),
    digits=st.sampled_from([6, 7, 8]),
)
def test_totp_agrees_with_oathtool(seed: bytes, t: int, digits: int) -> None:
    secret = base64.b32encode(seed).decode().rstrip("=")
    theirs = _oathtool("--totp", "-b", "-d", str(digits), "-N", f"@{t}", secret)
    p = TotpParams(secret, digits)
    assert otp.totp_code(p, otp.time_step(t, 30)) == theirs
    assert otp.check_totp(p, theirs, t, None).verdict is Verdict.OK


@pytest.mark.peer
@settings(max_examples=15, deadline=None)
@given(seed=st.binary(min_size=20, max_size=32), counter=st.integers(0, 10**9))
def test_hotp_agrees_with_oathtool(seed: bytes, counter: int) -> None:
    secret = base64.b32encode(seed).decode().rstrip("=")
    theirs = _oathtool("--hotp", "-b", "-c", str(counter), secret)
    assert otp.hotp_code(HotpParams(secret), counter) == theirs


@pytest.mark.peer
def test_totp_sha256_agrees_with_oathtool() -> None:
    secret = otp.new_secret()
    theirs = _oathtool("--totp=sha256", "-b", "-N", "@1700000000", secret)
    p = TotpParams(secret, 6, 30, "sha256")
    assert otp.check_totp(p, theirs, 1_700_000_000, None, window=0).verdict is Verdict.OK


P = TotpParams(otp.new_secret())
NOW = 1_700_000_015.0  # step 56666667, 15 s into it
STEP = otp.time_step(NOW, 30)


@pytest.mark.parametrize(
    ("offset", "verdict"),
    [(-2, Verdict.WRONG), (-1, Verdict.OK), (0, Verdict.OK), (1, Verdict.OK), (2, Verdict.WRONG)],
)
def test_window_edges(offset: int, verdict: Verdict) -> None:
    code = otp.totp_code(P, STEP + offset)
    check = otp.check_totp(P, code, NOW, None, window=1, drift_search=5)
    assert check.verdict is verdict
    if verdict is Verdict.WRONG:
        assert check.drift_steps == offset  # the help desk learns how far off the clock is
        assert check.new_state is None


def test_window_edges_at_step_boundaries() -> None:
    code = otp.totp_code(P, STEP)
    first_second = STEP * 30.0
    last_moment = STEP * 30.0 + 29.999
    # One step later the same code is still inside the +-1 window; two steps later it is not.
    assert otp.check_totp(P, code, first_second + 30, None).verdict is Verdict.OK
    assert otp.check_totp(P, code, last_moment + 30, None).verdict is Verdict.OK
    assert otp.check_totp(P, code, first_second + 60, None).verdict is Verdict.WRONG
    assert otp.check_totp(P, code, first_second - 30, None).verdict is Verdict.OK
    assert otp.check_totp(P, code, last_moment - 60, None).verdict is Verdict.WRONG


def test_window_zero_accepts_only_the_current_step() -> None:
    assert otp.check_totp(P, otp.totp_code(P, STEP), NOW, None, window=0).verdict is Verdict.OK
    assert (
        otp.check_totp(P, otp.totp_code(P, STEP - 1), NOW, None, window=0).verdict is Verdict.WRONG
    )


def test_replay_rejected_and_older_codes_after_a_newer_one() -> None:
    code = otp.totp_code(P, STEP)
    first = otp.check_totp(P, code, NOW, None)
    assert first.verdict is Verdict.OK and first.new_state == STEP
    assert otp.check_totp(P, code, NOW, STEP).verdict is Verdict.REPLAY
    older = otp.totp_code(P, STEP - 1)
    assert otp.check_totp(P, older, NOW, STEP).verdict is Verdict.REPLAY
    newer = otp.totp_code(P, STEP + 1)
    assert otp.check_totp(P, newer, NOW + 30, STEP).verdict is Verdict.OK


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "abcdef", "１２３４５６", "12 34 5x"])
def test_malformed_codes(bad: str) -> None:
    assert otp.check_totp(P, bad, NOW, None).verdict is Verdict.MALFORMED


def test_spaces_and_dashes_are_ignored() -> None:
    code = otp.totp_code(P, STEP)
    assert otp.check_totp(P, f"{code[:3]} {code[3:]}", NOW, None).verdict is Verdict.OK
    assert otp.check_totp(P, f"{code[:3]}-{code[3:]}", NOW, None).verdict is Verdict.OK


H = HotpParams(otp.new_secret())


def test_hotp_look_ahead_and_replay() -> None:
    assert otp.check_hotp(H, otp.hotp_code(H, 0), 0).new_state == 1
    within = otp.check_hotp(H, otp.hotp_code(H, 10), 0, look_ahead=10)
    assert within.verdict is Verdict.OK and within.new_state == 11 and within.drift_steps == 10
    beyond = otp.check_hotp(H, otp.hotp_code(H, 11), 0, look_ahead=10)
    assert beyond.verdict is Verdict.WRONG
    replay = otp.check_hotp(H, otp.hotp_code(H, 4), 5)
    assert replay.verdict is Verdict.REPLAY and replay.matched == 4


def test_hotp_resync_needs_two_consecutive_codes() -> None:
    a, b = otp.hotp_code(H, 150), otp.hotp_code(H, 151)
    ok = otp.resync_hotp(H, a, b, 0, search=200)
    assert ok.verdict is Verdict.OK and ok.new_state == 152
    assert otp.resync_hotp(H, a, otp.hotp_code(H, 152), 0).verdict is Verdict.WRONG
    assert otp.resync_hotp(H, b, a, 0).verdict is Verdict.WRONG
    assert otp.resync_hotp(H, a, b, 0, search=100).verdict is Verdict.WRONG


def test_provisioning_uris() -> None:
    uri = otp.totp_uri(P, "alice@example.com", "roamgate")
    assert uri.startswith("otpauth://totp/roamgate:alice%40example.com?")
    assert f"secret={P.secret}" in uri and "issuer=roamgate" in uri
    huri = otp.hotp_uri(H, "bob", "roamgate", 0)
    assert huri.startswith("otpauth://hotp/") and "counter=0" in huri
