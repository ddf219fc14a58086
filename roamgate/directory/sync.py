"""Provisioning from the directory: create members, disable leavers, keep attributes current.

One round reads the whole directory population once, then compares it with the gateway's
users. Disabling goes through accounts.set_user_enabled, so a leaver's travel windows end,
live sessions are asked to end (doors poll every session_check_seconds), device
certificates go on the CRL and web sessions are dropped. A user the sync disabled is enabled
again by the sync when they are back; one an admin disabled stays disabled.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from roamgate.accounts import set_user_enabled
from roamgate.callback.service import CallbackService, RegistrationError, check_address
from roamgate.config import CallbackSettings
from roamgate.directory.client import DirectoryEntry
from roamgate.directory.service import Directory
from roamgate.runtime import Runtime
from roamgate.store.base import CallbackPolicy, DuplicateError, UserRecord

log = logging.getLogger("roamgate.directory")

SYNC_ACTOR = "directory-sync"
# Directory names travel in IMAP LOGIN, SSH user names and audit lines, like CLI-made ones.
_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
_PHONE_NOISE = re.compile(r"[\s().-]")


@dataclass
class SyncReport:
    """What one round did, by user name."""

    members: int = 0
    created: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    disabled: dict[str, str] = field(default_factory=dict)  # name -> reason
    updated: dict[str, list[str]] = field(default_factory=dict)  # name -> what changed
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why nothing was done
    warnings: list[str] = field(default_factory=list)


async def sync_users(
    rt: Runtime,
    directory: Directory,
    *,
    actor: str = SYNC_ACTOR,
    audit_unchanged: bool = True,
    force: bool = False,
) -> SyncReport:
    """One round; raises DirectoryError (nothing changed) when the directory cannot answer.

    Without audit_unchanged (serve's periodic rounds) a round that changed nothing leaves no
    `directory_sync` event, so the trail holds changes, not a heartbeat every few minutes.
    """
    population = await directory.all_users()
    report = SyncReport()
    members: dict[str, DirectoryEntry] = {}
    known: dict[str, DirectoryEntry] = {}
    for entry in population:
        if not _NAME.fullmatch(entry.name):
            report.skipped[entry.name[:64]] = "name has characters a login cannot carry"
            continue
        known[entry.name] = entry
        if directory.allowed(entry) and not entry.disabled:
            members[entry.name] = entry
    report.members = len(members)
    users = {u.name: u for u in await rt.store.list_users()}

    for name, entry in sorted(members.items()):
        user = users.get(name)
        if user is None:
            user = await _create(rt, directory, entry, actor)
            if user is None:
                continue
            report.created.append(name)
        elif not user.enabled:
            if not await _disabled_by_sync(rt, name):
                report.skipped[name] = "disabled at the gateway by an admin"
                continue
            await set_user_enabled(rt, name, True, actor, reason="back_in_directory")
            report.enabled.append(name)
        changes = await _update(rt, directory, user, entry, actor, report)
        if changes and name not in report.created:
            report.updated[name] = changes

    if not members and any(u.enabled for u in users.values()):
        # An empty answer is more often a wrong filter or base than everybody leaving.
        report.warnings.append(
            "the directory names no member of the groups: nobody was disabled"
            " (check ldap.groups, user_base and user_filter)"
        )
        return report
    leaving: dict[str, str] = {}
    for name, user in sorted(users.items()):
        if not user.enabled or name in members:
            continue
        found = known.get(name)
        if found is None:
            leaving[name] = "not_in_directory"
        elif found.disabled:
            leaving[name] = "disabled_in_directory"
        else:
            leaving[name] = "not_in_group"
    cap = directory.settings.sync_max_disable
    if cap and len(leaving) > cap and not force:
        # Many leavers at once is likelier a directory that shows less than it should (an ACL,
        # a moved base) than a mass departure: stop, say so, let an admin confirm.
        report.warnings.append(
            f"{len(leaving)} users would be disabled, more than ldap.sync_max_disable ({cap}):"
            " nobody was disabled; check the directory, then run `roamgate user sync --force`"
        )
        await rt.auditor.record(
            "directory_sync",
            "fail",
            actor=actor,
            reason="too_many_disables",
            detail={"members": report.members, "would_disable": len(leaving), "cap": cap},
        )
        return report
    for name, reason in leaving.items():
        await set_user_enabled(rt, name, False, actor, reason=reason)
        report.disabled[name] = reason
    changed = report.created or report.enabled or report.disabled or report.updated
    if not changed and not audit_unchanged:
        return report
    await rt.auditor.record(
        "directory_sync",
        "ok",
        actor=actor,
        detail={
            "members": report.members,
            "created": len(report.created),
            "enabled": len(report.enabled),
            "disabled": len(report.disabled),
            "updated": len(report.updated),
        },
    )
    return report


async def _create(
    rt: Runtime, directory: Directory, entry: DirectoryEntry, actor: str
) -> UserRecord | None:
    profile = directory.profile_for(entry) or "lan"
    try:
        user = await rt.store.add_user(entry.name, rt.clock(), email=entry.mail, profile=profile)
    except DuplicateError:
        return None  # made by another node a moment ago; the next round looks at it
    await rt.auditor.record(
        "user_add", "ok", user=user.name, actor=actor, detail={"profile": user.profile}
    )
    return user


async def _update(
    rt: Runtime,
    directory: Directory,
    user: UserRecord,
    entry: DirectoryEntry,
    actor: str,
    report: SyncReport,
) -> list[str]:
    """Bring the directory's attributes and group mappings over; what changed."""
    changes: list[str] = []
    now = rt.clock()
    if directory.settings.mail_attribute and entry.mail != user.email:
        await rt.store.set_user_email(user.name, entry.mail, now)
        changes.append("email")
    profile = directory.profile_for(entry)
    if profile is not None and profile != user.profile:
        await rt.store.set_user_profile(user.name, profile, now)
        changes.append("profile")
    policy: CallbackPolicy | None = directory.callback_policy_for(entry)  # type: ignore[assignment]
    if policy is not None and policy != await rt.store.get_callback_policy(user.id):
        await rt.store.set_callback_policy(user.id, policy, now)
        changes.append("callback_policy")
    number_attr = directory.settings.callback_number_attribute
    if number_attr and await _sync_number(rt, user, entry, actor, report):
        changes.append("callback_number")
    if changes:
        await rt.auditor.record(
            "user_set", "ok", user=user.name, actor=actor, detail={"changed": ",".join(changes)}
        )
    return changes


async def _sync_number(
    rt: Runtime, user: UserRecord, entry: DirectoryEntry, actor: str, report: SyncReport
) -> bool:
    """The directory is the source of the user's webhook (SMS/voice) number."""
    number = None
    if entry.callback_number is not None:
        try:
            number = check_address("webhook", _PHONE_NOISE.sub("", entry.callback_number))
        except RegistrationError:
            # Keep what is registered rather than leave the user with no number at all.
            report.warnings.append(f"{user.name}: the directory's callback number is not usable")
            return False
    service = rt.callbacks or CallbackService(
        CallbackSettings(), rt.store, rt.box, rt.auditor, node=rt.config.hostname, clock=rt.clock
    )
    changed = False
    current = [r for r in await rt.store.list_callbacks(user.id) if r.channel == "webhook"]
    for record in current:
        if record.address != number:
            changed |= await service.remove(user, record.id, actor=actor)
    if number is not None and all(r.address != number for r in current):
        await service.register(user, "webhook", number, actor=actor)
        changed = True
    return changed


async def _disabled_by_sync(rt: Runtime, name: str) -> bool:
    """Whether the user's last disable was the sync's own (then the sync may undo it)."""
    events = await rt.store.query_audit(user_name=name, kind="user_disable", limit=1)
    return bool(events) and events[-1].actor == SYNC_ACTOR
