"""Config loading: every problem named by file, line and key; secrets from files or environment."""

from __future__ import annotations

import textwrap
from pathlib import Path

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from roamgate import pki
from roamgate.config import ConfigError, load_config
from roamgate.profiles import BUILTIN_PROFILES, LinkProfile

GOOD = """\
hostname: gw.example.com
listeners:
  ssh:
    port: 2022
  imaps:
    host: 127.0.0.1
    port: 9993
tls:
  cert_file: server.pem
  key_file: server.key
  ca_file: ca.pem
ssh:
  host_key_files: [host_key]
upstream:
  imap:
    host: mail.example.com
    port: 993
    tls: implicit
secrets:
  key_file: secret.key
"""


def _write(d: Path, text: str) -> Path:
    for name in ("server.pem", "server.key", "ca.pem", "host_key", "secret.key"):
        (d / name).write_text("x\n")
    p = d / "roamgate.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def _errors(p: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(p, env=env)
    return info.value.lines()


def test_good_config_loads_into_frozen_objects(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.hostname == "gw.example.com"
    assert cfg.listeners.ssh is not None and cfg.listeners.ssh.port == 2022
    assert cfg.listeners.ssh.host == "127.0.0.1"  # the default: loopback unless told otherwise
    assert cfg.listeners.web is None
    assert cfg.upstream.imap.tls == "implicit"
    assert cfg.tls.cert_file == tmp_path / "server.pem"  # relative to the config file
    assert cfg.auth.otp.digits == 6 and cfg.auth.lockout.hard_lock_after == 99
    assert cfg.secrets.key.value == b"x"
    assert "x" not in repr(cfg.secrets.key)
    with pytest.raises(AttributeError):
        cfg.hostname = "other"  # type: ignore[misc]


def test_wrong_type_names_file_line_and_key(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD.replace("port: 2022", "port: abc"))
    assert _errors(p) == [
        f"{p}:4 listeners.ssh.port: expected an integer 1-65535, got 'abc'",
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("port: 9993", "port: 70000").replace("tls: implicit", "tls: maybe")
    text = text.replace("hostname: gw.example.com", "hostname: gw.example.com\nlisten: x")
    p = _write(tmp_path, text)
    errors = _errors(p)
    assert f"{p}:2 listen: unknown key (did you mean 'listeners'?)" in errors
    assert f"{p}:8 listeners.imaps.port: expected an integer 1-65535, got 70000" in errors
    assert (
        f"{p}:19 upstream.imap.tls: expected one of 'implicit', 'starttls', 'none', got 'maybe'"
        in errors
    )
    assert len(errors) == 3


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD.replace("    port: 2022", "    prot: 2022"))
    errors = _errors(p)
    assert f"{p}:4 listeners.ssh.prot: unknown key (did you mean 'port'?)" in errors
    assert f"{p}:3 listeners.ssh.port: missing required key" in errors


def test_bool_is_not_an_integer_and_duplicates_are_errors(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD.replace("port: 2022", "port: true\n    port: 1"))
    errors = _errors(p)
    assert f"{p}:4 listeners.ssh.port: expected an integer 1-65535, got true" in errors
    assert f"{p}:5 listeners.ssh.port: duplicate key" in errors


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD.replace("  ssh:\n    port: 2022", "  ssh:\n    port: [2022"))
    [error] = _errors(p)
    assert error.startswith(f"{p}:") and "YAML syntax error" in error


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD.replace("gw.example.com", "!!python/object/apply:os.system ['true']"))
    [error] = _errors(p)
    assert (
        error == f"{p}:1 hostname: YAML tag '!!python/object/apply:os.system' is not allowed here"
    )


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert _errors(empty) == [f"{empty}:1: the file is empty"]
    missing = tmp_path / "missing.yaml"
    assert _errors(missing) == [f"{missing}:0: file not found"]


def test_secret_inline_is_refused(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD.replace("  key_file: secret.key", "  key: c2VjcmV0"))
    errors = _errors(p)
    assert [
        f"{p}:20 secrets.key: secrets are not accepted inline; use key_file or key_env"
    ] == errors


def test_secret_from_environment(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD.replace("  key_file: secret.key", "  key_env: RG_KEY"))
    cfg = load_config(p, env={"RG_KEY": "from-env"})
    assert cfg.secrets.key.value == b"from-env"
    assert cfg.secrets.key.origin == "env RG_KEY"
    assert _errors(p, env={}) == [
        f"{p}:20 secrets.key_env: environment variable RG_KEY is not set or empty"
    ]


def test_unreadable_secret_file(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD.replace("key_file: secret.key", "key_file: nowhere.key"))
    assert _errors(p) == [
        f"{p}:20 secrets.key_file: cannot read secret file '{tmp_path / 'nowhere.key'}':"
        " No such file or directory"
    ]


def test_cross_checks(tmp_path: Path) -> None:
    text = GOOD.replace("    port: 9993", "    port: 2022").replace("[host_key]", "[gone_key]")
    text = text.replace("mail.example.com", "mail.example.com\n    ca_file: missing-ca.pem")
    text += "auth:\n  lockout:\n    user_threshold: 50\n    hard_lock_after: 40\n"
    p = _write(tmp_path, text)
    errors = _errors(p)
    assert f"{p}:7 listeners.imaps.port: port 2022 is already used by listeners.ssh" in errors
    assert f"{p}:13 ssh.host_key_files[0]: file not found: {tmp_path / 'gone_key'}" in errors
    assert f"{p}:17 upstream.imap.ca_file: file not found: {tmp_path / 'missing-ca.pem'}" in errors
    assert f"{p}:25 auth.lockout.hard_lock_after: must be larger than user_threshold" in errors


def test_plaintext_upstream_only_on_loopback(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD.replace("tls: implicit", "tls: none"))
    assert _errors(p) == [
        f"{p}:18 upstream.imap.tls: 'none' is only allowed for an upstream on this machine (loopback)"
    ]
    local = _write(
        tmp_path,
        GOOD.replace("tls: implicit", "tls: none").replace("mail.example.com", "127.0.0.1"),
    )
    assert load_config(local).upstream.imap.tls == "none"


def test_hard_lock_cannot_reach_one_hundred(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD + "auth:\n  lockout:\n    hard_lock_after: 100\n")
    assert _errors(p) == [f"{p}:23 auth.lockout.hard_lock_after: expected an integer 2-99, got 100"]


PROFILES = """\
profiles:
  hotel-wifi:
    text_budget: 16384
    header_policy: reader
    keep_headers: [X-Priority]
  phs:
    text_budget: 4096
"""


def test_profiles_add_to_and_replace_the_built_in_ones(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD + PROFILES))
    profiles = cfg.link_profiles()
    assert set(profiles) == {"lan", "isdn", "phs", "pda", "hotel-wifi"}
    hotel = profiles["hotel-wifi"]
    assert (hotel.text_budget, hotel.header_policy, hotel.keep_headers) == (
        16384,
        "reader",
        ("X-Priority",),
    )
    assert hotel.compression_level == 6  # unset fields keep LinkProfile's defaults
    assert profiles["phs"] == LinkProfile(text_budget=4096)  # replaced whole, not merged
    assert profiles["isdn"] == BUILTIN_PROFILES["isdn"]
    assert cfg.imap_proxy.profile_separator == "#"
    assert load_config(_write(tmp_path, GOOD)).link_profiles() == BUILTIN_PROFILES


def test_profile_errors_name_file_line_and_key(tmp_path: Path) -> None:
    text = GOOD + (
        "profiles:\n"  # line 21
        "  slow:\n"
        "    text_budget: -1\n"
        "    header_policy: none\n"
        "    colour: blue\n"
        "  fine: {}\n"
    )
    p = _write(tmp_path, text)
    assert _errors(p) == [
        f"{p}:23 profiles.slow.text_budget: expected an integer 0-67108864, got -1",
        f"{p}:24 profiles.slow.header_policy: expected one of 'full', 'reader', got 'none'",
        f"{p}:25 profiles.slow.colour: unknown key",
    ]
    p = _write(tmp_path, GOOD + "profiles: [phs]\n")
    assert _errors(p) == [f"{p}:21 profiles: expected a mapping, got a list"]


def test_profile_names_are_plain(tmp_path: Path) -> None:
    long = "x" * 33
    text = GOOD + f"profiles:\n  Hotel:\n    text_budget: 10\n  {long}: {{}}\n  a_b-9: {{}}\n"
    p = _write(tmp_path, text)
    assert _errors(p) == [
        f"{p}:22 profiles.Hotel: a profile name is 1-32 of a-z, 0-9, '_' and '-'",
        f"{p}:24 profiles.{long}: a profile name is 1-32 of a-z, 0-9, '_' and '-'",
    ]


@pytest.mark.parametrize("sep", ["a", "7", "@", ".", " ", "##", "é"])
def test_profile_separator_is_one_plain_punctuation_character(tmp_path: Path, sep: str) -> None:
    p = _write(tmp_path, GOOD + f"imap_proxy:\n  profile_separator: '{sep}'\n")
    assert _errors(p) == [
        f"{p}:22 imap_proxy.profile_separator: expected one character other than a letter,"
        f" digit, '@', '.' or space, got {sep!r}"
    ]


@pytest.mark.parametrize("sep", ["#", "+", "%", "!", "~"])
def test_profile_separator_accepts_punctuation(tmp_path: Path, sep: str) -> None:
    p = _write(tmp_path, GOOD + f"imap_proxy:\n  profile_separator: '{sep}'\n")
    assert load_config(p).imap_proxy.profile_separator == sep


def _real_keys(d: Path) -> None:
    """A TLS certificate and key that belong together, and an Ed25519 host key."""
    ca_key, ca_cert = pki.make_ca("test CA")
    key, cert = pki.issue_server_cert(ca_key, ca_cert, "gw.example.com", [])
    (d / "server.pem").write_bytes(pki.cert_pem(cert))
    pki.write_private(d / "server.key", pki.key_pem(key))
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    pki.write_private(d / "host_key", host_key.export_private_key("openssh"))


def _key_errors(p: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(p, check_key_files=True)
    return info.value.lines()


def test_usable_key_files_pass_the_key_check(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD)
    _real_keys(tmp_path)
    assert load_config(p, check_key_files=True).ssh is not None


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("garbage", "not a valid SSH private key"),
        ("public", "not a valid SSH private key"),
        (
            "encrypted",
            "the SSH private key is encrypted; the gateway needs it without a passphrase",
        ),
        (
            "ecdsa",
            "key type ecdsa-sha2-nistp256 is not offered;"
            " use one of ssh-ed25519, rsa-sha2-512, rsa-sha2-256",
        ),
    ],
)
def test_an_unusable_ssh_host_key_is_named(tmp_path: Path, damage: str, message: str) -> None:
    p = _write(tmp_path, GOOD.replace("[host_key]", "[host_key, host_key2]"))
    _real_keys(tmp_path)
    second = tmp_path / "host_key2"
    good = asyncssh.read_private_key(str(tmp_path / "host_key"))
    if damage == "garbage":
        second.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0IGJ5dGVz\n")
    elif damage == "public":
        second.write_bytes(good.export_public_key("openssh"))
    elif damage == "encrypted":
        second.write_bytes(good.export_private_key("pkcs8-pem", passphrase="pw"))
    else:
        second.write_bytes(
            asyncssh.generate_private_key("ecdsa-sha2-nistp256").export_private_key()
        )
    errors = _key_errors(p)
    assert errors == [f"{p}:13 ssh.host_key_files[1]: {message}"]
    assert "c2VjcmV0" not in "".join(errors)
    assert load_config(p).ssh is not None  # other commands do not load keys


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("cert-garbage", "9 tls.cert_file: not a PEM certificate"),
        ("key-garbage", "10 tls.key_file: not a valid PEM private key"),
        ("key-other", "10 tls.key_file: the certificate and key do not match"),
        (
            "key-encrypted",
            "10 tls.key_file: the private key is encrypted; the gateway needs it without one",
        ),
    ],
)
def test_an_unusable_tls_certificate_or_key_is_named(
    tmp_path: Path, damage: str, expected: str
) -> None:
    p = _write(tmp_path, GOOD)
    _real_keys(tmp_path)
    other = ec.generate_private_key(ec.SECP256R1())
    if damage == "cert-garbage":
        (tmp_path / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nc2VjcmV0\n")
    elif damage == "key-garbage":
        (tmp_path / "server.key").write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n")
    elif damage == "key-other":
        pki.write_private(tmp_path / "server.key", pki.key_pem(other))
    else:
        encrypted = other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
        pki.write_private(tmp_path / "server.key", encrypted)
    errors = _key_errors(p)
    assert errors == [f"{p}:{expected}"]
    assert "c2VjcmV0" not in "".join(errors)


def test_callback_section(tmp_path: Path) -> None:
    (tmp_path / "provider.secret").write_text("s3cret\n")
    p = _write(tmp_path, GOOD + "callback:\n  channels: [approve]\n  timeout_seconds: 1\n")
    assert _errors(p) == [f"{p}:23 callback.timeout_seconds: expected an integer 2-600, got 1"]
    p.write_text(GOOD + "callback:\n  channels: [approve]\n")
    errors = _errors(p)
    assert any("callback.provider_url: the approve channel needs it" in e for e in errors)
    assert any("callback.public_url: approve links need" in e for e in errors)
    p.write_text(
        GOOD + "callback:\n  channels: [dialback]\n  default_policy: new_source\n"
        "  provider_url: ftp://x\n"
    )
    assert any("callback.provider_url: expected an http(s):// URL" in e for e in _errors(p))
    p.write_text(
        GOOD + "callback:\n  provider_url: https://sms.example.net/send\n"
        "  provider_secret_file: provider.secret\n  public_url: https://gw.example.com\n"
    )
    cfg = load_config(p)
    assert cfg.callback is not None and cfg.callback.timeout_seconds == 120
    assert cfg.callback.provider_secret is not None
    assert cfg.callback.provider_secret.value.strip() == b"s3cret"
    assert cfg.callback.default_policy == "never"


def test_callback_http_listener_may_not_share_a_door_port(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD + "callback:\n  channels: [dialback]\n  http: {port: 9993}\n")
    [error] = _errors(p)
    assert "callback.http.port: port 9993 is already used by listeners.imaps" in error


def _with_submission(listener: str, smtp: str = "") -> str:
    text = GOOD.replace("listeners:\n", f"listeners:\n{listener}")
    return text.replace("    tls: implicit\n", f"    tls: implicit\n{smtp}")


SMTP = "  smtp:\n    host: mail.example.com\n    port: 587\n"


def test_submission_listeners_and_settings(tmp_path: Path) -> None:
    text = _with_submission("  submission:\n    port: 10465\n", SMTP)
    text += (
        "submission:\n  sender_domain: example.com\n  max_recipients: 7\n"
        "  users:\n    alice: {senders: [sales@example.com], max_messages_per_hour: 3}\n"
    )
    cfg = load_config(_write(tmp_path, text))
    assert cfg.listeners.submission is not None and cfg.listeners.submission.port == 10465
    assert cfg.listeners.submissions is None
    assert cfg.submission.upstream_login == "passthrough"
    assert cfg.submission.max_recipients == 7
    alice = cfg.submission.users["alice"]
    assert alice.senders == ("sales@example.com",) and alice.max_messages_per_hour == 3
    assert alice.max_recipients is None


def test_submission_errors_name_file_line_and_key(tmp_path: Path) -> None:
    # A submission door needs an upstream.smtp; relay needs its account; addresses are checked.
    text = _with_submission("  submission:\n    port: 10587\n") + (
        "submission:\n  upstream_login: relay\n  sender_domain: 'bad domain'\n"
        "  spool_max_bytes: 30000000\n"
        "  users:\n    bob: {senders: [not-an-address], max_message_bytes: 40000000}\n"
    )
    p = _write(tmp_path, text)
    errors = _errors(p)
    assert f"{p}:3 listeners.submission: the submission door needs upstream.smtp to relay to" in (
        errors
    )
    assert any("submission.upstream_login: relay needs relay_user" in e for e in errors)
    assert any("submission.sender_domain: expected a domain name" in e for e in errors)
    assert any("submission.users.bob.senders.0: expected an address" in e for e in errors)
    # bob may send 40 MB: a spool of 30 MB could never take his message.
    assert any(
        "submission.spool_max_bytes: 30000000 is less than the largest message allowed (40000000)"
        in e
        for e in errors
    )


def test_plaintext_upstream_smtp_only_on_loopback(tmp_path: Path) -> None:
    text = GOOD + "  smtp:\n    host: mail.example.com\n    port: 25\n    tls: none\n"
    text = (
        text.replace("secrets:\n  key_file: secret.key\n", "")
        + "secrets:\n  key_file: secret.key\n"
    )
    p = _write(tmp_path, text)
    assert any(
        "upstream.smtp.tls: 'none' is only allowed for an upstream on this machine" in e
        for e in _errors(p)
    )


LDAP = """\
auth:
  password_verifier: ldap
ldap:
  url: {url}
  bind_dn: cn=roamgate,ou=services,dc=example,dc=test
  bind_password_file: ldap.secret
  user_base: ou=people,dc=example,dc=test
  groups: [cn=roamgate-users,ou=groups,dc=example,dc=test]
  profiles:
    cn=travellers,ou=groups,dc=example,dc=test: phs
  callback_policies:
    cn=travellers,ou=groups,dc=example,dc=test: always
"""


def test_ldap_section_loads(tmp_path: Path) -> None:
    (tmp_path / "ldap.secret").write_text("service pw\n")
    cfg = load_config(_write(tmp_path, GOOD + LDAP.format(url="ldaps://ldap.example.test")))
    assert cfg.auth.password_verifier == "ldap"
    assert cfg.ldap is not None and cfg.ldap.bind_password.text() == "service pw"
    assert cfg.ldap.profiles == {"cn=travellers,ou=groups,dc=example,dc=test": "phs"}
    assert cfg.ldap.sync_interval_seconds == 300 and cfg.ldap.group_cache_seconds == 0
    assert "service pw" not in repr(cfg)


def test_plain_ldap_without_starttls_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "ldap.secret").write_text("service pw\n")
    p = _write(tmp_path, GOOD + LDAP.format(url="ldap://ldap.example.test:389"))
    errors = _errors(p)
    assert len(errors) == 1 and "ldap.url" in errors[0] and "start_tls" in errors[0], errors
    url_line = p.read_text().splitlines().index("  url: ldap://ldap.example.test:389") + 1
    assert errors[0].startswith(f"{p}:{url_line} "), errors
    # With StartTLS the same URL is fine; ldaps:// with StartTLS is a mistake.
    p.write_text(p.read_text() + "  start_tls: true\n")
    assert load_config(p).ldap is not None
    p.write_text(p.read_text().replace("ldap://", "ldaps://"))
    assert any("ldap.start_tls" in e for e in _errors(p))


def test_ldap_mistakes_name_their_keys(tmp_path: Path) -> None:
    (tmp_path / "ldap.secret").write_text("service pw\n")
    text = GOOD + LDAP.format(url="https://ldap.example.test")
    text = text.replace(": phs", ": nosuchprofile").replace("groups: [cn=roamgate-users", "x: [")
    text = text.replace("  x: [,ou=groups,dc=example,dc=test]\n", "  groups: []\n")
    text += "  user_filter: objectClass=person\n"
    errors = _errors(_write(tmp_path, text))
    keys = {e.split(" ")[1].rstrip(":") for e in errors}
    assert {"ldap.url", "ldap.groups", "ldap.user_filter"} <= keys, errors
    assert any("nosuchprofile" in e for e in errors), errors
    no_section = GOOD + "auth:\n  password_verifier: ldap\n"
    assert any("ldap: section" in e for e in _errors(_write(tmp_path, no_section)))
