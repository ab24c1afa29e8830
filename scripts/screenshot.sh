#!/usr/bin/env bash
# Screenshots of every dashboard view against a real sidecar, for docs/img/ and the README.
# Starts a sidecar (release build) on free ports with a throwaway data directory, drives traffic
# with the AWS CLI (encrypt/decrypt, a garbage ciphertext, a bad credential, a principal a key policy
# denies, a principal over its rate limit, a key that must rotate but does not), then runs the
# dashboard under xvfb-run once per view with --screenshot. Needs: xvfb-run, aws, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/img}
mkdir -p "$OUT"

# NO_BUILD=1 reuses the binaries already in target/release.
if [[ -z "${NO_BUILD:-}" ]]; then
  cargo build --release -p kms-sidecar -p kms-dashboard
fi
BIN=target/release

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KMS_PORT=$(free_port)
ADMIN_PORT=$(free_port)
# "batch" may make 2 calls/s; keys without rotation count as overdue (--rotation-required).
printf '[rate_limit_principals]\nbatch = 2.0\n' >"$work/sidecar.toml"
"$BIN/kms-sidecar" --data-dir "$work/data" --listen "127.0.0.1:$KMS_PORT" \
  --admin-listen "127.0.0.1:$ADMIN_PORT" --config "$work/sidecar.toml" --rotation-required true \
  >"$work/sidecar.out" 2>"$work/sidecar.err" &
pids+=($!)
for _ in $(seq 100); do grep -q '^kms-sidecar: listening' "$work/sidecar.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^kms-sidecar: listening' "$work/sidecar.out" || { cat "$work/sidecar.err"; exit 1; }

export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=us-east-1 AWS_PAGER="" AWS_MAX_ATTEMPTS=1
AWS_ACCESS_KEY_ID=$(sed -n 's/^  AWS_ACCESS_KEY_ID=//p' "$work/sidecar.out" | head -1)
AWS_SECRET_ACCESS_KEY=$(sed -n 's/^  AWS_SECRET_ACCESS_KEY=//p' "$work/sidecar.out" | head -1)
E=(--endpoint-url "http://127.0.0.1:$KMS_PORT")
KEY=$(aws kms create-key "${E[@]}" --query KeyMetadata.KeyId --output text)
aws kms create-alias "${E[@]}" --alias-name alias/orders --target-key-id "$KEY"
aws kms enable-key-rotation "${E[@]}" --key-id alias/orders
# a key left without rotation: non-compliant under --rotation-required
LEGACY=$(aws kms create-key "${E[@]}" --description legacy --query KeyMetadata.KeyId --output text)
aws kms create-alias "${E[@]}" --alias-name alias/legacy --target-key-id "$LEGACY"
# two more principals: mallory (not in the key policy) and batch (over its 2 calls/s)
"$BIN/kms-sidecar" --data-dir "$work/data" clients add mallory >"$work/mallory.out"
"$BIN/kms-sidecar" --data-dir "$work/data" clients add batch >"$work/batch.out"
as() { # as PRINCIPAL aws ...
  local f="$work/$1.out"
  shift
  AWS_ACCESS_KEY_ID=$(sed -n 's/^  AWS_ACCESS_KEY_ID=//p' "$f" | head -1) \
    AWS_SECRET_ACCESS_KEY=$(sed -n 's/^  AWS_SECRET_ACCESS_KEY=//p' "$f" | head -1) "$@"
}
sleep 1.5 # the running sidecar loads new clients within a second

# Background traffic for the whole run, so every scrape sees new calls.
traffic() {
  local i=0
  while :; do
    blob=$(aws kms encrypt "${E[@]}" --key-id alias/orders --plaintext fileb://<(printf 'hello %s' "$i") \
      --query CiphertextBlob --output text)
    aws kms decrypt "${E[@]}" --ciphertext-blob fileb://<(printf '%s' "$blob" | base64 -d) >/dev/null
    aws kms generate-data-key "${E[@]}" --key-id alias/orders --key-spec AES_256 >/dev/null
    if (( i % 3 == 0 )); then
      # garbage ciphertext: InvalidCiphertextException (a client error)
      aws kms decrypt "${E[@]}" --ciphertext-blob fileb://<(head -c 64 /dev/urandom) >/dev/null 2>&1 || true
      # unknown access key: rejected as unauthenticated
      AWS_ACCESS_KEY_ID=AKSCNOTAREALKEY000 aws kms list-keys "${E[@]}" >/dev/null 2>&1 || true
      # a principal the key policy does not name: AccessDeniedException (policy_denied)
      as mallory aws kms encrypt "${E[@]}" --key-id alias/orders --plaintext fileb://<(printf x) >/dev/null 2>&1 || true
      # a burst over batch's 2 calls/s: ThrottlingException
      for _ in 1 2 3 4 5; do
        as batch aws kms generate-random "${E[@]}" --number-of-bytes 16 >/dev/null 2>&1 &
      done
      wait
    fi
    i=$((i + 1))
  done
}
traffic &
pids+=($!)
sleep 5

ADMIN="http://127.0.0.1:$ADMIN_PORT"
for view in overview latency throttling unauthorized rotation cache-backend; do
  xvfb-run -a -s "-screen 0 1400x1000x24" \
    "$BIN/kms-dashboard" --sidecar "$ADMIN" --view "$view" --refresh-secs 1 --window-minutes 5 \
    --size 1280x960 --screenshot "$OUT/$view.png" --screenshot-scrapes 15
done

# The unreachable-source banner: a port nobody listens on.
DEAD=$(free_port)
xvfb-run -a -s "-screen 0 1400x1000x24" \
  "$BIN/kms-dashboard" --sidecar "$ADMIN" --sidecar "http://127.0.0.1:$DEAD" --refresh-secs 1 \
  --window-minutes 5 --size 1280x960 --screenshot "$OUT/unreachable.png" --screenshot-scrapes 3
ls -l "$OUT"
