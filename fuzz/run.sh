#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time and fails on any crash (docs/reliability.md).
#
#   fuzz/run.sh [TARGET...]          all targets (from `cargo fuzz list`) when none is named
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 25)
#   FUZZ_SANITIZER  cargo-fuzz sanitizer (default "none": cachet has no unsafe code, and without
#                   ASan the build is shorter and executions ~2x faster; "address" for a deep run)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). Seeds come
# from corpus/<target>/ (committed, never written); what libFuzzer learns goes to
# corpus-work/<target>/ (ignored by git, kept between runs). A crash, leak, timeout or
# out-of-memory stops that target; the others still run, then the script prints each failing
# target with its crash input (artifacts/<target>/...) and exits 1. Reproduce one with
#   cargo +nightly fuzz run -s none -a TARGET artifacts/TARGET/crash-...
set -uo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-25}"
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

mkdir -p target/fuzz-logs
failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus-work/$t" "artifacts/$t" "corpus/$t"
  log="target/fuzz-logs/$t.log"
  echo "fuzz/run.sh: $t for ${seconds} s"
  cargo +nightly fuzz run "${flags[@]}" "$t" "corpus-work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
  rc=$?
  stats=$(grep -E '^#[0-9]+ +DONE' "$log" | tail -1)
  echo "  ${stats:-no final stats}"
  if [ $rc -ne 0 ]; then
    input=$(grep -oE '(Test unit written to|artifact_prefix.*Test unit written to) [^ ]+' "$log" | tail -1 | awk '{print $NF}')
    echo "fuzz/run.sh: $t FAILED (exit $rc); crash input: fuzz/${input:-unknown (see fuzz/$log)}" >&2
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
