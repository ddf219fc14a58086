"""`roamgate-connect`: flags and profile, local ports, the link, clean exit on Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from roamgate_connect.client_configs import RENDERERS
from roamgate_connect.forwarder import LocalPort
from roamgate_connect.link import FatalLinkError, Link, Prompter, load_device_key
from roamgate_connect.profile import Profile, ProfileError, build, read_file

EXIT_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="roamgate-connect",
        description="Local IMAP and submission ports through roamgate's SSH door;"
        " reconnects when the line drops.",
    )
    p.add_argument("--profile", metavar="FILE", help="a profile file (flags override it)")
    p.add_argument("--gateway", metavar="HOST:PORT", help="the gateway's SSH door")
    p.add_argument("--user", help="your corporate user name")
    p.add_argument(
        "--host-key",
        metavar="SHA256:...",
        help="the gateway's host-key fingerprint, as `roamgate init` printed it (pinned)",
    )
    p.add_argument("--imap-port", type=int, metavar="N", help="local IMAP port (default 1143)")
    p.add_argument(
        "--submission-port", type=int, metavar="N", help="local submission port (default 1587)"
    )
    p.add_argument(
        "--askpass",
        metavar="CMD",
        help="ask for the password and codes by running CMD PROMPT (like SSH_ASKPASS)",
    )
    p.add_argument("--device-key", metavar="FILE", help="this laptop's key (made on first use)")
    p.add_argument(
        "--hold-seconds",
        type=float,
        default=30.0,
        metavar="N",
        help="how long a mail client's connection waits for a link that is down (default 30)",
    )
    p.add_argument(
        "--resume-seconds",
        type=float,
        default=600.0,
        metavar="N",
        help="how long an open IMAP connection is kept for a line that is down, to resume it"
        " (default 600, the gateway's default grace period)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="carry IMAP as a plain tunnel (`imap`): a line drop ends the mail client's connection",
    )
    p.add_argument(
        "--print",
        choices=sorted(RENDERERS),
        dest="print_config",
        help="print settings for this profile (a profile file, OpenSSH, mutt, Thunderbird) and exit",
    )
    p.add_argument("--verbose", action="store_true", help="log each channel")
    return p


def load_profile(args: argparse.Namespace) -> Profile:
    values: dict[str, object] = {}
    origin = "flags"
    if args.profile:
        values.update(read_file(Path(args.profile)))
        origin = args.profile
    for key in ("gateway", "user", "host_key", "imap_port", "submission_port", "device_key"):
        given = getattr(args, key)
        if given is not None:
            values[key] = given
    return build(values, origin)


def _status(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} roamgate-connect: {message}", file=sys.stderr, flush=True)


async def run(profile: Profile, args: argparse.Namespace) -> int:
    key, made = load_device_key(profile.device_key)
    if made:
        _status(f"made a device key {profile.device_key} ({key.get_fingerprint('sha256')})")
    link = Link(profile, Prompter(args.askpass), key, status=_status)
    ports = [
        LocalPort(
            link,
            profile.imap_port,
            "imap",
            143,
            args.hold_seconds,
            resume_seconds=None if args.no_resume else args.resume_seconds,
            status=_status,
        ),
        LocalPort(link, profile.submission_port, "submission", 587, args.hold_seconds),
    ]
    try:
        for port in ports:
            await port.start()
    except OSError as exc:
        for port in ports:
            await port.close()
        _status(f"cannot listen on 127.0.0.1 ({exc.strerror}); is another connector running?")
        return EXIT_FAILED
    _status(
        f"imap on 127.0.0.1:{profile.imap_port}, submission on 127.0.0.1:{profile.submission_port}"
        f" through {profile.gateway}; Ctrl-C ends"
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, link.stop)
    try:
        await link.run()
        _status("stopped")
        return 0
    except FatalLinkError as exc:
        _status(str(exc))
        return EXIT_FAILED
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        link.stop()
        for port in ports:
            await port.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s roamgate-connect: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    try:
        profile = load_profile(args)
    except ProfileError as exc:
        for problem in exc.problems:
            print(f"roamgate-connect: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        sys.stdout.write(RENDERERS[args.print_config](profile))
        return 0
    try:
        return asyncio.run(run(profile, args))
    except KeyboardInterrupt:
        return 0
