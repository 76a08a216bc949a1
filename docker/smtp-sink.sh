#!/bin/sh
# A tiny SMTP sink for the demo stack and the compose test: it accepts every
# message and stores it verbatim (dot-unstuffed, CRLF kept as sent) as
# $SINK_DIR/<time>-<pid>-<n>.eml, written to a .tmp name first and renamed,
# so a reader never sees half a message. No TLS, no AUTH: it is the
# "upstream" of the demo only, never something to expose.
#
#   smtp-sink serve [PORT]   listen (busybox nc -ll forks one copy per client)
#   smtp-sink                speak SMTP on stdin/stdout (one session)
set -u
SINK_DIR=${SINK_DIR:-/var/spool/outbox}
if [ "${1:-}" = serve ]; then
  port=${2:-2525}
  echo "smtp-sink: listening on :$port, writing to $SINK_DIR" >&2
  exec nc -ll -p "$port" -e "$0"
fi

host=${SINK_HOSTNAME:-sink.invalid}
reply() { printf '%s\r\n' "$1"; }
n=0
reply "220 $host ESMTP smtp-sink"
while IFS= read -r line; do
  line=${line%$(printf '\r')}
  verb=$(printf '%s' "$line" | cut -c1-4 | tr 'a-z' 'A-Z')
  case "$verb" in
    EHLO) reply "250-$host"; reply "250-8BITMIME"; reply "250-SMTPUTF8"; reply "250 SIZE 104857600" ;;
    HELO) reply "250 $host" ;;
    MAIL|RCPT|RSET|NOOP) reply "250 2.0.0 OK" ;;
    DATA)
      n=$((n + 1))
      name="$(date +%Y%m%dT%H%M%S)-$$-$n"
      tmp="$SINK_DIR/.$name.tmp"
      reply "354 End data with <CR><LF>.<CR><LF>"
      : > "$tmp"
      while IFS= read -r data; do
        plain=${data%$(printf '\r')}
        [ "$plain" = "." ] && break
        case "$data" in ..*) data=${data#.} ;; esac
        printf '%s\n' "$data" >> "$tmp"
      done
      mv "$tmp" "$SINK_DIR/$name.eml"
      echo "smtp-sink: stored $name.eml" >&2
      reply "250 2.0.0 Ok: queued as $name" ;;
    QUIT) reply "221 2.0.0 Bye"; exit 0 ;;
    *) reply "502 5.5.2 Command not recognized" ;;
  esac
done
