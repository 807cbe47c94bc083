#!/bin/sh
# Entrypoint of the test-only SSH device image (runtime-ssh.Dockerfile): fresh host keys, root's
# authorized_keys from the mounted /run/edgeq/authorized_keys, then sshd in the foreground.
set -eu
keys=/run/edgeq/authorized_keys
[ -s "$keys" ] || { echo "edgeq-sshd: mount the client's public key at $keys (-v KEY.pub:$keys:ro)" >&2; exit 2; }
ssh-keygen -q -t ed25519 -N "" -C edgeq-device -f /etc/ssh/ssh_host_ed25519_key
install -d -m 700 /root/.ssh
install -m 600 "$keys" /root/.ssh/authorized_keys
cat > /etc/ssh/sshd_config.d/edgeq.conf <<CONF
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
AllowTcpForwarding no
SetEnv PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin${QEMU_CPU:+ QEMU_CPU=$QEMU_CPU}
CONF
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e
