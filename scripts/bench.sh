#!/usr/bin/env bash
# Load-tester benchmarks for BENCHMARKS.md ("Load tester"): baseline mode (same-run ratio of the
# sidecar to a bare responder) for uncached Decrypt and for Encrypt, the load tester's own ceiling
# against the baseline responder, and a comparison with oha on the same responder (when oha is
# installed: `cargo install oha --locked`). All traffic stays on 127.0.0.1; every run is bounded.
# Output: target/bench/*.json and target/bench/summary.md. Takes about 4 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-target/bench}
mkdir -p "$OUT"
cargo build --release -q -p kms-sidecar -p kms-loadtest
SIDECAR=target/release/kms-sidecar
LT=target/release/kms-loadtest

DATA=$(mktemp -d)
LOG="$OUT/sidecar.log"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

"$SIDECAR" --data-dir "$DATA" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-level warn >"$LOG" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q '^kms-sidecar: listening:' "$LOG" && break; sleep 0.1; done
KMS=$(sed -n 's/^kms-sidecar: listening: kms=\([^ ]*\).*/\1/p' "$LOG")
ADMIN=$(sed -n 's/^kms-sidecar: listening: .*admin=\([^ ]*\).*/\1/p' "$LOG")
export AWS_ACCESS_KEY_ID=$(sed -n 's/^  AWS_ACCESS_KEY_ID=\([^ ]*\)$/\1/p' "$LOG")
export AWS_SECRET_ACCESS_KEY=$(sed -n 's/^  AWS_SECRET_ACCESS_KEY=\([^ ]*\)$/\1/p' "$LOG")
[ -n "$KMS" ] && [ -n "$AWS_ACCESS_KEY_ID" ] || { echo "sidecar did not start:"; cat "$LOG"; exit 1; }
echo "==> sidecar kms=$KMS admin=$ADMIN"

COMMON=(--no-progress --target "$KMS" --admin-url "$ADMIN" --connections 8 --warmup-secs 2)

echo "==> baseline mode, Decrypt (uncached: 4 keys x 256 ciphertexts; there is no cache yet)"
"$LT" baseline "${COMMON[@]}" --mix decrypt --keys 4 --ciphertexts-per-key 256 \
  --throughput-secs 5 --duration-secs 10 --json "$OUT/baseline-decrypt.json"
echo "==> baseline mode, Encrypt"
"$LT" baseline "${COMMON[@]}" --mix encrypt --keys 4 \
  --throughput-secs 5 --duration-secs 10 --json "$OUT/baseline-encrypt.json"
echo "==> max mode against the in-process baseline responder (the load tester's own ceiling)"
"$LT" max --no-progress --against-baseline --connections 8 --warmup-secs 1 --mix decrypt \
  --start-rate 4000 --factor 2 --step-secs 3 --refine 3 --p99-bound-ms 10 --pause-secs 0.5 \
  --json "$OUT/max-baseline.json"

echo "==> the standalone baseline responder: kms-loadtest closed loop vs oha (8 connections, 10 s)"
"$LT" serve-baseline --listen 127.0.0.1:7399 --duration-secs 120 >"$OUT/serve-baseline.log" 2>&1 &
pids+=($!)
sleep 1
"$LT" run --no-progress --target http://127.0.0.1:7399 --rate 0 --duration-secs 10 --warmup-secs 1 \
  --connections 8 --mix decrypt --key-id bench --ciphertexts-per-key 4 --keep-keys \
  --json "$OUT/tester-closed.json" >/dev/null
BODY=$(jq -c '{CiphertextBlob: "AQIDAHhbYXNlbGluZS1jaXBoZXJ0ZXh0", EncryptionContext: {app: "kms-loadtest"}}' <<<'{}')
if command -v oha >/dev/null 2>&1; then
  oha -c 8 -z 10s --no-tui --output-format json -m POST \
    -H 'X-Amz-Target: TrentService.Decrypt' -H 'Content-Type: application/x-amz-json-1.1' \
    -d "$BODY" http://127.0.0.1:7399/ >"$OUT/oha.json"
else
  echo "oha not installed (cargo install oha --locked): comparison skipped" | tee "$OUT/oha.json"
fi

{
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| figure | baseline responder | sidecar | sidecar / baseline |"
  echo "| --- | ---: | ---: | ---: |"
  for op in decrypt encrypt; do
    jq -r --arg op "$op" '.baseline as $b |
      "| \($op) throughput, closed loop, 8 conns (req/s) | \($b.baseline_throughput|floor) | \($b.sidecar_throughput|floor) | \($b.throughput_ratio*1000|round/1000) |",
      "| \($op) p50 at \($b.rate) req/s (ms) | \($b.baseline_latency_ms.p50) | \($b.sidecar_latency_ms.p50) | \($b.p50_ratio*100|round/100) |",
      "| \($op) p99 at \($b.rate) req/s (ms) | \($b.baseline_latency_ms.p99) | \($b.sidecar_latency_ms.p99) | \($b.p99_ratio*100|round/100) |",
      "| \($op) p99.9 at \($b.rate) req/s (ms) | \($b.baseline_latency_ms.p999) | \($b.sidecar_latency_ms.p999) | \($b.p999_ratio*100|round/100) |",
      "| \($op) errors / late starts at \($b.rate) req/s | \(.runs[2].errors) / \(.runs[2].late_starts) | \(.runs[3].errors) / \(.runs[3].late_starts) | |"' \
      "$OUT/baseline-$op.json"
  done
  jq -r '"| SigV4 signing per request (us, mean / p99) | | \(.runs[3].signing.mean_us*10|round/10) / \(.runs[3].signing.p99_us*10|round/10) | |"' "$OUT/baseline-decrypt.json"
  jq -r '"| load tester max vs baseline responder (req/s; p99 <= 10 ms, late <= 1%) | \(.max.max_sustainable_rate) | | stopped: \(.max.stop_reason) |"' "$OUT/max-baseline.json"
  jq -r '"| kms-loadtest closed loop vs standalone responder: req/s, p50 ms, p99 ms | \(.runs[0].achieved_rate|floor), \(.runs[0].latency_ms.p50), \(.runs[0].latency_ms.p99) | | |"' "$OUT/tester-closed.json"
  if command -v oha >/dev/null 2>&1; then
    jq -r '"| oha closed loop vs standalone responder: req/s, p50 ms, p99 ms | \(.summary.requestsPerSec|floor), \(.latencyPercentiles.p50*1000000|round/1000), \(.latencyPercentiles.p99*1000000|round/1000) | | |"' "$OUT/oha.json"
  fi
} >"$OUT/summary.md"
cat "$OUT/summary.md"
