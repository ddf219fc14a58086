#!/usr/bin/env bash
# Installs the Debian packages that the tests and the demo talk to as real peers.
# Only what is missing is installed, so a second run costs a few dpkg queries.
set -euo pipefail

# dovecot-imapd: the corporate IMAP server; oathtool: an independent OTP generator; openssh-client
# and mutt: real clients; openssh-server: the anchor that bench/ssh_tunnel.py measures against;
# haproxy: the load balancer sending PROXY headers; systemd: systemd-analyze checks deploy/systemd;
# chromium (driven by Playwright) and zbar-tools (zbarimg): the web enrollment walk-through;
# postfix: the upstream submission server behind the submission door (a private instance);
# postgresql: the database several gateway nodes share (tests run a private cluster as nobody);
# testssl.sh: the independent TLS audit of the TLS doors (tests/gateway/test_tls_audit.py);
# slapd and ldap-utils: the corporate directory (tests/ldap run a private slapd on 127.0.0.1);
# libldap2-dev and libsasl2-dev: python-ldap has no Linux wheel and builds against them.
want=(dovecot-imapd oathtool openssl openssh-client openssh-server mutt haproxy systemd chromium zbar-tools postfix postgresql testssl.sh slapd ldap-utils libldap2-dev libsasl2-dev)
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-peers: missing Debian packages: ${missing[*]}" >&2
    echo "install-peers: run 'sudo apt-get install ${missing[*]}' or run make as root" >&2
    exit 1
fi
echo "install-peers: apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages must not start their system services (a Dovecot on 143, an sshd on 22): the tests
# run private instances. policy-rc.d answering 101 is Debian's "don't start" switch.
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
fi
trap '[ -n "$made_policy" ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start the system Dovecot, Postfix, PostgreSQL and slapd; roamgate runs its own private
# instances and needs none listening on the standard ports (slapd would listen on every interface).
for service in dovecot postfix postgresql slapd; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
    fi
    if command -v systemctl >/dev/null 2>&1 && [ "$service" = slapd ]; then
        systemctl disable --quiet slapd 2>/dev/null || true
    fi
done
# Without systemd (a container) a slapd started by its init script is stopped by its pid file.
if [ -r /run/slapd/slapd.pid ]; then
    kill "$(cat /run/slapd/slapd.pid)" 2>/dev/null || true
fi
