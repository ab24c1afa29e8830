# shellcheck shell=bash
# Sourced by the scripts/bench*.sh benchmarks (from the repository root, after `set -euo pipefail`):
# the steps they all take, written once so that every benchmark builds, starts, waits for and
# cleans up its sidecars the same way. Each script keeps its own environment variables, loads and
# output; nothing here prints unless a sidecar fails to start.
#
#   bench_build            build kms-sidecar and kms-loadtest ($BUILD: release or debug, in
#                          $TARGET_DIR); sets SIDECAR and LT
#   bench_workdir          WORK, a temp directory removed on exit after every process in `pids`
#                          (what bench_start started, and what a script adds) is killed
#   bench_start NAME DATA LOG ARGS...
#                          $SIDECAR on free loopback ports, data directory DATA, output to LOG;
#                          waits (bounded) until it listens; sets PID, KMS, ADMIN and XKS (empty
#                          without the XKS listener); exits with LOG printed if it never listens
#   bench_start_named NAME ARGS...
#                          bench_start with data directory $WORK/NAME and log $OUT/NAME.log; also
#                          sets URL_NAME and ADMIN_NAME
#   bench_stop             stops the sidecar bench_start started last (SIGTERM, then waits)
#   bench_creds LOG        waits (bounded) for the client credential a first start or
#                          `clients add` printed into LOG; sets AKID and SECRET (empty if none)
#   bench_kms URL AKID SECRET OPERATION BODY
#                          one SigV4-signed AWS JSON call (curl >= 7.75); prints the response

bench_build() {
  if [ "$BUILD" = release ]; then
    cargo build --release -q -p kms-sidecar -p kms-loadtest
  else
    cargo build -q -p kms-sidecar -p kms-loadtest
  fi
  SIDECAR=$TARGET_DIR/$BUILD/kms-sidecar
  LT=$TARGET_DIR/$BUILD/kms-loadtest
}

bench_workdir() {
  WORK=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

bench_start() {
  local name=$1 data=$2 log=$3
  shift 3
  "$SIDECAR" --data-dir "$data" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-level warn "$@" >"$log" 2>&1 &
  PID=$!
  pids+=("$PID")
  for _ in $(seq 300); do
    grep -q '^kms-sidecar: listening:' "$log" && break
    kill -0 "$PID" 2>/dev/null || break # exited: its log says why
    sleep 0.1
  done
  KMS=$(sed -n 's/^kms-sidecar: listening: kms=\([^ ]*\).*/\1/p' "$log")
  ADMIN=$(sed -n 's/^kms-sidecar: listening: .* admin=\([^ ]*\).*/\1/p' "$log")
  XKS=$(sed -n 's/^kms-sidecar: listening: .* xks=\([^ ]*\).*/\1/p' "$log")
  [ -n "$KMS" ] || { echo "$name did not start:"; cat "$log"; exit 1; }
}

bench_start_named() {
  local name=$1
  shift
  bench_start "$name" "$WORK/$name" "$OUT/$name.log" "$@"
  printf -v "URL_$name" '%s' "$KMS"
  printf -v "ADMIN_$name" '%s' "$ADMIN"
}

bench_stop() {
  local p kept=()
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  for p in "${pids[@]}"; do [ "$p" = "$PID" ] || kept+=("$p"); done
  pids=("${kept[@]}")
  PID=
}

bench_creds() {
  for _ in $(seq 50); do grep -q '^  AWS_SECRET_ACCESS_KEY=' "$1" && break; sleep 0.1; done
  AKID=$(sed -n 's/^  AWS_ACCESS_KEY_ID=\([^ ]*\)$/\1/p' "$1")
  SECRET=$(sed -n 's/^  AWS_SECRET_ACCESS_KEY=\([^ ]*\)$/\1/p' "$1")
}

bench_kms() {
  curl -sS --fail-with-body --aws-sigv4 "aws:amz:us-east-1:kms" --user "$2:$3" \
    -H "X-Amz-Target: TrentService.$4" -H 'Content-Type: application/x-amz-json-1.1' -d "$5" "$1/"
}
