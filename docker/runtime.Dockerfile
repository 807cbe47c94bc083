# edgeq device runtime image (linux/arm64: Raspberry Pi OS 64-bit, Debian arm64; builds for amd64 too):
# numpy, ai-edge-litert and the edgeq on-device agent (edgeq/ondevice/agent.py), no TensorFlow. A device
# runner can `docker run` it on the device instead of a bare Python.
#
# Build (from the repo root; `make images` does this through docker/build.sh):
#   DOCKER_BUILDKIT=1 docker build --platform linux/arm64 -f docker/runtime.Dockerfile -t edgeq/runtime:arm64 .
# On an x86-64 machine this needs qemu-user-static with binfmt_misc registered (.ci/docker-setup).
# Options:
#   --build-arg BASE_IMAGE=...          a Debian-based image (default debian:bookworm-slim, the base of
#                                       Raspberry Pi OS bookworm); python3 is installed if it lacks it
#   --secret id=extra_ca_certs,src=FILE PEM certificates to trust (TLS-intercepting proxy)
#   --build-arg LITERT_SPEC=... NUMPY_SPEC=...   pip requirement strings
#   --build-arg OPENVINO_SPEC=openvino==2026.4.1  also the OpenVINO runtime, for the agent's `--runtime openvino`
#                                       (empty, the default: without). An opt-in image, tagged apart:
#     docker/build.sh --build-arg OPENVINO_SPEC=openvino==2026.4.1 --tag edgeq/runtime-openvino:arm64 runtime
#                                       (under QEMU, run OpenVINO without the /sys stand-in below: it hangs on it)
# Run (the model and inputs on a mounted volume; prints one JSON object):
#   docker run --rm -v "$PWD:/work" edgeq/runtime:arm64 --model /work/m.tflite --runs 100 --threads 4
# Under QEMU on x86-64 (not on a device), LiteRT's cpuinfo segfaults reading the host's CPU topology
# in /sys. Give it a small stand-in and a Pi's CPU model, so XNNPACK runs the kernels a Pi 4 runs:
#   mkdir cpu && for f in possible present online; do echo 0-1 > cpu/$f; done
#   docker run --rm --platform linux/arm64 -e QEMU_CPU=cortex-a72 -v "$PWD/cpu:/sys/devices/system/cpu:ro" ...
# (`--tmpfs /sys/devices/system/cpu` also avoids the crash, but then XNNPACK is silently off and the
# outputs differ from a device's; QEMU's default `max` CPU makes XNNPACK compute garbage.)
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG NUMPY_SPEC="numpy>=2.0,<2.5"
ARG LITERT_SPEC="ai-edge-litert>=2.3,<2.4"
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

COPY docker/install-ca-certs.sh /usr/local/bin/edgeq-install-ca-certs
RUN --mount=type=secret,id=extra_ca_certs \
    set -eu; \
    need=""; \
    python3 -c 'import venv, ensurepip' 2>/dev/null || need="$need python3 python3-venv"; \
    [ -f /etc/ssl/certs/ca-certificates.crt ] || need="$need ca-certificates"; \
    if [ -n "$need" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $need >/dev/null \
        && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; fi; \
    edgeq-install-ca-certs /run/secrets/extra_ca_certs
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

# Wheels only: a source build under QEMU would take hours and on a Pi needs a compiler.
RUN set -eu; python3 -m venv /opt/venv; \
    pip install -q --only-binary=:all: "$NUMPY_SPEC" "$LITERT_SPEC"; \
    pip uninstall -q -y pip setuptools 2>/dev/null || true; \
    find /opt/venv -name __pycache__ -prune -exec rm -rf {} +; \
    python3 -c "import numpy, ai_edge_litert.interpreter"

# OpenVINO (opt-in): its own layer, so an image without it keeps the layers above; numpy stays as pinned above.
ARG OPENVINO_SPEC=""
RUN set -eu; [ -n "$OPENVINO_SPEC" ] || exit 0; python3 -m ensurepip >/dev/null; \
    python3 -m pip install -q --only-binary=:all: "$OPENVINO_SPEC" "$NUMPY_SPEC"; \
    python3 -m pip uninstall -q -y pip setuptools 2>/dev/null || true; \
    find /opt/venv -name __pycache__ -prune -exec rm -rf {} +; \
    python3 -c "import openvino; openvino.Core()"

COPY edgeq/ondevice/agent.py /opt/edgeq/agent.py
COPY docker/entrypoint.sh /usr/local/bin/edgeq-entrypoint
ENV EDGEQ_AGENT=/opt/edgeq/agent.py
WORKDIR /work
ENTRYPOINT ["/usr/local/bin/edgeq-entrypoint"]
CMD []
