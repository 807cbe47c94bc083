#!/usr/bin/env bash
# Print the path of a docker client that can do BuildKit builds (sourced by build.sh, make-base.sh):
# $DOCKER if set; else the first `docker` with the buildx plugin; else a client older than 23.0
# (Debian's docker.io 20.10), whose BuildKit is built in. Newer clients without buildx refuse
# DOCKER_BUILDKIT=1 builds.
pick_docker() {
  if [ -n "${DOCKER:-}" ]; then echo "$DOCKER"; return; fi
  local c major
  for c in $(type -ap docker) /usr/bin/docker; do
    [ -x "$c" ] || continue
    if "$c" buildx version >/dev/null 2>&1; then echo "$c"; return; fi
    major=$("$c" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then echo "$c"; return; fi
  done
  echo "no docker client that can do BuildKit builds (install docker-buildx, or Debian's docker.io)" >&2
  return 1
}
