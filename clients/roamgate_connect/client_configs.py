"""Ready-made settings that point a mail client (or plain OpenSSH) at the connector's ports.

The files under clients/ are these renderings of clients/example-profile.yaml; a test keeps
them equal and parses each with the real program (ssh -G, mutt -Q) or an XML parser.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from roamgate_connect.profile import Profile


def profile_yaml(p: Profile) -> str:
    keys = ", ".join(p.host_keys)
    return (
        "# roamgate-connect profile: roamgate-connect --profile THIS_FILE\n"
        f"gateway: {p.gateway}\n"
        f"user: {p.user}\n"
        "# The gateway's host key, pinned: the connector refuses any other.\n"
        f"host_key: {keys}\n"
        f"imap_port: {p.imap_port}\n"
        f"submission_port: {p.submission_port}\n"
    )


def openssh_config(p: Profile) -> str:
    """A ~/.ssh/config block for plain OpenSSH: `ssh -N roamgate` gives the same two ports."""
    return f"""\
# roamgate: `ssh -N roamgate` opens local ports for the mail client, as roamgate-connect does.
# ~/.ssh/roamgate_known_hosts holds one line, `roamgate ssh-ed25519 AAAA...`: the gateway's
# ssh_host_ed25519_key.pub, whose fingerprint must be {p.host_keys[0]}.
# With a key registered (`roamgate user key add`), set PubkeyAuthentication yes: the key
# replaces the password, and the one-time code is still asked.
Host roamgate
    HostName {p.host}
    Port {p.port}
    User {p.user}
    HostKeyAlias roamgate
    UserKnownHostsFile ~/.ssh/roamgate_known_hosts
    StrictHostKeyChecking yes
    PreferredAuthentications keyboard-interactive
    PubkeyAuthentication no
    LocalForward 127.0.0.1:{p.imap_port} imap:143
    LocalForward 127.0.0.1:{p.submission_port} submission:587
    ExitOnForwardFailure yes
    SessionType none
    Compression yes
    ServerAliveInterval 15
    ServerAliveCountMax 3
"""


def muttrc(p: Profile) -> str:
    """mutt reading and sending through the connector's local ports (the tunnel is encrypted)."""
    return f"""\
# mutt through roamgate-connect: the SSH tunnel encrypts the line, so the local hop is plain.
# The IMAP password is the corporate one alone: the tunnel's login already took the code.
set folder = "imap://{p.user}@127.0.0.1:{p.imap_port}/"
set spoolfile = "+INBOX"
set record = "+Sent"
set postponed = "+Drafts"
set smtp_url = "smtp://{p.user}@127.0.0.1:{p.submission_port}/"
set ssl_starttls = no
set ssl_force_tls = no
set imap_keepalive = 120
set mail_check = 120
set header_cache = "~/.cache/mutt/roamgate"
"""


def thunderbird_xml(
    user: str,
    incoming: tuple[str, int, str],
    outgoing: tuple[str, int, str] | None,
    comment: str,
    display: str = "Corporate mail through roamgate",
) -> str:
    """Thunderbird's autoconfig (clientConfig 1.1); each server is (host, port, socketType)."""
    servers = [("incomingServer", "imap", incoming)]
    if outgoing is not None:
        servers.append(("outgoingServer", "smtp", outgoing))
    blocks = "".join(
        f"""\
    <{tag} type="{kind}">
      <hostname>{escape(host)}</hostname>
      <port>{port}</port>
      <socketType>{socket_type}</socketType>
      <username>{escape(user)}</username>
      <authentication>password-cleartext</authentication>
    </{tag}>
"""
        for tag, kind, (host, port, socket_type) in servers
    )
    return f"""\
<?xml version="1.0" encoding="UTF-8"?>
<!-- {escape(comment)} -->
<clientConfig version="1.1">
  <emailProvider id="roamgate">
    <domain>roamgate.invalid</domain>
    <displayName>{escape(display)}</displayName>
    <displayShortName>roamgate</displayShortName>
{blocks}  </emailProvider>
</clientConfig>
"""


def thunderbird_autoconfig(p: Profile) -> str:
    """Thunderbird's autoconfig (clientConfig 1.1) for an account on the connector's ports."""
    return thunderbird_xml(
        p.user,
        ("127.0.0.1", p.imap_port, "plain"),
        ("127.0.0.1", p.submission_port, "plain"),
        "Thunderbird through roamgate-connect: the SSH tunnel encrypts the line.",
    )


RENDERERS = {
    "profile": profile_yaml,
    "ssh-config": openssh_config,
    "mutt": muttrc,
    "thunderbird": thunderbird_autoconfig,
}
