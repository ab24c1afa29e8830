#!/usr/bin/env bash
# Screenshots of every dashboard view after a replayed incident (issue 16), for docs/img/ and the
# README. The dashboard is started only *after* the incident, so the pictures show what it learns
# from the sidecars' /v1/history and from Prometheus, as an SRE opening it on call would see it.
#
# Timeline (about 9 minutes): two sidecars (A and B) on free ports with throwaway data directories,
# a Prometheus scraping both every 2 s, light background traffic through the AWS CLI on both (a
# garbage ciphertext, a bad credential, a principal the key policy denies, a key that must rotate
# but does not); after BEFORE_SECS, principal "batch" sends RATE calls/s to A for INCIDENT_SECS
# (kms-loadtest) against its LIMIT calls/s, with half the backend calls failing (fault injection)
# for FAULT_SECS in the middle; then AFTER_SECS of calm (the 5 min window then holds both calm
# and incident, and the data covers the whole window). Then one screenshot per view of A
# (5 min window), a fleet view of A and B, the unreachable-source banner, and the fleet read
# through Prometheus. Needs: xvfb-run, aws, python3, prometheus (optional: no prometheus.png).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/img}
RATE=${RATE:-450}
LIMIT=${LIMIT:-400}
BEFORE_SECS=${BEFORE_SECS:-200}
INCIDENT_SECS=${INCIDENT_SECS:-120}
FAULT_SECS=${FAULT_SECS:-20}
AFTER_SECS=${AFTER_SECS:-20}
mkdir -p "$OUT"

# NO_BUILD=1 reuses the binaries already in $BIN (default target/release).
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
if [[ -z "${NO_BUILD:-}" ]]; then
  cargo build --release -p kms-sidecar -p kms-dashboard -p kms-loadtest
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_sidecar NAME: a sidecar with fault injection; "batch" may make $LIMIT calls/s; keys
# without rotation count as overdue (--rotation-required).
start_sidecar() {
  local name=$1 kms admin
  kms=$(free_port)
  admin=$(free_port)
  printf '[rate_limit_principals]\nbatch = %s\n' "$LIMIT" >"$work/$name.toml"
  "$BIN/kms-sidecar" --data-dir "$work/$name" --listen "127.0.0.1:$kms" \
    --admin-listen "127.0.0.1:$admin" --config "$work/$name.toml" --rotation-required true \
    --faults-enabled --breaker-cool-down-secs 5 \
    >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  for _ in $(seq 100); do grep -q '^kms-sidecar: listening' "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^kms-sidecar: listening' "$work/$name.out" || { cat "$work/$name.err"; exit 1; }
  eval "${name}_KMS=http://127.0.0.1:$kms ${name}_ADMIN=http://127.0.0.1:$admin"
}
start_sidecar A
start_sidecar B

if command -v prometheus >/dev/null 2>&1; then
  PROM_PORT=$(free_port)
  cat >"$work/prometheus.yml" <<YAML
global: { scrape_interval: 2s }
scrape_configs:
  - job_name: kms-sidecar
    static_configs: [{ targets: ["${A_ADMIN#http://}", "${B_ADMIN#http://}"] }]
YAML
  prometheus --config.file "$work/prometheus.yml" --storage.tsdb.path "$work/prom" \
    --web.listen-address "127.0.0.1:$PROM_PORT" >"$work/prom.log" 2>&1 &
  pids+=($!)
fi

export AWS_DEFAULT_REGION=us-east-1 AWS_PAGER="" AWS_MAX_ATTEMPTS=1
key_of() { sed -n "s/^  $2=//p" "$work/$1.out" | head -1; }
# as NAME-FILE aws ...: the AWS CLI with the credentials printed in $work/NAME-FILE.out
as() {
  local f=$1
  shift
  AWS_ACCESS_KEY_ID=$(key_of "$f" AWS_ACCESS_KEY_ID) AWS_SECRET_ACCESS_KEY=$(key_of "$f" AWS_SECRET_ACCESS_KEY) "$@"
}
setup() { # setup NAME: keys, aliases and two more principals (mallory, batch)
  local name=$1 url_var="${1}_KMS" key legacy
  local E=(--endpoint-url "${!url_var}")
  key=$(as "$name" aws kms create-key "${E[@]}" --query KeyMetadata.KeyId --output text)
  as "$name" aws kms create-alias "${E[@]}" --alias-name alias/orders --target-key-id "$key"
  as "$name" aws kms enable-key-rotation "${E[@]}" --key-id alias/orders
  legacy=$(as "$name" aws kms create-key "${E[@]}" --description legacy --query KeyMetadata.KeyId --output text)
  as "$name" aws kms create-alias "${E[@]}" --alias-name alias/legacy --target-key-id "$legacy"
  "$BIN/kms-sidecar" --data-dir "$work/$name" clients add mallory >"$work/$name-mallory.out"
  "$BIN/kms-sidecar" --data-dir "$work/$name" clients add batch >"$work/$name-batch.out"
  # the batch job's key: its policy lets every principal of the sidecar use it
  as "$name" aws kms create-key "${E[@]}" --description batch --query KeyMetadata.KeyId --output text \
    --policy '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}' \
    >"$work/$name-batch.key"
}
setup A
setup B
sleep 1.5 # the running sidecars load new clients within a second

# Background traffic for the whole run: ok calls and the client errors the views show.
traffic() {
  local name=$1 url_var="${1}_KMS" i=0
  local E=(--endpoint-url "${!url_var}")
  while :; do
    # calls fail while faults are injected: keep going
    blob=$(as "$name" aws kms encrypt "${E[@]}" --key-id alias/orders --plaintext fileb://<(printf 'hello %s' "$i") \
      --query CiphertextBlob --output text 2>/dev/null) || { i=$((i + 1)); continue; }
    as "$name" aws kms decrypt "${E[@]}" --ciphertext-blob fileb://<(printf '%s' "$blob" | base64 -d) >/dev/null 2>&1 || true
    if (( i % 3 == 0 )); then
      as "$name" aws kms decrypt "${E[@]}" --ciphertext-blob fileb://<(head -c 64 /dev/urandom) >/dev/null 2>&1 || true
      AWS_ACCESS_KEY_ID=AKSCNOTAREALKEY000 AWS_SECRET_ACCESS_KEY=x aws kms list-keys "${E[@]}" >/dev/null 2>&1 || true
      as "$name-mallory" aws kms encrypt "${E[@]}" --key-id alias/orders --plaintext fileb://<(printf x) >/dev/null 2>&1 || true
    fi
    i=$((i + 1))
  done
}
traffic A &
pids+=($!)
traffic B &
pids+=($!)

echo "screenshot.sh: calm for ${BEFORE_SECS}s" >&2
sleep "$BEFORE_SECS"
echo "screenshot.sh: incident: batch at ${RATE}/s against ${LIMIT}/s for ${INCIDENT_SECS}s" >&2
as A-batch "$BIN/kms-loadtest" run --target "$A_KMS" --admin-url "$A_ADMIN" \
  --access-key-id "$(key_of A-batch AWS_ACCESS_KEY_ID)" --secret-access-key "$(key_of A-batch AWS_SECRET_ACCESS_KEY)" \
  --rate "$RATE" --duration-secs "$INCIDENT_SECS" --warmup-secs 0 --mix encrypt=50,decrypt=50 --key-id "$(cat "$work/A-batch.key")" \
  --connections 16 --no-progress --setup-max-attempts 3 >"$work/loadtest.out" 2>&1 &
load=$!
sleep $(( (INCIDENT_SECS - FAULT_SECS) / 2 ))
echo "screenshot.sh: half the backend calls fail for ${FAULT_SECS}s" >&2
curl -sf -X PUT "$A_ADMIN/v1/faults" -d '{"error_rate": 0.5}' >/dev/null
sleep "$FAULT_SECS"
curl -sf -X DELETE "$A_ADMIN/v1/faults" >/dev/null
wait "$load" || { echo "kms-loadtest failed:" >&2; tail -20 "$work/loadtest.out" >&2; }
echo "screenshot.sh: calm for ${AFTER_SECS}s" >&2
sleep "$AFTER_SECS"

shot() { # shot FILE ARGS...: one dashboard window, saved once it has 3 good scrapes
  local file=$1
  shift
  xvfb-run -a -s "-screen 0 1400x1100x24" \
    "$BIN/kms-dashboard" "$@" --refresh-secs 1 --window-minutes 5 \
    --size 1280x1040 --screenshot "$OUT/$file" --screenshot-scrapes 3
}
# the views that show the incident's time series first: it leaves the 5 min window after 3 min
for view in overview throttling; do
  shot "$view.png" --sidecar "$A_ADMIN" --view "$view"
done
shot fleet.png --sidecar "$A_ADMIN" --sidecar "$B_ADMIN"
if [[ -n "${PROM_PORT:-}" ]]; then
  shot prometheus.png --prometheus "http://127.0.0.1:$PROM_PORT"
fi
for view in cache-backend latency unauthorized rotation; do
  shot "$view.png" --sidecar "$A_ADMIN" --view "$view"
done
# The unreachable-source banner: a port nobody listens on.
shot unreachable.png --sidecar "$A_ADMIN" --sidecar "http://127.0.0.1:$(free_port)"
grep -E '^(sent|ok|throttled|errors)|ThrottlingException|Throttl' "$work/loadtest.out" | head -5 >&2 || true
curl -s "$A_ADMIN/metrics" | grep -E '^kms_sidecar_(throttled_total|circuit_transitions_total)' >&2 || true
ls -l "$OUT"
