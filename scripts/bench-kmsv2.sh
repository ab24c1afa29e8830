#!/usr/bin/env bash
# KMS v2 vs AWS JSON on the same sidecar, for BENCHMARKS.md ("KMS v2 vs AWS JSON"): Encrypt of a
# 32-byte plaintext and Decrypt of 16 setup ciphertexts, on the same key, each front-end in turn:
# closed-loop throughput (8 connections) and then p99 open-loop at half that rate. All traffic is
# on 127.0.0.1 and a Unix socket; every run is bounded (1 s warm-up + SECS s). Needs curl >= 7.75
# (--aws-sigv4) to create the key. BUILD=debug uses the debug binaries (label the numbers so).
# Output: $OUT/*.json and $OUT/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-release}
SECS=${SECS:-5}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/bench-kmsv2}
mkdir -p "$OUT"
. scripts/lib/bench-common.sh
bench_build

bench_workdir
DATA=$WORK
SOCK=$DATA/kms.sock
LOG="$OUT/sidecar.log"

start() { # extra sidecar arguments
  bench_start sidecar "$DATA" "$LOG" "$@"
}
kms() { # target body
  bench_kms "$KMS" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$@"
}

start
# The first start prints the credential it issued; it may come after the listening line.
bench_creds "$LOG"
export AWS_ACCESS_KEY_ID=$AKID AWS_SECRET_ACCESS_KEY=$SECRET
[ -n "$AWS_ACCESS_KEY_ID" ] || { echo "no credentials printed:"; cat "$LOG"; exit 1; }
# The key the plugin uses: the creator may do everything, `kubernetes` (the plugin's principal)
# Encrypt, Decrypt and DescribeKey; both front-ends then load the same key.
POLICY=$(jq -c -n '{Version: "2012-10-17", Statement: [
  {Sid: "creator", Effect: "Allow", Principal: {AWS: "arn:aws:iam::111122223333:user/default"}, Action: "kms:*", Resource: "*"},
  {Sid: "kube-apiserver", Effect: "Allow", Principal: {AWS: "arn:aws:iam::111122223333:user/kubernetes"},
   Action: ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], Resource: "*"}]}')
KEY=$(kms CreateKey "$(jq -c -n --arg p "$POLICY" '{Policy: $p}')" | jq -r .KeyMetadata.KeyId)
kms CreateAlias "$(jq -c -n --arg k "$KEY" '{AliasName: "alias/bench-kmsv2", TargetKeyId: $k}')" >/dev/null
bench_stop
start --kmsv2-socket "$SOCK" --kmsv2-key-id alias/bench-kmsv2
echo "==> $BUILD sidecar kms=$KMS kmsv2=$SOCK key=$KEY"

COMMON=(--no-progress --connections 8 --warmup-secs 1 --duration-secs "$SECS")
target_args() { # frontend op -> ARGS
  if [ "$1" = kmsv2 ]; then
    ARGS=(--kmsv2-socket "$SOCK" --mix "$2")
  else
    ARGS=(--target "$KMS" --key-id "$KEY" --payload-bytes 32 --ciphertexts-per-key 16 --context '' --mix "$2")
  fi
}
for op in encrypt decrypt; do
  for fe in awsjson kmsv2; do
    target_args $fe $op
    "$LT" run "${COMMON[@]}" "${ARGS[@]}" --rate 0 --json "$OUT/$fe-$op-closed.json" >/dev/null
    rate=$(jq '.runs[0].ok_rate / 2 | floor' "$OUT/$fe-$op-closed.json")
    "$LT" run "${COMMON[@]}" "${ARGS[@]}" --rate "$rate" --json "$OUT/$fe-$op-open.json" >/dev/null
    echo "==> $fe $op: closed $(jq '.runs[0].ok_rate|floor' "$OUT/$fe-$op-closed.json") req/s, p99 at $rate/s: $(jq '.runs[0].latency_ms.p99' "$OUT/$fe-$op-open.json") ms"
  done
done

{
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); build: $BUILD; machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| front-end | op | closed loop, 8 conns (ok req/s) | open-loop rate (req/s) | p50 (ms) | p99 (ms) | p99.9 (ms) | service p99 (ms) | errors (closed / open) | late starts |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for op in encrypt decrypt; do
    for fe in awsjson kmsv2; do
      c=$OUT/$fe-$op-closed.json o=$OUT/$fe-$op-open.json
      echo "| $fe | $op | $(jq '.runs[0].ok_rate|floor' "$c") | $(jq '.runs[0].planned_rate' "$o") | $(jq '.runs[0].latency_ms.p50' "$o") | $(jq '.runs[0].latency_ms.p99' "$o") | $(jq '.runs[0].latency_ms.p999' "$o") | $(jq '.runs[0].service_time_ms.p99' "$o") | $(jq '.runs[0].errors' "$c") / $(jq '.runs[0].errors' "$o") | $(jq '.runs[0].late_starts' "$o") |"
    done
  done
} | tee "$OUT/summary.md"
