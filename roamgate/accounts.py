"""Account actions shared by the CLI and the admin pages: each one audited with its actor."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from roamgate.devices import DeviceError, publish_crl
from roamgate.runtime import Runtime

log = logging.getLogger("roamgate.accounts")


@dataclass(frozen=True)
class DisableReport:
    windows: int
    sessions: int
    devices: int
    web_sessions: int


async def set_user_enabled(
    rt: Runtime, name: str, enabled: bool, actor: str, *, reason: str | None = None
) -> DisableReport | None:
    """Enable or disable a user; None if there is no such user.

    Someone who leaves is shut out now, not when a window or a certificate runs out: their
    travel windows end, live sessions are asked to end, device certificates go on the CRL,
    web sessions are dropped.
    """
    now = rt.clock()
    if not await rt.store.set_user_enabled(name, enabled, now):
        return None
    report = DisableReport(0, 0, 0, 0)
    if not enabled:
        windows = await rt.store.revoke_user_travel_windows(name, now)
        ended = 0
        for s in await rt.store.list_sessions():
            if s.user_name == name and await rt.store.request_session_end(s.id, now):
                ended += 1
        devices = await rt.store.revoke_user_devices(name, now)
        web = await rt.store.delete_web_sessions(user_name=name)
        report = DisableReport(windows, ended, devices, web)
        if devices:
            await refresh_crl(rt)
    await rt.auditor.record(
        "user_enable" if enabled else "user_disable",
        "ok",
        user=name,
        actor=actor,
        reason=reason,
        detail={
            "windows": report.windows,
            "sessions": report.sessions,
            "devices": report.devices,
            "web_sessions": report.web_sessions,
        },
    )
    return report


async def revoke_device(rt: Runtime, device_id: str, actor: str) -> bool:
    """Put a device certificate on the CRL; the TLS doors refuse it from the next handshake."""
    device = await rt.store.get_device(device_id)
    if device is None or not await rt.store.revoke_device(device_id, rt.clock()):
        return False
    await rt.auditor.record(
        "device_revoke",
        "ok",
        user=device.user_name,
        actor=actor,
        detail={"device_id": device.id, "serial": device.serial, "name": device.name},
    )
    await refresh_crl(rt)
    return True


async def refresh_crl(rt: Runtime) -> None:
    """Rewrite the CRL file; the doors check the store itself, so a failure here only logs."""
    try:
        await publish_crl(rt.config, rt.store, rt.clock())
    except (OSError, ValueError, DeviceError) as exc:
        log.error("CRL not written: %s", exc)
