#!/usr/bin/env bash
# What proxy mode's Decrypt cache buys, for BENCHMARKS.md ("Proxy mode: cached Decrypt vs the
# upstream"): an upstream sidecar (embedded backend, its own decrypt cache off so that every Decrypt
# pays the backend's latency, as at a real KMS) slowed by injected latency (`/v1/faults`, Decrypt
# only) of 5, 20 and 50 ms, and a proxy-mode sidecar in front of it. For each latency the same
# kms-loadtest Decrypt load (16 ciphertexts, closed loop, 8 connections, 1 s warm-up + SECS s) runs
# straight at the upstream and then through the proxy, whose cache answers after the warm-up.
# Everything is on 127.0.0.1 and bounded. BUILD=debug uses debug binaries (label the numbers so).
# Output: $OUT/*.json and $OUT/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-release}
SECS=${SECS:-5}
LATENCIES=${LATENCIES:-5 20 50}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/bench-proxy}
mkdir -p "$OUT"
. scripts/lib/bench-common.sh
bench_build

bench_workdir

start() { # name, then sidecar arguments; sets URL_<name>, ADMIN_<name>, AKID_<name>, SECRET_<name>
  bench_start_named "$@"
  bench_creds "$OUT/$1.log"
  printf -v "AKID_$1" '%s' "$AKID"
  printf -v "SECRET_$1" '%s' "$SECRET"
}

# The upstream: no decrypt cache of its own, fault injection on.
start upstream --faults-enabled --cache-max-entries 0
KEY=$(bench_kms "$URL_upstream" "$AKID_upstream" "$SECRET_upstream" CreateKey '{}' | jq -r .KeyMetadata.Arn)
# The proxy: its clients may use every upstream key; it reaches the upstream with the upstream's
# credential through the standard chain (environment).
cat >"$WORK/policy.json" <<'EOF'
{"rules":[{"principals":["*"],"actions":["*"],"keys":["*"]}]}
EOF
AWS_ACCESS_KEY_ID=$AKID_upstream AWS_SECRET_ACCESS_KEY=$SECRET_upstream AWS_EC2_METADATA_DISABLED=true \
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
  start proxy --mode proxy --upstream-endpoint "$URL_upstream" --upstream-region us-east-1 \
  --proxy-policy-file "$WORK/policy.json" --backend-timeout-ms 5000
echo "==> $BUILD upstream=$URL_upstream proxy=$URL_proxy key=$KEY"

COMMON=(--no-progress --connections 8 --warmup-secs 1 --duration-secs "$SECS" --mix decrypt=100
  --key-id "$KEY" --payload-bytes 32 --ciphertexts-per-key 16 --context '' --rate 0)
for ms in $LATENCIES; do
  curl -sS --fail-with-body -X PUT "$ADMIN_upstream/v1/faults" -d "{\"latency_ms\": $ms, \"operations\": [\"decrypt\"]}" >/dev/null
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  "$LT" run "${COMMON[@]}" --target "$URL_upstream" --admin-url "$ADMIN_upstream" \
    --access-key-id "$AKID_upstream" --secret-access-key "$SECRET_upstream" --json "$OUT/direct-$ms.json" >/dev/null
  "$LT" run "${COMMON[@]}" --target "$URL_proxy" --admin-url "$ADMIN_proxy" \
    --access-key-id "$AKID_proxy" --secret-access-key "$SECRET_proxy" --json "$OUT/proxy-$ms.json" >/dev/null
  echo "$load_before $(cut -d' ' -f1 /proc/loadavg)" >"$OUT/load-$ms.txt"
  echo "==> ${ms} ms: direct $(jq '.runs[0].ok_rate|floor' "$OUT/direct-$ms.json") req/s, proxy $(jq '.runs[0].ok_rate|floor' "$OUT/proxy-$ms.json") req/s"
done
curl -sS -X DELETE "$ADMIN_upstream/v1/faults" >/dev/null
hits=$(curl -sS "$ADMIN_proxy/metrics" | awk '/^kms_sidecar_cache_requests_total\{cache="proxy_decrypt",result="hit"\}/ {print $2}')
misses=$(curl -sS "$ADMIN_proxy/metrics" | awk '/^kms_sidecar_cache_requests_total\{cache="proxy_decrypt",result="miss"\}/ {print $2}')

{
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); build: $BUILD; machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); proxy decrypt cache over the whole run: ${hits:-0} hits, ${misses:-0} misses"
  echo
  echo "| injected upstream latency | load avg (1 min) before / after | straight at the upstream (ok req/s) | p50 / p99 (ms) | through the proxy, cached (ok req/s) | p50 / p99 (ms) | throughput ratio | errors (direct / proxy) |"
  echo "| ---: | --- | ---: | --- | ---: | --- | ---: | --- |"
  for ms in $LATENCIES; do
    d=$OUT/direct-$ms.json p=$OUT/proxy-$ms.json
    read -r lb la <"$OUT/load-$ms.txt"
    echo "| $ms ms | $lb / $la | $(jq '.runs[0].ok_rate|floor' "$d") | $(jq '.runs[0].latency_ms.p50' "$d") / $(jq '.runs[0].latency_ms.p99' "$d") | $(jq '.runs[0].ok_rate|floor' "$p") | $(jq '.runs[0].latency_ms.p50' "$p") / $(jq '.runs[0].latency_ms.p99' "$p") | $(jq -n --slurpfile d "$d" --slurpfile p "$p" '($p[0].runs[0].ok_rate / $d[0].runs[0].ok_rate * 10 | round) / 10') | $(jq '.runs[0].errors' "$d") / $(jq '.runs[0].errors' "$p") |"
  done
} | tee "$OUT/summary.md"
