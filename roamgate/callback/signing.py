"""HMAC signatures of provider requests and status callbacks: timestamp, freshness, replay.

Both directions sign `<timestamp>.<body>` with HMAC-SHA256 under the provider secret and send
X-Roamgate-Timestamp (epoch seconds) and X-Roamgate-Signature (`v1=<hex>`). A receiver refuses
a bad signature, a timestamp outside the allowed age, and a signature it has already seen.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

TIMESTAMP_HEADER = "X-Roamgate-Timestamp"
SIGNATURE_HEADER = "X-Roamgate-Signature"
# Signatures remembered against replay; older ones fall out, and are stale by then anyway.
REPLAY_CACHE_SIZE = 10_000


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signed_headers(secret: bytes, body: bytes, now: float) -> dict[str, str]:
    ts = int(now)
    return {
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, ts, body),
        "Content-Type": "application/json",
    }


class SignatureChecker:
    """Checks signed requests: HMAC, freshness, and each signature accepted once."""

    def __init__(
        self, secret: bytes, max_age: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._secret = secret
        self.max_age = max_age
        self.clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """None if the request is genuine and new, else the reason (for the audit trail)."""
        ts_text = headers.get(TIMESTAMP_HEADER, "")
        given = headers.get(SIGNATURE_HEADER, "")
        if not ts_text.isdigit() or len(ts_text) > 12 or not given or len(given) > 80:
            return "unsigned"
        ts = int(ts_text)
        expected = sign(self._secret, ts, body)
        if not hmac.compare_digest(expected.encode(), given.encode()):
            return "bad_signature"
        now = self.clock()
        if abs(now - ts) > self.max_age:
            return "stale"
        if expected in self._seen:
            return "replayed"
        self._seen[expected] = now
        while len(self._seen) > REPLAY_CACHE_SIZE:
            self._seen.popitem(last=False)
        return None
