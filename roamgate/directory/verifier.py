"""The `ldap` password verifier: the directory decides the password, the group and the state."""

from __future__ import annotations

import logging

from roamgate.directory.client import DirectoryError
from roamgate.directory.service import Directory
from roamgate.login.verifiers import Outcome, refusal_reason
from roamgate.store.base import UserRecord

log = logging.getLogger("roamgate.directory")


class LdapVerifier:
    """Accepts a password only when the directory binds it and the entry may use the gateway.

    A directory that cannot answer is UNAVAILABLE: the login fails closed, nothing is
    counted against the user, and the audit event names the cause.
    """

    name = "ldap"

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    async def verify(self, user: UserRecord, password: str) -> Outcome:
        if not password:
            refusal_reason.set("bad_password")
            return Outcome.REJECTED
        try:
            check = await self.directory.check_login(user.name, password)
        except DirectoryError as exc:
            log.warning("directory check of %s not decided: %s", user.name, exc)
            refusal_reason.set(f"directory_{exc.cause}")
            return Outcome.UNAVAILABLE
        refusal_reason.set(check.reason)
        return Outcome.ACCEPTED if check.accepted else Outcome.REJECTED
