#!/usr/bin/env bash
# cachet end-to-end benchmark (issue 6): one command.
#
#   bench/run.sh [--quick] [-n N] [--cachet PATH] [--smime auto|require|off] [--help]
#
# Installs Postfix from Debian if it is missing ("No configuration", the system instance is never
# configured or started), then runs private Postfix instances, smtp-source/smtp-sink and cachet on
# 127.0.0.1 only, from temp dirs that are removed on exit. Everything (keys, certificates, configs)
# is generated at run time. The work is done by bench/bench.py (Python >= 3.11, stdlib only); see
# its header and docs/performance.md.
#
# The cachet binary: --cachet PATH or $CACHET_BIN; otherwise `cargo build --release` is run once.
# Output: the table on stdout, progress on stderr, and one machine-readable line
#   BENCH_SUMMARY {json}
# Exit: 0 every topology delivered everything (and cachet's output verified), 1 a failure,
#       2 Postfix missing and not installable here (the caller decides whether that is a skip).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "bench: needs python3 >= 3.11 (set PYTHON=...)" >&2
  exit 1
fi
exec "$py" "$here/bench.py" "$@"
