#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time and fails on any crash (docs/reliability.md).
#
#   fuzz/run.sh [TARGET...]          all targets (from `cargo fuzz list`) when none is named
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 20: 13 targets, 260 s plus the build)
#   FUZZ_BUDGET     seconds for everything, build included (default 330): when the build was
#                   slow (a cold cache), each target gets an equal share of what is left, at
#                   least 5 s, so CI stays under six minutes
#   FUZZ_SANITIZER  cargo-fuzz sanitizer (default "none": cachet has no unsafe code, and without
#                   ASan the build is shorter and executions ~2x faster; "address" for a deep run)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). Targets run
# one after another. Seeds come from corpus/<target>/ (committed, never written); what libFuzzer
# learns goes to corpus-work/<target>/ (ignored by git, kept between runs). A crash, panic,
# timeout or out-of-memory stops that target; the others still run, then the script prints each
# failing target with its crash input (fuzz/artifacts/<target>/...) and exits 1. Reproduce with
#   cargo +nightly fuzz run -s none -a TARGET fuzz/artifacts/TARGET/crash-...
set -uo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-20}"
budget="${FUZZ_BUDGET:-330}"
sanitizer="${FUZZ_SANITIZER:-none}"
flags=(--sanitizer "$sanitizer" --debug-assertions --release)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: cargo-fuzz is missing (cargo install cargo-fuzz --locked)" >&2
  exit 2
fi

start=$(date +%s)
echo "fuzz/run.sh: building the fuzz targets (sanitizer $sanitizer, debug assertions on)"
if ! cargo +nightly fuzz build "${flags[@]}"; then
  echo "fuzz/run.sh: the fuzz targets do not build" >&2
  exit 1
fi
built=$(date +%s)
echo "fuzz/run.sh: build took $((built - start)) s"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
share=$(((budget - (built - start)) / ${#targets[@]}))
[ "$share" -lt "$seconds" ] && seconds=$((share < 5 ? 5 : share))
bin="target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"

mkdir -p target/fuzz-logs
failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus-work/$t" "artifacts/$t" "corpus/$t"
  log="target/fuzz-logs/$t.log"
  "$bin/$t" "corpus-work/$t" "corpus/$t" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "fuzz/run.sh: $t: ${seconds} s, ${execs:-?} executions ($(( ${execs:-0} / seconds ))/s)"
  if [ $rc -ne 0 ]; then
    input=$(sed -n 's/.*Test unit written to \([^ ]*\).*/\1/p' "$log" | tail -1)
    echo "fuzz/run.sh: $t FAILED (exit $rc); crash input: fuzz/${input:-? (see fuzz/$log)}" >&2
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -5 >&2
    failed+=("$t: fuzz/${input:-$log}")
  fi
done

echo "fuzz/run.sh: ${#targets[@]} targets in $(($(date +%s) - start)) s (build $((built - start)) s)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/run.sh: crashes found:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "fuzz/run.sh: no crashes"
