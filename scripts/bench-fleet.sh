#!/usr/bin/env bash
# The etcd registry's cost, for BENCHMARKS.md ("Fleet registry"):
# 1. cached Decrypt throughput of a sidecar with the etcd registry against one with the data-directory
#    registry (same binary, same kms-loadtest load: 16 ciphertexts, closed loop, 8 connections,
#    1 s warm-up + SECS s), alternating ROUNDS times so both see the same machine;
# 2. propagation delay over 100 changes (CreateKey on sidecar A, until the key encrypts on sidecar B),
#    with a real 3-member etcd: the ignored test tests/tests/fleet_bench.rs run against this binary.
# Everything is on 127.0.0.1 and bounded. Needs etcd (scripts/test.sh installs etcd-server).
# BUILD=debug uses debug binaries (label the numbers so). Output: $OUT/*.json and $OUT/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-release}
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/bench-fleet}
mkdir -p "$OUT"
. scripts/lib/bench-common.sh
bench_build
# Absolute: the propagation test runs from the tests crate's directory.
SIDECAR=$(realpath "$SIDECAR")
export KMS_SIDECAR_ROOT_KEY=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef

bench_workdir

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
CP=$(port) PP=$(port)
ETCD=http://127.0.0.1:$CP
etcd --name bench --data-dir "$WORK/etcd" --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
  --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
  --initial-cluster "bench=http://127.0.0.1:$PP" >"$OUT/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "$ETCD/health" >/dev/null && break; sleep 0.1; done
REGISTRY=(--registry etcd --etcd-endpoints "$ETCD" --etcd-prefix /bench/)

create_key() { # url akid secret -> key id
  bench_kms "$1" "$2" "$3" CreateKey '{}' | jq -r .KeyMetadata.KeyId
}

# The data-directory sidecar issues its credential on first start; the fleet's comes from etcd.
bench_start_named datadir
bench_creds "$OUT/datadir.log"
AKID_datadir=$AKID SECRET_datadir=$SECRET
"$SIDECAR" --data-dir "$WORK/cli" "${REGISTRY[@]}" clients add default >"$OUT/clients-add.log" 2>&1
bench_creds "$OUT/clients-add.log"
AKID_etcd=$AKID SECRET_etcd=$SECRET
bench_start_named etcd "${REGISTRY[@]}"
KEY_datadir=$(create_key "$URL_datadir" "$AKID_datadir" "$SECRET_datadir")
KEY_etcd=$(create_key "$URL_etcd" "$AKID_etcd" "$SECRET_etcd")
echo "==> $BUILD datadir=$URL_datadir etcd=$URL_etcd (etcd at $ETCD)"

COMMON=(--no-progress --connections 8 --warmup-secs 1 --duration-secs "$SECS" --mix decrypt=100
  --payload-bytes 32 --ciphertexts-per-key 16 --context '' --rate 0)
for round in $(seq "$ROUNDS"); do
  for reg in datadir etcd; do
    url=URL_$reg admin=ADMIN_$reg akid=AKID_$reg secret=SECRET_$reg key=KEY_$reg
    echo "$(cut -d' ' -f1 /proc/loadavg)" >"$OUT/load-$reg-$round.txt"
    "$LT" run "${COMMON[@]}" --target "${!url}" --admin-url "${!admin}" --key-id "${!key}" \
      --access-key-id "${!akid}" --secret-access-key "${!secret}" --json "$OUT/$reg-$round.json" >/dev/null
    echo "==> round $round $reg: $(jq '.runs[0].ok_rate|floor' "$OUT/$reg-$round.json") req/s"
  done
done

echo "==> propagation (tests/tests/fleet_bench.rs against $SIDECAR)"
KMS_SIDECAR_E2E_BINARY=$SIDECAR cargo test -q -p kms-sidecar-e2e --test fleet_bench -- --ignored --nocapture 2>&1 |
  tee "$OUT/propagation.log" | grep '^BENCH' || { cat "$OUT/propagation.log"; exit 1; }

{
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); build: $BUILD; machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); etcd $(etcd --version | head -1 | awk '{print $3}') (one member for the throughput runs)"
  echo
  echo "| round | load avg (1 min) at start, datadir / etcd | data-directory registry (ok req/s) | p50 / p99 (ms) | etcd registry (ok req/s) | p50 / p99 (ms) | etcd / datadir | errors (datadir / etcd) |"
  echo "| ---: | --- | ---: | --- | ---: | --- | ---: | --- |"
  for round in $(seq "$ROUNDS"); do
    d=$OUT/datadir-$round.json e=$OUT/etcd-$round.json
    echo "| $round | $(cat "$OUT/load-datadir-$round.txt") / $(cat "$OUT/load-etcd-$round.txt") | $(jq '.runs[0].ok_rate|floor' "$d") | $(jq '.runs[0].latency_ms.p50' "$d") / $(jq '.runs[0].latency_ms.p99' "$d") | $(jq '.runs[0].ok_rate|floor' "$e") | $(jq '.runs[0].latency_ms.p50' "$e") / $(jq '.runs[0].latency_ms.p99' "$e") | $(jq -n --slurpfile d "$d" --slurpfile e "$e" '($e[0].runs[0].ok_rate / $d[0].runs[0].ok_rate * 100 | round) / 100') | $(jq '.runs[0].errors' "$d") / $(jq '.runs[0].errors' "$e") |"
  done
  echo
  grep '^BENCH' "$OUT/propagation.log"
} | tee "$OUT/summary.md"
