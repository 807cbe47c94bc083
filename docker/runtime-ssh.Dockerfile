# Test-only: the arm64 device runtime image (docker/runtime.Dockerfile) with an OpenSSH server, so the
# tests can use it as an `rpi`-kind SSH device under QEMU (tests/conftest.py: the `arm64_device` fixture).
# Not a product image: nothing here is meant for a real device (a real Pi has its own sshd).
#
# Build (after edgeq/runtime:arm64; the tests build it themselves, docker caches it):
#   DOCKER_BUILDKIT=1 docker build --platform linux/arm64 -f docker/runtime-ssh.Dockerfile -t edgeq/runtime-ssh:arm64 .
# Run: no key is baked in. Host keys are made when the container starts (read them with `docker exec`
# to write a known_hosts); the client's public key comes in on a mounted file:
#   docker run -d --platform linux/arm64 -p 127.0.0.1::22 -e QEMU_CPU=cortex-a72 \
#     -v "$PWD/cpu:/sys/devices/system/cpu:ro" -v "$PWD/id_ed25519.pub:/run/edgeq/authorized_keys:ro" \
#     edgeq/runtime-ssh:arm64
# QEMU_CPU is handed on to every SSH session (sshd_config SetEnv): sshd starts sessions with a clean
# environment, and under QEMU's default `max` CPU XNNPACK computes garbage (see runtime.Dockerfile).
ARG RUNTIME_IMAGE=edgeq/runtime:arm64
FROM ${RUNTIME_IMAGE}

RUN set -eu; apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends openssh-server >/dev/null; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /etc/ssh/ssh_host_*; \
    mkdir -p /run/sshd /run/edgeq

COPY docker/runtime-ssh-entrypoint.sh /usr/local/bin/edgeq-sshd
EXPOSE 22
ENTRYPOINT ["/usr/local/bin/edgeq-sshd"]
CMD []
