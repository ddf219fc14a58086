"""The SMS/voice provider client: one signed JSON POST per message.

The body names the message id (for the provider's status callback), the kind (`code`,
`approve` or `notice`), the registered number and what to deliver. The provider answers 2xx
when it has taken the message; delivery is reported later to POST /callback/status.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import aiohttp

from roamgate.callback.signing import signed_headers
from roamgate.store.base import JsonValue

log = logging.getLogger("roamgate.callback")


class Provider:
    """Posts messages to the configured provider URL."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        timeout: float,
        status_url: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self._secret = secret
        self.timeout = timeout
        self.status_url = status_url
        self.clock = clock

    async def send(self, message_id: str, kind: str, to: str, **content: JsonValue) -> bool:
        """True if the provider took the message (2xx). Failures are logged, never raised."""
        payload: dict[str, JsonValue] = {"id": message_id, "kind": kind, "to": to, **content}
        if self.status_url is not None:
            payload["status_url"] = self.status_url
        body = json.dumps(payload, sort_keys=True).encode()
        headers = signed_headers(self._secret, body, self.clock())
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http,
                http.post(self.url, data=body, headers=headers, allow_redirects=False) as resp,
            ):
                await resp.read()
                if 200 <= resp.status < 300:
                    return True
                log.warning(
                    "callback provider refused message %s: HTTP %d", message_id, resp.status
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # The exception text may quote the URL with a token in it: only its type is logged.
            log.warning("callback provider unreachable for %s: %s", message_id, type(exc).__name__)
        return False
