#!/bin/sh
# The demo in one command: cachet + a mail sink, a message through it, and the
# S/MIME result checked with openssl.
#
#   docker/demo/run.sh            up + send + show
#   docker/demo/run.sh up|send|show|logs|down
#
# Uses image $CACHET_IMAGE (default cachet:local; built with build-image.sh from
# target/*/cachet when missing), publishes SMTP on 127.0.0.1:${DEMO_PORT:-2525}.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
docker_dir=$(dirname "$here")
export CACHET_IMAGE=${CACHET_IMAGE:-cachet:local}
export CACHET_DEMO_DIR=${CACHET_DEMO_DIR:-$here/out}
export CACHET_SMTP_PUBLISH=${CACHET_SMTP_PUBLISH:-127.0.0.1:${DEMO_PORT:-2525}}
project=${COMPOSE_PROJECT_NAME:-cachet-demo}

if docker compose version >/dev/null 2>&1; then compose="docker compose"; else compose="docker-compose"; fi
dc() { $compose -p "$project" -f "$docker_dir/docker-compose.yml" -f "$docker_dir/docker-compose.demo.yml" "$@"; }

up() {
  docker image inspect "$CACHET_IMAGE" >/dev/null 2>&1 || CACHET_IMAGE=$CACHET_IMAGE sh "$docker_dir/build-image.sh"
  sh "$here/setup.sh" "$CACHET_DEMO_DIR"
  dc up -d --no-build
  printf 'waiting for cachet to be healthy'
  i=0
  while [ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$(dc ps -q cachet)")" != healthy ]; do
    i=$((i + 1)); [ $i -le 60 ] || { echo; dc ps; dc logs --tail 50 cachet; exit 1; }
    printf .; sleep 1
  done
  echo " ok: SMTP on $CACHET_SMTP_PUBLISH"
}

send() {
  # from inside the compose network (the sink container has busybox nc)
  id=$(date +%s)
  printf 'EHLO demo.test\r\nMAIL FROM:<alice@demo.test>\r\nRCPT TO:<bob@demo.test>\r\nDATA\r\nFrom: Alice <alice@demo.test>\r\nTo: Bob <bob@demo.test>\r\nSubject: cachet demo %s\r\nMessage-ID: <demo-%s@demo.test>\r\n\r\nHello Bob, this left signed and encrypted.\r\n.\r\nQUIT\r\n' "$id" "$id" \
    | dc exec -T sink sh -c '(cat; sleep 3) | nc cachet 2525'
}

show() {
  sleep 2
  dc exec -T sink ls -l /var/spool/outbox
  out=$(mktemp -d)
  docker cp "$(dc ps -q sink):/var/spool/outbox/." "$out/"
  last=$(ls -t "$out"/*.eml 2>/dev/null | head -n 1 || true)
  [ -n "$last" ] || { echo "no mail arrived yet (docker/demo/run.sh logs)"; rm -rf "$out"; return 0; }
  echo "--- newest message, headers:"; sed -n '1,/^\r\{0,1\}$/p' "$last"
  if command -v openssl >/dev/null 2>&1; then
    d=$CACHET_DEMO_DIR
    if openssl cms -decrypt -in "$last" -recip "$d/recipients/bob@demo.test.pem" -inkey "$d/private/bob@demo.test.key" -out "$out/dec" 2>/dev/null; then
      echo "--- decrypts with bob's key"
      openssl cms -verify -in "$out/dec" -CAfile "$d/trust/ca.pem" -purpose smimesign -out "$out/plain" 2>&1 | tail -n 1
      echo "--- content:"; cat "$out/plain"
    else
      echo "--- not encrypted to bob (openssl cms -decrypt failed)"
    fi
  fi
  rm -rf "$out"
}

case "${1:-all}" in
  up) up ;;
  send) send ;;
  show) show ;;
  logs) dc logs --tail 100 ;;
  down) dc down -v ;;
  all) up; send; show ;;
  *) echo "usage: $0 [up|send|show|logs|down]" >&2; exit 2 ;;
esac
