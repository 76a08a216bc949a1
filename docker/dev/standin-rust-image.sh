#!/bin/sh
# Make a local stand-in for the `rust:1.95-slim-bookworm` image that
# docker/Dockerfile's build stage starts FROM, on a machine with no container
# registry, so the users' Dockerfile itself can be built and checked here:
#
#   docker/dev/standin-rust-image.sh            # tags rust:1.95-slim-bookworm-standin
#   docker build -f docker/Dockerfile --build-arg RUST_IMAGE=rust:1.95-slim-bookworm-standin -t cachet:from-dockerfile .
#
# Debian bookworm from debootstrap (minbase) + gcc/libc6-dev + the host's
# rustup toolchain (bin/ and lib/ only). Slow (debootstrap ~90 s, a release
# build of the dependency tree ~10 min on 2 cores): not part of CI, which
# builds the same runtime stage with docker/build-image.sh instead.
set -eu
tag=${1:-rust:1.95-slim-bookworm-standin}
toolchain=${RUST_TOOLCHAIN_DIR:-$(rustc --print sysroot)}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" = 0 ] || { echo "standin-rust-image.sh: run as root (debootstrap)" >&2; exit 1; }
command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq debootstrap; }

work=$(mktemp -d "${TMPDIR:-/tmp}/rust-standin.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates \
  bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
mkdir -p "$work/root/usr/local/rust"
cp -a "$toolchain/bin" "$toolchain/lib" "$work/root/usr/local/rust/"
# This machine's trust store (it may hold a local TLS-inspection CA that
# cargo needs to reach crates.io); only the stand-in builder uses it.
cp -L /etc/ssl/certs/ca-certificates.crt "$work/root/usr/local/share/host-ca-bundle.pem"
rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/archives/"*.deb
tar -C "$work/root" -c . | docker import \
  -c 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV CARGO_HOME=/usr/local/cargo' \
  -c 'ENV CARGO_HTTP_CAINFO=/usr/local/share/host-ca-bundle.pem' \
  -c 'WORKDIR /' - "$tag" >/dev/null
echo "standin-rust-image.sh: tagged $tag" >&2
