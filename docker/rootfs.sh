#!/bin/sh
# Assemble the runtime root filesystem of the cachet image in a directory.
#
#   docker/rootfs.sh BINARY OUTDIR
#
# The same script runs in both build paths, so the two images are the same
# file for file:
#   * docker/Dockerfile (users, normal machine): inside the rust builder stage;
#   * docker/build-image.sh (CI, no registry): on the host.
# It needs only a shell, coreutils, ldd and busybox-static + ca-certificates
# (Debian package names). Nothing is downloaded.
#
# Layout (the image is FROM scratch plus this tree):
#   /usr/local/bin/cachet             the gateway (dynamically linked, glibc)
#   /lib*, /usr/lib*                  exactly the shared libraries ldd lists
#   /bin/busybox + /bin/{sh,nc,wget,...}  healthcheck, demo sink, debugging
#   /usr/local/bin/cachet-healthcheck  HEALTHCHECK command
#   /usr/local/bin/smtp-sink           tiny SMTP sink for the demo stack
#   /etc/ssl/certs/ca-certificates.crt Debian's Mozilla CA set (upstream TLS verify)
#   /etc/passwd, /etc/group           root + cachet (uid/gid 10025)
#   /etc/cachet, /var/spool/cachet, /var/spool/outbox (demo sink), /tmp,
#   /run/secrets                      mount points
set -eu

bin=${1:?usage: rootfs.sh BINARY OUTDIR}
out=${2:?usage: rootfs.sh BINARY OUTDIR}
case "$bin" in /*) ;; *) bin=$(pwd)/$bin ;; esac
case "$out" in /*) ;; *) out=$(pwd)/$out ;; esac
here=$(cd "$(dirname "$0")" && pwd)
CACHET_UID=${CACHET_UID:-10025}

[ -x "$bin" ] || { echo "rootfs.sh: $bin is not an executable" >&2; exit 1; }
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { echo "rootfs.sh: busybox not found (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$busybox" >/dev/null 2>&1; then
  echo "rootfs.sh: $busybox is dynamically linked; install busybox-static" >&2; exit 1
fi
# The trust store is Debian's Mozilla set as packaged (not this host's
# /etc/ssl/certs bundle, which may carry local additions such as a
# TLS-inspection CA): the same on every build machine. Private CAs for the
# upstream belong in [upstream] ca_file.
mozilla=/usr/share/ca-certificates/mozilla
ls "$mozilla"/*.crt >/dev/null 2>&1 || { echo "rootfs.sh: $mozilla/*.crt missing (apt-get install ca-certificates)" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"
cd "$out"
mkdir -p bin etc/ssl/certs usr/local/bin etc/cachet var/spool/cachet var/spool/outbox tmp run/secrets

# 1. the binary and the shared objects it needs (glibc, libgcc_s, ld.so).
install -m 0755 "$bin" usr/local/bin/cachet
# The image carries no debug information (the release profile keeps line tables for
# backtraces on the host): strip it, which takes the binary from ~60 MB to ~15 MB.
if command -v strip >/dev/null 2>&1; then
  strip --strip-unneeded usr/local/bin/cachet
else
  echo "rootfs.sh: no strip (binutils): the image keeps the debug sections" >&2
fi
if ldd "$bin" >/dev/null 2>&1; then
  ldd "$bin" | awk '/=> \//{print $3} /^[[:space:]]*\//{print $1}' | sort -u |
  while read -r lib; do
    mkdir -p ".$(dirname "$lib")"
    cp -L "$lib" ".$lib"
  done
fi
# A merged-/usr host resolves /lib64/ld-linux-x86-64.so.2 through a symlink; the
# copy above keeps the path ldd printed, which is the one the binary asks for.

# 2. busybox for sh/nc/wget (healthcheck, demo sink, `docker exec` debugging).
install -m 0755 "$busybox" bin/busybox
for applet in sh ash cat cp date echo env grep head id kill ls mkdir mv nc \
              printf ps rm cut chown chmod tar gzip gunzip du df sed sleep tail test timeout tr wc wget; do
  ln -s busybox "bin/$applet"
done
install -m 0755 "$here/healthcheck.sh" usr/local/bin/cachet-healthcheck
install -m 0755 "$here/smtp-sink.sh" usr/local/bin/smtp-sink

# 3. trust store, users, name service.
cat "$mozilla"/*.crt > etc/ssl/certs/ca-certificates.crt
cat > etc/passwd <<PASSWD
root:x:0:0:root:/root:/bin/sh
cachet:x:$CACHET_UID:$CACHET_UID:cachet:/var/spool/cachet:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > etc/group <<GROUP
root:x:0:
cachet:x:$CACHET_UID:
nogroup:x:65534:
GROUP
printf 'hosts: files dns\n' > etc/nsswitch.conf

# 4. writable places: owned by the runtime user. A named volume mounted on
#    /var/spool/cachet (or /var/spool/outbox) starts with this owner and mode.
#    (Docker COPY resets owners to root: the Dockerfile copies var/spool
#    again with --chown.)
chmod 1777 tmp
chmod 0750 var/spool/cachet var/spool/outbox
chown "$CACHET_UID:$CACHET_UID" var/spool/cachet var/spool/outbox
chmod 0755 etc/cachet run/secrets
