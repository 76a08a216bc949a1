#!/bin/sh
# HEALTHCHECK for the cachet container (busybox sh, no other tools needed).
#
# * CACHET_HEALTH_ADMIN set (e.g. 127.0.0.1:9925, the admin listener):
#   healthy when its /healthz answers 200 (listening + spool writable), asked
#   by `cachet healthcheck` itself (busybox's static wget is not reliable here).
# * otherwise: healthy when the SMTP listener on CACHET_SMTP_PORT (default
#   2525) greets with a 220 banner.
set -u
if [ -n "${CACHET_HEALTH_ADMIN:-}" ]; then
  exec /usr/local/bin/cachet healthcheck --admin "$CACHET_HEALTH_ADMIN"
fi
port=${CACHET_SMTP_PORT:-2525}
banner=$(printf 'QUIT\r\n' | timeout 8 nc -w 5 127.0.0.1 "$port" 2>/dev/null | head -n 1)
case "$banner" in
  220*) exit 0 ;;
  *) echo "no SMTP 220 banner on 127.0.0.1:$port (got: ${banner:-nothing})" >&2; exit 1 ;;
esac
