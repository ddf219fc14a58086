"""One private slapd per test module, loaded with a small company from LDIF."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from roamgate.config import LdapSettings
from roamgate.yamlbind import Secret
from tests.ldap.slapd import GROUPS, PEOPLE, SERVICE_DN, SERVICE_PW, SUFFIX, PrivateSlapd

# Directory passwords; the gateway stores none of them.
PASSWORDS = {
    "alice": "alice's directory pw",
    "bob": "bob dir pw 2",
    "carol": "carol dir pw 3",
    "dave": "dave dir pw 4",
    "erin": "erin dir pw 5",
}
MEMBERS_GROUP = f"cn=roamgate-users,{GROUPS}"
TRAVELLERS_GROUP = f"cn=travellers,{GROUPS}"  # nested in roamgate-users; phs profile


def _person(uid: str, extra: str = "") -> str:
    return f"""dn: uid={uid},{PEOPLE}
objectClass: inetOrgPerson
uid: {uid}
cn: {uid.title()} Example
sn: Example
mail: {uid}@example.test
userPassword: {PASSWORDS[uid]}
{extra}
"""


def company_ldif(user_cert_der: bytes) -> str:
    """alice: direct member with a mobile and a certificate; bob: nested (travellers);
    carol: in another group only; dave: member but disabled; erin: direct member."""
    cert = base64.b64encode(user_cert_der).decode()
    return "\n".join(
        [
            f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example
""",
            *(
                f"dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n"
                for ou in ("people", "groups", "services")
            ),
            f"""dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: roamgate
userPassword: {SERVICE_PW}
""",
            _person("alice", f"mobile: +1 555 0100\nuserCertificate;binary:: {cert}"),
            _person("bob"),
            _person("carol"),
            _person("dave", "employeeType: disabled"),
            _person("erin"),
            f"""dn: {TRAVELLERS_GROUP}
objectClass: groupOfNames
cn: travellers
member: uid=bob,{PEOPLE}
""",
            f"""dn: cn=other,{GROUPS}
objectClass: groupOfNames
cn: other
member: uid=carol,{PEOPLE}
""",
            f"""dn: {MEMBERS_GROUP}
objectClass: groupOfNames
cn: roamgate-users
member: uid=alice,{PEOPLE}
member: uid=dave,{PEOPLE}
member: uid=erin,{PEOPLE}
member: {TRAVELLERS_GROUP}
""",
        ]
    )


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSlapd]:
    with PrivateSlapd(tmp_path_factory.mktemp("slapd")) as server:
        server.add(company_ldif(server.user_cert_der))
        yield server


def ldap_settings(slapd: PrivateSlapd, **overrides: object) -> LdapSettings:
    """The settings a gateway would bind from its ldap: section, for in-process tests."""
    values: dict[str, object] = {
        "url": slapd.ldaps_url,
        "bind_dn": SERVICE_DN,
        "bind_password": Secret("test", SERVICE_PW.encode()),
        "user_base": PEOPLE,
        "groups": (MEMBERS_GROUP,),
        "ca_file": slapd.ca_file,
        "disabled_filter": "(employeeType=disabled)",
        "group_base": GROUPS,
        "profiles": {TRAVELLERS_GROUP: "phs"},
        "callback_number_attribute": "mobile",
        "timeout_seconds": 3,
        **overrides,
    }
    return LdapSettings(**values)  # type: ignore[arg-type]


def ldap_yaml(slapd: PrivateSlapd, password_file: Path, *, sync_seconds: int = 300) -> str:
    """The same, as a roamgate.yaml section."""
    return f"""ldap:
  url: {slapd.ldaps_url}
  ca_file: {slapd.ca_file}
  bind_dn: {SERVICE_DN}
  bind_password_file: {password_file}
  user_base: {PEOPLE}
  group_base: {GROUPS}
  groups:
    - {MEMBERS_GROUP}
  disabled_filter: (employeeType=disabled)
  profiles:
    {TRAVELLERS_GROUP}: phs
  callback_number_attribute: mobile
  timeout_seconds: 3
  sync_interval_seconds: {sync_seconds}
"""
