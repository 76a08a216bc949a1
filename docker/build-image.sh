#!/bin/sh
# Build the cachet image without any registry (what CI runs).
#
#   docker/build-image.sh [BINARY]
#
# BINARY defaults to target/release/cachet, else target/debug/cachet. The image
# is tagged $CACHET_IMAGE (default cachet:local). The demo sink runs from the
# same image (/usr/local/bin/smtp-sink), so nothing else needs building.
#
# How: docker/rootfs.sh assembles the runtime tree on the host (binary + the
# libraries ldd lists + busybox-static + CA bundle + passwd), then the
# `runtime` stage of docker/Dockerfile, cut out of that file, is built with the
# tree as its only context. FROM scratch pulls nothing. Takes seconds.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
tag=${CACHET_IMAGE:-cachet:local}

bin=${1:-}
if [ -z "$bin" ]; then
  for c in "$repo/target/release/cachet" "$repo/target/debug/cachet"; do
    if [ -x "$c" ]; then bin=$c; break; fi
  done
fi
[ -n "$bin" ] && [ -x "$bin" ] || {
  echo "build-image.sh: no cachet binary (run cargo build, or pass its path)" >&2; exit 1; }

# The host needs busybox-static and ca-certificates (Debian). Install them when
# missing and we may (CI runs as root on a fresh machine).
need=""
if ! command -v busybox >/dev/null 2>&1 || ldd "$(command -v busybox)" >/dev/null 2>&1; then
  need=" busybox-static"
fi
ls /usr/share/ca-certificates/mozilla/*.crt >/dev/null 2>&1 || need="$need ca-certificates"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "build-image.sh: installing$need" >&2
    # other jobs on the machine may hold the dpkg lock: wait for it
    log=$(mktemp)
    if ! { apt-get -o DPkg::Lock::Timeout=300 update -qq &&
           DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
             --no-install-recommends $need; } >"$log" 2>&1; then
      cat "$log" >&2; rm -f "$log"; echo "build-image.sh: apt-get failed" >&2; exit 1
    fi
    rm -f "$log"
  else
    echo "build-image.sh: please install:$need" >&2; exit 1
  fi
fi

ctx=$(mktemp -d "${TMPDIR:-/tmp}/cachet-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT INT TERM
sh "$here/rootfs.sh" "$bin" "$ctx/rootfs"

# The runtime stage of docker/Dockerfile, verbatim but for its source tree.
sed -n '/^FROM scratch AS runtime/,$p' "$here/Dockerfile" \
  | sed '/^COPY /{s| --from=build | |;s| /rootfs/| rootfs/|;}' > "$ctx/Dockerfile"
if ! grep -q '^COPY rootfs/ /$' "$ctx/Dockerfile" || grep -q -- '--from' "$ctx/Dockerfile"; then
  echo "build-image.sh: docker/Dockerfile has no 'FROM scratch AS runtime' stage with 'COPY --from=build /rootfs/ /'" >&2
  exit 1
fi
if grep -q '^RUN' "$ctx/Dockerfile"; then
  echo "build-image.sh: the runtime stage must not RUN anything" >&2; exit 1
fi

start=$(date +%s)
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build -q \
  --label "org.opencontainers.image.source-binary=$(basename "$bin")" \
  -t "$tag" "$ctx" >/dev/null
echo "build-image.sh: built $tag from $bin in $(( $(date +%s) - start ))s ($(du -sh "$ctx/rootfs" | cut -f1) rootfs)" >&2
