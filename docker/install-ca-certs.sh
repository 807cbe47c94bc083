#!/bin/sh
# Trust extra PEM certificates (a TLS-intercepting proxy's CA) system-wide, inside an image build.
# Usage: install-ca-certs.sh FILE   — a missing or empty FILE is a no-op (no proxy).
# apt, curl and Python's ssl read the system store; pip and requests are pointed at it by the
# PIP_CERT / REQUESTS_CA_BUNDLE / SSL_CERT_FILE variables that the Dockerfiles set.
set -eu
src=${1:-}
[ -n "$src" ] && [ -s "$src" ] || exit 0
command -v update-ca-certificates >/dev/null || { echo "install-ca-certs: ca-certificates is not installed" >&2; exit 1; }
mkdir -p /usr/local/share/ca-certificates
cp "$src" /usr/local/share/ca-certificates/edgeq-extra.crt
update-ca-certificates >/dev/null 2>&1
echo "install-ca-certs: $(grep -c 'BEGIN CERTIFICATE' "$src") extra certificate(s) trusted"
