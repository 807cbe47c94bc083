#!/usr/bin/env bash
# Make a Debian bookworm base image without a container registry: debootstrap a minimal rootfs
# for ARCH, cache it as a tarball, turn it into image TAG (a `FROM scratch` + `ADD` BuildKit build:
# unlike `docker import`, it records the image's architecture). For machines that reach Debian's
# package mirror but no registry (the tests, locked-down users).
#
#   docker/make-base.sh amd64 edgeq/base:bookworm-amd64 python3,python3-venv,ca-certificates
#   docker/make-base.sh arm64 edgeq/base:bookworm-arm64 python3,python3-venv,ca-certificates
#
# A foreign ARCH (arm64 on x86-64) needs qemu-user-static with binfmt_misc registered
# (.ci/docker-setup does it). The tarball is cached in $EDGEQ_DOCKER_CACHE (default
# /var/cache/edgeq-docker as root, else ~/.cache/edgeq-docker), keyed by arch, suite, package list
# and mirror: a second run imports it in seconds instead of debootstrapping again (about 6 min for
# arm64 under QEMU on 2 cores). EDGEQ_REBUILD_BASE=1 re-imports even if TAG exists.
set -euo pipefail

usage() { echo "usage: $0 ARCH TAG [PACKAGES,...]  (ARCH: amd64|arm64)" >&2; exit 2; }
[ $# -ge 2 ] || usage
arch=$1 tag=$2 include=${3:-ca-certificates}
suite=${EDGEQ_DEBIAN_SUITE:-bookworm}
mirror=${EDGEQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ "$(id -u)" = 0 ]; then default_cache=/var/cache/edgeq-docker; else default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/edgeq-docker; fi
cache=${EDGEQ_DOCKER_CACHE:-$default_cache}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/docker-client.sh"
docker=$(pick_docker) || exit 1

case $arch in amd64|arm64) ;; *) usage ;; esac
tmp=()
trap 'rm -rf "${tmp[@]}"' EXIT
key=$(printf '%s|%s|%s|%s' "$suite" "$arch" "$include" "$mirror" | sha256sum | cut -c1-12)
tarball="$cache/$suite-$arch-$key.tar.gz"

if [ "${EDGEQ_REBUILD_BASE:-0}" != 1 ] && $docker image inspect "$tag" >/dev/null 2>&1 \
   && [ "$($docker image inspect -f '{{index .Config.Labels "edgeq.base.key"}} {{.Architecture}}' "$tag")" = "$key $arch" ]; then
  echo "make-base: $tag already present (key $key)"
  exit 0
fi

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "make-base: debootstrap not installed (apt-get install debootstrap)" >&2; exit 1; }
  if [ "$arch" != "$(dpkg --print-architecture)" ] && [ ! -e "/proc/sys/fs/binfmt_misc/qemu-aarch64" ]; then
    echo "make-base: building $arch rootfs needs qemu-user-static with binfmt_misc registered; run .ci/docker-setup" >&2
    exit 1
  fi
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/rootfs-$arch.XXXXXX")
  tmp+=("$work")
  start=$(date +%s)
  echo "make-base: debootstrap $suite $arch ($include) from $mirror"
  debootstrap --variant=minbase --arch="$arch" --include="$include" "$suite" "$work/rootfs" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; echo "make-base: debootstrap failed" >&2; exit 1; }
  # What docker's own debian:*-slim images drop: package caches, docs, man pages.
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/* \
         "$work"/rootfs/usr/share/doc/* "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/locale/*
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
    "$mirror" "$suite" "$mirror" "$suite" "$suite" > "$work/rootfs/etc/apt/sources.list"
  tar -C "$work/rootfs" --numeric-owner -czf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  echo "make-base: rootfs cached at $tarball ($(du -h "$tarball" | cut -f1), $(( $(date +%s) - start )) s)"
fi

ctx=$(mktemp -d)
tmp+=("$ctx")
ln "$tarball" "$ctx/rootfs.tar.gz" 2>/dev/null || cp "$tarball" "$ctx/rootfs.tar.gz"
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
ADD rootfs.tar.gz /
ENV LANG=C.UTF-8
LABEL edgeq.base.key=$key
CMD ["/bin/bash"]
DOCKERFILE
DOCKER_BUILDKIT=1 $docker build -q --platform "linux/$arch" -t "$tag" "$ctx" >/dev/null
echo "make-base: $tag (linux/$arch) made from $tarball"
