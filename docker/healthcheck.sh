#!/bin/sh
# HEALTHCHECK for the cachet container (busybox sh, no other tools needed).
#
# * CACHET_HEALTH_URL set (e.g. http://127.0.0.1:9925/healthz, the admin
#   listener): healthy when it answers 2xx. This is the real readiness check
#   (listening + spool writable) once the admin listener exists.
# * otherwise: healthy when the SMTP listener on CACHET_SMTP_PORT (default
#   2525) greets with a 220 banner.
set -u
if [ -n "${CACHET_HEALTH_URL:-}" ]; then
  exec wget -q -T 5 -O /dev/null "$CACHET_HEALTH_URL"
fi
port=${CACHET_SMTP_PORT:-2525}
banner=$(printf 'QUIT\r\n' | timeout 8 nc -w 5 127.0.0.1 "$port" 2>/dev/null | head -n 1)
case "$banner" in
  220*) exit 0 ;;
  *) echo "no SMTP 220 banner on 127.0.0.1:$port (got: ${banner:-nothing})" >&2; exit 1 ;;
esac
