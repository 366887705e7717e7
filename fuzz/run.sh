#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) from its committed seed
# corpus, then prints, per target: executions, time, and the corpus size it reached.
#   fuzz/run.sh [seconds]
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). New inputs are
# kept in fuzz/corpus/<target>/ (the committed seeds are the ones named seed-*); a crash
# stops the run and leaves its input in fuzz/artifacts/<target>/: turn it into a
# regression test before fixing it.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
targets=(path_and_route request_head client_id_rewrite multipart_scan plivo_verify policy_load)
cargo +nightly fuzz build -O >/dev/null
printf '%-20s %12s %8s %8s\n' target executions seconds corpus
for t in "${targets[@]}"; do
  log=$(mktemp)
  started=$(date +%s)
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || {
    echo "$t: FAILED, see $log and fuzz/artifacts/$t/"; tail -30 "$log"; exit 1; }
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
  printf '%-20s %12s %8s %8s\n' "$t" "$runs" "$(( $(date +%s) - started ))" "$(ls "corpus/$t" | wc -l)"
done
