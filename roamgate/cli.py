"""`roamgate …`: argument parsing, dispatch, and the one place errors become a line on stderr."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NoReturn

from roamgate import __version__
from roamgate.commands import (
    audit_log,
    callbacks,
    directory,
    sessions,
    setup,
    ssh_keys,
    tokens,
    users,
    web_admin,
)
from roamgate.commands.common import CliError
from roamgate.config import ConfigError, load_config
from roamgate.runtime import Runtime, SetupError, open_runtime
from roamgate.secretbox import SecretBoxError
from roamgate.store import StoreError

Command = Callable[[Runtime, argparse.Namespace], Awaitable[int]]

EXIT_CONFIG = 2
EXIT_USAGE = 2
EXIT_ERROR = 1
EXIT_INTERNAL = 70


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _config_parent() -> _Parser:
    parent = _Parser(add_help=False)
    parent.add_argument(
        "-c",
        "--config",
        default=os.environ.get("ROAMGATE_CONFIG", "roamgate.yaml"),
        metavar="FILE",
        help="the gateway's roamgate.yaml (default: $ROAMGATE_CONFIG or ./roamgate.yaml)",
    )
    parent.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    return parent


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1-65535, got {text!r}")
    return int(text)


def _limit(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    # Subparsers are made with the class of their parent, so all of them report errors in one line.
    parser = _Parser(
        prog="roamgate",
        description="Remote-access gateway for corporate mail: SSH and TLS front doors, OTP login.",
    )
    parser.add_argument("--version", action="version", version=f"roamgate {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    cfg = _config_parent()
    nocfg = _Parser(add_help=False)
    nocfg.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    p = sub.add_parser("init", parents=[nocfg], help="create a gateway directory")
    p.add_argument("--dir", required=True, help="directory to create or fill")
    p.add_argument("--upstream-imap", required=True, type=setup.host_port, metavar="HOST:PORT")
    p.add_argument("--upstream-smtp", type=setup.host_port, metavar="HOST:PORT")
    p.add_argument(
        "--upstream-tls",
        choices=["implicit", "starttls", "none"],
        help="how to reach the upstream servers (default: implicit on 993/465, else starttls)",
    )
    p.add_argument("--upstream-ca", metavar="FILE", help="CA file that signed the upstream's cert")
    p.add_argument("--hostname", default="localhost", help="the gateway's public name")
    p.add_argument("--listen-host", default="127.0.0.1", metavar="ADDR")
    p.add_argument("--ssh-port", type=_port, default=2022, metavar="N")
    p.add_argument("--imaps-port", type=_port, default=9993, metavar="N")
    p.add_argument("--imap-port", type=_port, default=9143, metavar="N")
    p.add_argument("--web-port", type=_port, default=9443, metavar="N")
    p.add_argument(
        "--submission-port",
        type=_port,
        default=465,
        metavar="N",
        help="SMTP submission with TLS (written with --upstream-smtp; default 465)",
    )
    p.add_argument(
        "--submission-starttls-port",
        type=_port,
        default=587,
        metavar="N",
        help="SMTP submission with STARTTLS (written with --upstream-smtp; default 587)",
    )
    p.add_argument("--verifier", choices=["upstream", "local"], default="upstream")
    p.add_argument("--force", action="store_true", help="replace an existing gateway's files")
    p.add_argument(
        "--store",
        default="roamgate.db",
        metavar="PATH|URL",
        help="a SQLite file (default: roamgate.db in --dir) or a postgresql:// URL shared by"
        " several nodes",
    )
    p.set_defaults(run=setup.init, needs="sync")

    p = sub.add_parser("check-config", parents=[cfg], help="validate a config file")
    p.set_defaults(run=setup.check_config, needs="sync")

    p = sub.add_parser(
        "doctor",
        parents=[cfg],
        help="check config, store, upstreams, certificates, clock and disk",
        description="One line per check: OK, WARN or FAIL with a remedy."
        " Exit code 0: all OK; 1: a WARN and no FAIL; 2: a FAIL.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per check")
    p.set_defaults(run=_doctor, needs="sync")

    p = sub.add_parser("serve", parents=[cfg], help="run the gateway")
    p.set_defaults(run=None, needs="serve")

    user = sub.add_parser("user", help="manage users").add_subparsers(
        dest="action", metavar="ACTION"
    )
    user.required = True
    p = user.add_parser("add", parents=[cfg], help="add a user")
    p.add_argument("user")
    p.add_argument("--email")
    p.add_argument("--profile", default="lan", help="link profile (default: lan)")
    p.add_argument("--password-stdin", action="store_true", help="read a local password from stdin")
    p.set_defaults(run=users.add, needs="runtime")
    p = user.add_parser("list", parents=[cfg], help="list users")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=users.list_users, needs="runtime")
    p = user.add_parser("set", parents=[cfg], help="change a user's settings")
    p.add_argument("user")
    p.add_argument("--profile", metavar="NAME", help="link profile: lan, isdn, phs, pda or own")
    p.add_argument(
        "--device",
        metavar="DEVICE",
        help="only for this device, as `session list` names it (cert:..., addr:...);"
        " --profile user: the device follows the user's profile again",
    )
    p.add_argument(
        "--callback-policy",
        choices=("never", "always", "new_source"),
        help="call the user back before a login: never, always, or from a new network or device",
    )
    p.set_defaults(run=users.set_options, needs="runtime")
    for action, fn, text in (
        ("disable", lambda rt, a: users.set_enabled(rt, a, False), "refuse all logins"),
        ("enable", lambda rt, a: users.set_enabled(rt, a, True), "allow logins again"),
        ("remove", users.remove, "delete a user and their tokens"),
        ("unlock", users.unlock, "clear failures and locks"),
        ("passwd", users.passwd, "set a local password (local verifier)"),
    ):
        p = user.add_parser(action, parents=[cfg], help=text)
        p.add_argument("user")
        if action == "passwd":
            p.add_argument("--password-stdin", action="store_true")
        p.set_defaults(run=fn, needs="runtime")
    p = user.add_parser(
        "sync", parents=[cfg], help="create directory group members, disable those who left"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--force",
        action="store_true",
        help="disable the leavers even when they are more than ldap.sync_max_disable",
    )
    p.set_defaults(run=directory.sync, needs="runtime")
    p = user.add_parser("directory", parents=[cfg], help="what the directory says about a user")
    p.add_argument("user")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=directory.show, needs="runtime")
    key = user.add_parser("key", help="SSH public keys (stand in for the password, not the code)")
    keys = key.add_subparsers(dest="key_action", metavar="ACTION")
    keys.required = True
    p = keys.add_parser("add", parents=[cfg], help="add a public key (an OpenSSH .pub file)")
    p.add_argument("user")
    p.add_argument("key_file", metavar="FILE", help="the .pub file, or - for standard input")
    p.add_argument("--comment", help="a note (default: the key's own comment)")
    p.set_defaults(run=ssh_keys.add, needs="runtime")
    p = keys.add_parser("list", parents=[cfg], help="list a user's public keys")
    p.add_argument("user")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=ssh_keys.list_keys, needs="runtime")
    p = keys.add_parser("remove", parents=[cfg], help="remove a public key")
    p.add_argument("user")
    p.add_argument("fingerprint", help="SHA256:... as 'key list' shows it")
    p.set_defaults(run=ssh_keys.remove, needs="runtime")

    token = sub.add_parser("token", help="manage one-time password tokens").add_subparsers(
        dest="action", metavar="ACTION"
    )
    token.required = True
    p = token.add_parser("enroll", parents=[cfg], help="enroll a new token for a user")
    p.add_argument("user")
    p.add_argument("--type", choices=["totp", "hotp"], default="totp")
    p.add_argument("--label", help="a note, e.g. the device")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=tokens.enroll, needs="runtime")
    p = token.add_parser("list", parents=[cfg], help="list tokens")
    p.add_argument("user", nargs="?")
    p.add_argument("--all", action="store_true", help="include revoked tokens")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=tokens.list_tokens, needs="runtime")
    p = token.add_parser("revoke", parents=[cfg], help="revoke a token")
    p.add_argument("token_id")
    p.set_defaults(run=tokens.revoke, needs="runtime")
    p = token.add_parser(
        "check", parents=[cfg], help="verify (and use up) a code; say why it fails"
    )
    p.add_argument("user")
    p.add_argument("code")
    p.set_defaults(run=tokens.check, needs="runtime")
    p = token.add_parser("resync", parents=[cfg], help="resynchronise an HOTP token")
    p.add_argument("user")
    p.add_argument("code1")
    p.add_argument("code2")
    p.set_defaults(run=tokens.resync, needs="runtime")

    p = sub.add_parser("backup-codes", parents=[cfg], help="issue a new sheet of backup codes")
    p.add_argument("user")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=tokens.issue_backup_codes, needs="runtime")

    session = sub.add_parser("session", help="travel windows and live sessions").add_subparsers(
        dest="action", metavar="ACTION"
    )
    session.required = True
    p = session.add_parser("list", parents=[cfg], help="show travel windows and live sessions")
    p.add_argument("--user")
    p.add_argument("--all", action="store_true", help="include ended ones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=sessions.list_sessions, needs="runtime")
    p = session.add_parser("revoke", parents=[cfg], help="end a travel window or a live session")
    p.add_argument("id", nargs="?", help="win_... or ses_...")
    p.add_argument("--user", help="revoke all of this user's windows and sessions")
    p.set_defaults(run=sessions.revoke, needs="runtime")

    callback = sub.add_parser(
        "callback", help="callback registrations (the gateway calls these, never others)"
    ).add_subparsers(dest="action", metavar="ACTION")
    callback.required = True
    p = callback.add_parser("register", parents=[cfg], help="register a callback for a user")
    p.add_argument("user")
    p.add_argument("--channel", required=True, choices=("webhook", "dialback", "approve"))
    p.add_argument(
        "--address",
        required=True,
        help="webhook/approve: the phone number; dialback: the device's HOST:PORT",
    )
    p.add_argument("--key-out", metavar="FILE", help="dialback: write the device key here (0600)")
    p.set_defaults(run=callbacks.register, needs="runtime")
    p = callback.add_parser("list", parents=[cfg], help="a user's policy and registrations")
    p.add_argument("user")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=callbacks.list_callbacks, needs="runtime")
    p = callback.add_parser("remove", parents=[cfg], help="remove a registration")
    p.add_argument("user")
    p.add_argument("id", type=int, help="the registration's id, as 'callback list' shows it")
    p.set_defaults(run=callbacks.remove, needs="runtime")
    p = sub.add_parser("invite", parents=[cfg], help="make a one-time enrollment link for a user")
    p.add_argument("user")
    p.add_argument(
        "--expires-hours", type=_limit, default=None, metavar="N", help="default: web.invite_hours"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=web_admin.invite, needs="runtime")
    p = sub.add_parser("invites", parents=[cfg], help="list open invites, or cancel one")
    p.add_argument("--all", action="store_true", help="include used, cancelled and expired ones")
    p.add_argument("--cancel", metavar="INVITE_ID", help="cancel this invite")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=web_admin.invites, needs="runtime")

    device = sub.add_parser("device", help="device certificates").add_subparsers(
        dest="action", metavar="ACTION"
    )
    device.required = True
    p = device.add_parser("list", parents=[cfg], help="list device certificates")
    p.add_argument("user", nargs="?")
    p.add_argument("--all", action="store_true", help="include revoked ones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=web_admin.device_list, needs="runtime")
    p = device.add_parser("issue", parents=[cfg], help="issue a device certificate (PKCS#12)")
    p.add_argument("user")
    p.add_argument("--name", required=True, help="the device, e.g. 'work phone'")
    p.add_argument("--out", required=True, metavar="FILE.p12")
    p.set_defaults(run=web_admin.device_issue, needs="runtime")
    p = device.add_parser("revoke", parents=[cfg], help="revoke a device certificate (CRL)")
    p.add_argument("device_id")
    p.set_defaults(run=web_admin.device_revoke, needs="runtime")

    p = sub.add_parser("audit", parents=[cfg], help="search the audit trail")
    p.add_argument("--user")
    p.add_argument("--since", help="e.g. 2h, 7d, 2026-12-03, 2026-12-03T10:00 (UTC)")
    p.add_argument("--until")
    p.add_argument("--kind", help="e.g. auth, lock, enroll")
    p.add_argument("--result", help="e.g. ok, fail")
    p.add_argument("--limit", type=_limit, default=200)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=audit_log.show, needs="runtime")
    # `roamgate audit` alone searches; `roamgate audit export` writes everything matching.
    audit_sub = p.add_subparsers(dest="action", metavar="ACTION")
    audit_sub.required = False
    p = audit_sub.add_parser(
        "export", parents=[cfg], help="write matching events as JSON lines, oldest first"
    )
    p.add_argument("--since", help="ISO time (UTC unless it says otherwise) or e.g. 7d")
    p.add_argument("--until", help="ISO time; events before it")
    p.add_argument("--user")
    p.add_argument("--output", metavar="PATH", help="file to write, or - for stdout (default)")
    p.set_defaults(run=audit_log.export, needs="runtime")
    return parser


def _doctor(args: argparse.Namespace) -> int:
    from roamgate import doctor

    return doctor.run(args)


async def _with_runtime(args: argparse.Namespace, fn: Command) -> int:
    cfg = load_config(Path(args.config))
    async with open_runtime(cfg) as rt:
        return await fn(rt, args)


def _dispatch(args: argparse.Namespace) -> int:
    needs = args.needs
    if needs == "sync":
        return int(args.run(args))
    if needs == "serve":
        from roamgate import logs
        from roamgate.gateway.serve import serve

        cfg = load_config(Path(args.config), check_key_files=True)
        logs.configure(cfg.logging.level, cfg.logging.file)
        asyncio.run(serve(cfg))
        return 0
    return asyncio.run(_with_runtime(args, args.run))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is users.set_options and not (
        args.profile or args.callback_policy
    ):
        parser.error("user set: say what to change: --profile NAME and/or --callback-policy POLICY")
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(level=logging.WARNING, format="roamgate: %(levelname)s %(message)s")
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except (CliError, StoreError, SetupError, SecretBoxError) as exc:
        if debug:
            traceback.print_exc()
        print(f"roamgate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `roamgate audit | head`: the reader left; that is not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 (the last line of defence: never a bare traceback)
        if debug:
            traceback.print_exc()
        else:
            print(
                f"roamgate: internal error ({type(exc).__name__}); run again with --debug for details",
                file=sys.stderr,
            )
        return EXIT_INTERNAL
