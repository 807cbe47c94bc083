#!/usr/bin/env bash
# Build edgeq's Docker images: pipeline (linux/amd64), runtime (linux/arm64), jetson (linux/arm64).
#
#   docker/build.sh [options] pipeline|runtime|jetson ...
#     --base-image [NAME=]IMG  base image of every image, or of image NAME only (default: each
#                         Dockerfile's own: python:3.11-slim-bookworm, debian:bookworm-slim, L4T TensorRT)
#     --debootstrap-base  no registry: make pipeline's and runtime's Debian bookworm base with
#                         docker/make-base.sh (debootstrap; cached) and build on it
#     --platform P        override the image's platform (e.g. linux/amd64 for a runtime image on x86)
#     --tag TAG           image tag (default edgeq/<image>:<arch>; one image only)
#     --ca-certs FILE     PEM certificates to trust during the build (TLS-intercepting proxy);
#                         also $EDGEQ_EXTRA_CA_CERTS
#     --with-edgetpu      pipeline only: add Coral's edgetpu_compiler (needs packages.cloud.google.com)
#     --build-arg K=V     passed to docker build
#
# Needs a docker client that does BuildKit builds: one with the buildx plugin, or Debian's docker.io
# (20.10), whose client has BuildKit built in. A foreign platform needs qemu-user-static with
# binfmt_misc registered (.ci/docker-setup). Prints the image's size and build time when done.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

. "$repo/docker/docker-client.sh"

declare -A bases=()
debootstrap=0 platform="" tag="" ca=${EDGEQ_EXTRA_CA_CERTS:-} edgetpu=0 images=() extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --base-image)
      case $2 in
        pipeline=*|runtime=*|jetson=*) bases[${2%%=*}]=${2#*=} ;;
        *) bases[pipeline]=$2 bases[runtime]=$2 bases[jetson]=$2 ;;
      esac
      shift 2 ;;
    --debootstrap-base) debootstrap=1; shift ;;
    --platform) platform=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --ca-certs) ca=$2; shift 2 ;;
    --with-edgetpu) edgetpu=1; shift ;;
    --build-arg) extra+=(--build-arg "$2"); shift 2 ;;
    pipeline|runtime|jetson) images+=("$1"); shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#images[@]} -gt 0 ] || { echo "build.sh: name an image: pipeline, runtime or jetson" >&2; exit 2; }
[ -z "$tag" ] || [ ${#images[@]} -eq 1 ] || { echo "build.sh: --tag needs exactly one image" >&2; exit 2; }
if [ -n "$ca" ] && [ ! -s "$ca" ]; then echo "build.sh: --ca-certs $ca: no such file (or empty)" >&2; exit 2; fi
docker=$(pick_docker) || exit 1
$docker info >/dev/null 2>&1 || { echo "build.sh: cannot reach dockerd ($docker info failed); start it (.ci/docker-setup)" >&2; exit 1; }

for image in "${images[@]}"; do
  case $image in
    pipeline) plat=${platform:-linux/amd64} ;;
    runtime|jetson) plat=${platform:-linux/arm64} ;;
  esac
  t=${tag:-edgeq/$image:${plat#linux/}}
  base=${bases[$image]:-}
  if [ "$debootstrap" = 1 ] && [ -z "$base" ]; then
    [ "$image" != jetson ] || { echo "build.sh: the jetson image needs NVIDIA's L4T base; --debootstrap-base cannot make it" >&2; exit 2; }
    base=edgeq/base:bookworm-${plat#linux/}
    DOCKER=$docker "$repo/docker/make-base.sh" "${plat#linux/}" "$base" python3,python3-venv,ca-certificates
  fi
  args=(build --platform "$plat" -f "$repo/docker/$image.Dockerfile" -t "$t" --progress=plain)
  [ -z "$base" ] || args+=(--build-arg "BASE_IMAGE=$base")
  [ -z "$ca" ] || args+=(--secret "id=extra_ca_certs,src=$ca")
  [ "$image" != pipeline ] || args+=(--build-arg "WITH_EDGETPU=$edgetpu")
  echo "build.sh: $image -> $t ($plat${base:+, base $base}${ca:+, extra CA certs $ca})"
  start=$(date +%s)
  DOCKER_BUILDKIT=1 $docker "${args[@]}" ${extra[@]+"${extra[@]}"} "$repo"
  size=$($docker image inspect -f '{{.Size}}' "$t")
  echo "build.sh: built $t in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
done
