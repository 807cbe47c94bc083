# edgeq pipeline image (linux/amd64): the whole edgeq pipeline — TensorFlow, tfmot, ONNX tooling,
# LiteRT, ONNX Runtime — and, when WITH_EDGETPU=1, Coral's edgetpu_compiler (x86-64 only, which is
# why Edge TPU compilation happens in this image and not on a device).
#
# Build (from the repo root; `make images` does this through docker/build.sh):
#   DOCKER_BUILDKIT=1 docker build --platform linux/amd64 -f docker/pipeline.Dockerfile -t edgeq/pipeline .
# Options:
#   --build-arg BASE_IMAGE=...          any Debian-based image with python3 3.10-3.12 (default
#                                       python:3.11-slim-bookworm; docker/make-base.sh makes one
#                                       without a registry)
#   --secret id=extra_ca_certs,src=FILE PEM certificates to trust (TLS-intercepting proxy); installed
#                                       into the image's CA store before apt/pip use HTTPS
#   --build-arg WITH_EDGETPU=1          add edgetpu_compiler from Coral's apt repository
#                                       (needs packages.cloud.google.com)
# Run, with the run directory on a mounted volume:
#   docker run --rm -v "$PWD/runs:/runs" edgeq/pipeline edgeq run models/mobilenet_v2.yaml --out /runs/mnv2
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG WITH_EDGETPU=0
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    CUDA_VISIBLE_DEVICES="" \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PATH=/opt/venv/bin:$PATH

# System packages the base may lack; extra CA certificates go in before anything uses HTTPS.
COPY docker/install-ca-certs.sh /usr/local/bin/edgeq-install-ca-certs
RUN --mount=type=secret,id=extra_ca_certs \
    set -eu; \
    need=""; \
    python3 -c 'import venv, ensurepip' 2>/dev/null || need="$need python3 python3-venv"; \
    [ -f /etc/ssl/certs/ca-certificates.crt ] || need="$need ca-certificates"; \
    if [ "$WITH_EDGETPU" = 1 ]; then need="$need curl gnupg"; fi; \
    if [ -n "$need" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $need >/dev/null \
        && rm -rf /var/lib/apt/lists/*; fi; \
    edgeq-install-ca-certs /run/secrets/extra_ca_certs
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

# Coral's compiler: only on request; its repository is not Debian's, so it must be reachable.
RUN set -eu; \
    if [ "$WITH_EDGETPU" = 1 ]; then \
      [ "$(dpkg --print-architecture)" = amd64 ] || { echo "edgetpu_compiler exists for amd64 only" >&2; exit 1; }; \
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | gpg --dearmor -o /usr/share/keyrings/coral-edgetpu.gpg; \
      echo "deb [signed-by=/usr/share/keyrings/coral-edgetpu.gpg] https://packages.cloud.google.com/apt coral-edgetpu-stable main" \
        > /etc/apt/sources.list.d/coral-edgetpu.list; \
      apt-get update -qq && apt-get install -y -qq --no-install-recommends edgetpu-compiler >/dev/null; \
      rm -rf /var/lib/apt/lists/*; edgetpu_compiler --version; \
    fi

# Dependencies first (a layer that survives edits to edgeq's code): install the project from its
# pyproject.toml with a placeholder package, then the real code over it.
WORKDIR /opt/edgeq
COPY pyproject.toml ./
RUN set -eu; mkdir -p edgeq && touch edgeq/__init__.py README.md; \
    python3 -m venv /opt/venv; \
    pip install -q --upgrade pip; \
    pip install -q . ; \
    pip install -q --no-deps 'onnx2tf==1.29.24'; \
    pip uninstall -q -y edgeq; rm -rf edgeq README.md build *.egg-info

COPY edgeq/ edgeq/
COPY models/ models/
COPY calibration_data/ calibration_data/
# Editable: edgeq finds models/ and calibration_data/ next to its package, as in a checkout.
RUN pip install -q --no-deps -e . && edgeq --version && python -c "import edgeq.cli, onnx2tf"

WORKDIR /opt/edgeq
CMD ["edgeq", "--help"]
