# edgeq Jetson image (linux/arm64, NVIDIA Jetson with JetPack): NVIDIA's L4T TensorRT image with
# trtexec on PATH (builds and times TensorRT engines from edgeq's QDQ ONNX) and the edgeq on-device
# agent (edgeq/ondevice/agent.py, with numpy) for `--info` and CPU runs.
#
# Build on a machine that reaches nvcr.io (a Jetson, or x86-64 with qemu-user-static):
#   DOCKER_BUILDKIT=1 docker build --platform linux/arm64 -f docker/jetson.Dockerfile -t edgeq/jetson .
# Pick the base that matches the device's JetPack/L4T release:
#   --build-arg BASE_IMAGE=nvcr.io/nvidia/l4t-tensorrt:r8.5.2.2-devel   (JetPack 5.1, the default)
#   --secret id=extra_ca_certs,src=FILE   PEM certificates to trust (TLS-intercepting proxy)
# Run on the Jetson (NVIDIA container runtime):
#   docker run --rm --runtime nvidia -v "$PWD:/work" edgeq/jetson trtexec --onnx=/work/m.onnx --int8
#   docker run --rm --runtime nvidia edgeq/jetson --info
ARG BASE_IMAGE=nvcr.io/nvidia/l4t-tensorrt:r8.5.2.2-devel
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/usr/src/tensorrt/bin:$PATH

COPY docker/install-ca-certs.sh /usr/local/bin/edgeq-install-ca-certs
# numpy from the distribution's own packages: the agent needs nothing newer, and the L4T image's
# Python is the one TensorRT's bindings are built for.
RUN --mount=type=secret,id=extra_ca_certs \
    set -eu; \
    need=""; \
    command -v python3 >/dev/null || need="$need python3"; \
    python3 -c 'import numpy' 2>/dev/null || need="$need python3-numpy"; \
    [ -f /etc/ssl/certs/ca-certificates.crt ] || need="$need ca-certificates"; \
    if [ -n "$need" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $need >/dev/null \
        && rm -rf /var/lib/apt/lists/*; fi; \
    edgeq-install-ca-certs /run/secrets/extra_ca_certs

COPY edgeq/ondevice/agent.py /opt/edgeq/agent.py
COPY docker/entrypoint.sh /usr/local/bin/edgeq-entrypoint
ENV EDGEQ_AGENT=/opt/edgeq/agent.py
WORKDIR /work
ENTRYPOINT ["/usr/local/bin/edgeq-entrypoint"]
CMD []
