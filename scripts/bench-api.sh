#!/usr/bin/env bash
# API-level benchmarks for BENCHMARKS.md, each measured against the real release sidecar in one run:
#   pkcs11   Decrypt cache hit vs miss and GenerateDataKey pool vs on-demand on a SoftHSMv2 token
#   metrics  cached Decrypt with metrics recorded vs a build with recording compiled out
#            (feature bench-noop-metrics, built into target/bench-noop), interleaved A/B rounds
#   probe    the load tester's throttle knee against a configured global limit
#   rss      resident memory with 100,000 decrypt-cache entries
# Usage: scripts/bench-api.sh [pkcs11|metrics|probe|rss ...] (default: all). All traffic stays on
# 127.0.0.1; every run is bounded. Output: target/bench/api-*.json and target/bench/api-summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-target/bench}
mkdir -p "$OUT"
SUMMARY="$OUT/api-summary.md"
WHAT=("$@")
[ ${#WHAT[@]} -gt 0 ] || WHAT=(pkcs11 metrics probe rss)
wants() { [[ " ${WHAT[*]} " == *" $1 "* ]]; }

cargo build --release -q -p kms-sidecar -p kms-loadtest
SIDECAR=target/release/kms-sidecar
LT=target/release/kms-loadtest
if wants metrics; then
  CARGO_TARGET_DIR=target/bench-noop cargo build --release -q -p kms-sidecar --features bench-noop-metrics
fi
NOOP=target/bench-noop/release/kms-sidecar

WORK=$(mktemp -d)
PID=
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi; }
trap 'stop; rm -rf "$WORK"' EXIT

# start BINARY NAME ARGS...: a sidecar on free ports with a fresh data dir; sets KMS, ADMIN, creds.
start() {
  local bin=$1 name=$2
  shift 2
  local log="$OUT/api-$name.log"
  "$bin" --data-dir "$WORK/$name" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-level warn "$@" >"$log" 2>&1 &
  PID=$!
  for _ in $(seq 200); do grep -q '^kms-sidecar: listening:' "$log" && break; sleep 0.1; done
  KMS=$(sed -n 's/^kms-sidecar: listening: kms=\([^ ]*\).*/\1/p' "$log")
  ADMIN=$(sed -n 's/^kms-sidecar: listening: .*admin=\([^ ]*\).*/\1/p' "$log")
  export AWS_ACCESS_KEY_ID=$(sed -n 's/^  AWS_ACCESS_KEY_ID=\([^ ]*\)$/\1/p' "$log")
  export AWS_SECRET_ACCESS_KEY=$(sed -n 's/^  AWS_SECRET_ACCESS_KEY=\([^ ]*\)$/\1/p' "$log")
  [ -n "$KMS" ] || { echo "sidecar $name did not start:"; cat "$log"; exit 1; }
}

metric() { curl -s "$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# closed NAME MIX ARGS...: closed-loop throughput (8 connections, 5 s after 2 s warm-up) -> ok req/s
closed() {
  local name=$1 mix=$2
  shift 2
  "$LT" run --no-progress --target "$KMS" --rate 0 --connections 8 --warmup-secs 2 --duration-secs 5 \
    --mix "$mix" "$@" --json "$OUT/api-$name.json" >/dev/null
  jq -r '.runs[-1].ok_rate | floor' "$OUT/api-$name.json"
}

{
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
} >"$SUMMARY"

if wants pkcs11; then
  echo "==> pkcs11 (SoftHSMv2): cache and pool on vs off"
  export SOFTHSM2_CONF="$WORK/softhsm2.conf"
  mkdir -p "$WORK/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\n' "$WORK/tokens" >"$SOFTHSM2_CONF"
  softhsm2-util --init-token --free --label bench --so-pin 5678 --pin 1234 >/dev/null
  export KMS_SIDECAR_PKCS11_PIN=1234
  P11=(--backend pkcs11 --pkcs11-token-label bench --pkcs11-sessions 2)
  DEC=(--keys 4 --ciphertexts-per-key 64)
  start "$SIDECAR" p11-on "${P11[@]}"
  hit=$(closed p11-decrypt-hit decrypt "${DEC[@]}")
  pool=$(closed p11-gdk-pool generate-data-key --keys 4 --context '')
  hits=$(metric 'kms_sidecar_cache_requests_total{cache="decrypt",result="hit"}')
  stop
  start "$SIDECAR" p11-off "${P11[@]}" --cache-max-entries 0 --data-key-pool-size 0
  miss=$(closed p11-decrypt-miss decrypt "${DEC[@]}")
  fresh=$(closed p11-gdk-fresh generate-data-key --keys 4 --context '')
  stop
  {
    echo "### pkcs11: cache and pool vs the backend path (closed loop, 8 connections, 5 s)"
    echo
    echo "| load | on (req/s) | off (req/s) | on / off |"
    echo "| --- | ---: | ---: | ---: |"
    echo "| Decrypt: cache hit vs every call to the token | $hit | $miss | $(jq -n "$hit/$miss*100|round/100") |"
    echo "| GenerateDataKey: pooled vs on demand | $pool | $fresh | $(jq -n "$pool/$fresh*100|round/100") |"
    echo
    echo "Decrypt cache hits counted by the sidecar in the 'on' run: ${hits:-?}."
    echo
  } >>"$SUMMARY"
fi

if wants metrics; then
  echo "==> metrics recorded vs compiled out (cached Decrypt, 3 interleaved rounds)"
  declare -a on_r off_r
  for round in 1 2 3; do
    start "$SIDECAR" "metrics-on-$round"
    on_r+=("$(closed "metrics-on-$round" decrypt --keys 4 --ciphertexts-per-key 16)")
    stop
    start "$NOOP" "metrics-off-$round"
    off_r+=("$(closed "metrics-off-$round" decrypt --keys 4 --ciphertexts-per-key 16)")
    stop
  done
  on_sum=$(IFS=+; echo "${on_r[*]}" | bc)
  off_sum=$(IFS=+; echo "${off_r[*]}" | bc)
  {
    echo "### Metrics recording cost (cached Decrypt, closed loop, 8 connections, 5 s per round)"
    echo
    echo "| round | metrics on (req/s) | recording compiled out (req/s) |"
    echo "| --- | ---: | ---: |"
    for i in 0 1 2; do echo "| $((i + 1)) | ${on_r[$i]} | ${off_r[$i]} |"; done
    echo "| sum | $on_sum | $off_sum |"
    echo
    echo "Overhead (1 - on/off over the sums): $(jq -n "(1 - $on_sum/$off_sum)*1000|round/10") %."
    echo
  } >>"$SUMMARY"
fi

if wants probe; then
  echo "==> probe knee against a configured global limit of 2000/s"
  start "$SIDECAR" probe --rate-limit-global 2000 --rate-limit-global-burst 200
  "$LT" probe --no-progress --target "$KMS" --admin-url "$ADMIN" --mix encrypt --keys 2 \
    --start-rate 500 --factor 1.5 --step-secs 3 --refine 3 --json "$OUT/api-probe.json" >/dev/null
  stop
  {
    echo "### Probe knee vs the sidecar's own limiter (global 2000/s, burst 200)"
    echo
    jq -r '"- knee (highest passing rate): \(.probe.knee_rate // .probe.knee // "?") req/s; configured limit from /v1/status: \(.probe.configured_limit.rate_per_second // "unknown"); steps: \([.runs[] | "\(.planned_rate|floor)/s -> \(.ok_rate|floor) ok/s"] | join(", "))"' "$OUT/api-probe.json"
    echo
  } >>"$SUMMARY"
fi

if wants rss; then
  echo "==> RSS with 100,000 decrypt-cache entries"
  start "$SIDECAR" rss --cache-max-entries 100000 --cache-max-bytes 268435456 --cache-ttl-secs 3600
  rss0=$(metric process_resident_memory_bytes)
  "$LT" run --no-progress --target "$KMS" --rate 0 --connections 8 --warmup-secs 0 --duration-secs 20 \
    --mix decrypt --keys 4 --ciphertexts-per-key 25000 --payload-bytes 32 --max-requests 400000 \
    --json "$OUT/api-rss.json" >/dev/null
  entries=$(metric 'kms_sidecar_cache_entries{cache="decrypt"}')
  rss1=$(metric process_resident_memory_bytes)
  stop
  {
    echo "### Memory with a full decrypt cache (32-byte plaintexts)"
    echo
    echo "- RSS after start: $((${rss0%.*} / 1048576)) MiB; with ${entries:-?} decrypt-cache entries: $((${rss1%.*} / 1048576)) MiB; per entry: $(jq -n "(${rss1%.*} - ${rss0%.*}) / ${entries:-1} | floor") bytes (includes the load tester's setup traffic: 100,000 Encrypts)."
    echo
  } >>"$SUMMARY"
fi

cat "$SUMMARY"
