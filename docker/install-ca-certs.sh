#!/bin/sh
# Trust extra PEM certificates (a TLS-intercepting proxy's CA) system-wide, inside an image build.
# Usage: install-ca-certs.sh FILE   — a missing or empty FILE is a no-op (no proxy).
# The certificates are appended to the system bundle, which apt, curl and Python's ssl read (the
# Dockerfiles point pip at it with PIP_CERT), and kept in /usr/local/share/ca-certificates so a later
# update-ca-certificates keeps them. Not update-ca-certificates itself: it rehashes every certificate,
# 100 s under QEMU.
set -eu
src=${1:-}
[ -n "$src" ] && [ -s "$src" ] || exit 0
bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$bundle" ] || { echo "install-ca-certs: $bundle missing (install ca-certificates first)" >&2; exit 1; }
mkdir -p /usr/local/share/ca-certificates
cp "$src" /usr/local/share/ca-certificates/edgeq-extra.crt
{ echo; cat "$src"; echo; } >> "$bundle"
echo "install-ca-certs: $(grep -c 'BEGIN CERTIFICATE' "$src") extra certificate(s) trusted"
