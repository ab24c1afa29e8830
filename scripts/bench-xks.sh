#!/usr/bin/env bash
# The XKS proxy API against AWS KMS's 250 ms budget, for BENCHMARKS.md ("XKS proxy"): open-loop
# Encrypt of a 32-byte data key with 64 bytes of AAD and Decrypt of 16 setup ciphertexts (50/50),
# signed with aws-sigv4 for kms-xks-proxy, at RATE req/s for SECS s, on the embedded backend and on
# SoftHSMv2 through PKCS#11, each with the decrypt cache on (the default) and off. All traffic is on
# 127.0.0.1 (plain HTTP: the TLS handshake AWS KMS adds is not measured). Needs curl >= 7.75, jq and
# softhsm2-util (the PKCS#11 rows are skipped without it). BUILD=debug uses the debug binaries.
# Output: $OUT/*.json and $OUT/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-release}
SECS=${SECS:-10}
RATE=${RATE:-500}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/bench-xks}
mkdir -p "$OUT"
. scripts/lib/bench-common.sh
bench_build

bench_workdir
LOG="$OUT/sidecar.log"

XKS_ID=$(head -c 15 /dev/urandom | base32)
XKS_SECRET=$(head -c 32 /dev/urandom | base64)
cat >"$WORK/xks.toml" <<EOF
[[prefixes]]
uri_path = "/kms/xks/v1"
principal = "aws-kms-xks"
credentials = [{ access_key_id = "$XKS_ID", secret_access_key = "$XKS_SECRET" }]

[keys.bench]
key_id = "alias/bench-xks"
EOF

start() { # data-dir, extra sidecar arguments
  local data=$1; shift
  bench_start sidecar "$data" "$LOG" --xks-listen 127.0.0.1:0 --xks-config "$WORK/xks.toml" "$@"
  [ -n "$XKS" ] || { echo "sidecar did not start:"; cat "$LOG"; exit 1; }
  bench_creds "$LOG"
  export AWS_ACCESS_KEY_ID=$AKID AWS_SECRET_ACCESS_KEY=$SECRET
}
kms() { # target body
  bench_kms "$KMS" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$@"
}
make_key() {
  local policy key
  policy=$(jq -c -n '{Version: "2012-10-17", Statement: [
    {Effect: "Allow", Principal: {AWS: "arn:aws:iam::111122223333:user/default"}, Action: "kms:*", Resource: "*"},
    {Effect: "Allow", Principal: {AWS: "arn:aws:iam::111122223333:user/aws-kms-xks"},
     Action: ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], Resource: "*"}]}')
  key=$(kms CreateKey "$(jq -c -n --arg p "$policy" '{Policy: $p}')" | jq -r .KeyMetadata.KeyId)
  kms CreateAlias "$(jq -c -n --arg k "$key" '{AliasName: "alias/bench-xks", TargetKeyId: $k}')" >/dev/null
}
run() { # label
  "$LT" run --no-progress --connections 16 --warmup-secs 2 --duration-secs "$SECS" --rate "$RATE" \
    --target "$XKS" --xks-key-id bench --access-key-id "$XKS_ID" --secret-access-key "$XKS_SECRET" \
    --mix encrypt=50,decrypt=50 --json "$OUT/$1.json" >/dev/null
  echo "==> $1: p99 $(jq '.runs[0].latency_ms.p99' "$OUT/$1.json") ms at $RATE/s"
}

rows=()
for backend in embedded pkcs11; do
  args=()
  if [ $backend = pkcs11 ]; then
    if ! command -v softhsm2-util >/dev/null || [ ! -e /usr/lib/softhsm/libsofthsm2.so ]; then
      echo "SKIPPED pkcs11: SoftHSMv2 is not installed"; continue
    fi
    mkdir -p "$WORK/tokens"
    printf 'directories.tokendir = %s\nobjectstore.backend = file\n' "$WORK/tokens" >"$WORK/softhsm2.conf"
    export SOFTHSM2_CONF=$WORK/softhsm2.conf KMS_SIDECAR_PKCS11_PIN=1234
    softhsm2-util --init-token --free --label bench-xks --pin 1234 --so-pin 5678 >/dev/null
    args=(--backend pkcs11 --pkcs11-token-label bench-xks --pkcs11-module /usr/lib/softhsm/libsofthsm2.so)
  fi
  for cache in on off; do
    extra=()
    [ $cache = off ] && extra=(--cache-max-entries 0)
    data=$WORK/data-$backend-$cache
    start "$data" "${args[@]}" "${extra[@]}"
    make_key
    run "$backend-cache-$cache"
    bench_stop
    rows+=("$backend-cache-$cache")
  done
done

{
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); build: $BUILD; machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| backend, decrypt cache | rate (req/s) | ok | errors | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | service p99 (ms) | late starts | Encrypt p99 (ms) | Decrypt p99 (ms) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for r in "${rows[@]}"; do
    f=$OUT/$r.json
    echo "| $r | $(jq '.runs[0].planned_rate' "$f") | $(jq '.runs[0].ok' "$f") | $(jq '.runs[0].errors' "$f") | $(jq '.runs[0].latency_ms.p50' "$f") | $(jq '.runs[0].latency_ms.p99' "$f") | $(jq '.runs[0].latency_ms.p999' "$f") | $(jq '.runs[0].latency_ms.max' "$f") | $(jq '.runs[0].service_time_ms.p99' "$f") | $(jq '.runs[0].late_starts' "$f") | $(jq '.runs[0].by_op.Encrypt.latency_ms.p99 // "-"' "$f") | $(jq '.runs[0].by_op.Decrypt.latency_ms.p99 // "-"' "$f") |"
  done
} | tee "$OUT/summary.md"
