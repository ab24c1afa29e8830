#!/usr/bin/env bash
# The hot-path regression guard (issue 18, BENCHMARKS.md "The hot path"): every figure of the
# issue's target table from one run, each throughput and latency figure a ratio of the sidecar to the
# bare hyper responder measured in the same run (responder first, then the sidecar):
#   - heap allocations per cached Decrypt and per Encrypt (deterministic: a counting allocator);
#   - kms-loadtest baseline mode, 8 connections: cached Decrypt and Encrypt throughput ratios, then
#     p50/p99/p99.9 from the planned send time at half the sidecar's throughput (a latency pair
#     during which the hypervisor stole CPU is run again, up to 3 pairs; the table shows the
#     machine's busy and steal shares of the pair the ratios come from);
#   - the same cached Decrypt latency phase under a bounded busy loop per core (background CPU load);
#   - 32 connections, closed loop: kms-loadtest and oha (when installed: `cargo install oha --locked`),
#     each against the responder and the sidecar (oha replays one pre-signed Decrypt);
#     with the CPU time each process spent per request (the server's and oha's own, from /proc:
#     unlike throughput, barely moved by other work on a shared machine);
#   - the sidecar's RSS idle and after the run, and `audit verify` of the run's audit log;
#   - RSS with a decrypt cache of 100,000 entries (a second sidecar; 100,000 setup ciphertexts).
# PROFILE=<cargo profile> measures another build profile (default: release, what
# `cargo run --release` and deploy/Dockerfile build).
# All traffic stays on 127.0.0.1; every run is bounded; about 4 to 5 minutes after the build.
# Output: target/bench/*.json, target/bench/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-target/bench}
mkdir -p "$OUT"
# NO_BUILD=1 uses the release binaries already built (e.g. right after `cargo bench --no-run`).
PROFILE=${PROFILE:-release}
[ -n "${NO_BUILD:-}" ] || cargo build --profile "$PROFILE" -q -p kms-sidecar -p kms-loadtest
TARGET_DIR=${CARGO_TARGET_DIR:-target}
SIDECAR=$TARGET_DIR/$PROFILE/kms-sidecar
LT=$TARGET_DIR/$PROFILE/kms-loadtest

echo "==> heap allocations per request (counting allocator, in-process sidecar)"
if [ -n "${NO_BUILD:-}" ]; then
  "$(ls -t "$TARGET_DIR"/release/deps/alloc_per_request-* | grep -v '\.d$' | head -1)" | tee "$OUT/alloc.txt"
else
  cargo bench -q -p kms-sidecar --bench alloc_per_request 2>/dev/null | tee "$OUT/alloc.txt"
fi

. scripts/lib/bench-common.sh
bench_workdir
DATA=$WORK
LOG="$OUT/sidecar.log"
bench_start sidecar "$DATA" "$LOG"
SIDECAR_PID=$PID
bench_creds "$LOG"
export AWS_ACCESS_KEY_ID=$AKID AWS_SECRET_ACCESS_KEY=$SECRET
[ -n "$KMS" ] && [ -n "$AWS_ACCESS_KEY_ID" ] || { echo "sidecar did not start:"; cat "$LOG"; exit 1; }
echo "==> sidecar kms=$KMS admin=$ADMIN"
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$SIDECAR_PID/status"; }
RSS_IDLE=$(rss)
load() { cut -d' ' -f1 /proc/loadavg; }

COMMON=(--no-progress --target "$KMS" --admin-url "$ADMIN" --warmup-secs 2)
# 4 keys x 16 ciphertexts: after the setup every measured Decrypt is a cache hit.
CACHED=(--mix decrypt --keys 4 --ciphertexts-per-key 16)

declare -A LOAD
LOAD[decrypt]=$(load)
echo "==> baseline mode, cached Decrypt, 8 connections (load average $(load))"
"$LT" baseline "${COMMON[@]}" --connections 8 "${CACHED[@]}" \
  --throughput-secs 5 --duration-secs 10 --json "$OUT/baseline-decrypt.json"
LOAD[encrypt]=$(load)
echo "==> baseline mode, Encrypt, 8 connections (load average $(load))"
"$LT" baseline "${COMMON[@]}" --connections 8 --mix encrypt --keys 4 \
  --throughput-secs 5 --duration-secs 10 --json "$OUT/baseline-encrypt.json"

echo "==> baseline mode, cached Decrypt, 8 connections, under a busy loop per core"
busy=()
for _ in $(seq "$(nproc)"); do
  timeout 60 sh -c 'while :; do :; done' &
  busy+=($!)
done
pids+=("${busy[@]}")
sleep 2
LOAD[busy]=$(load)
"$LT" baseline "${COMMON[@]}" --connections 8 "${CACHED[@]}" \
  --throughput-secs 5 --duration-secs 10 --json "$OUT/baseline-decrypt-busy.json"
for p in "${busy[@]}"; do kill "$p" 2>/dev/null || true; done
sleep 2

LOAD[c32]=$(load)
echo "==> 32 connections: kms-loadtest closed loop, responder then sidecar (cached Decrypt)"
"$LT" baseline "${COMMON[@]}" --connections 32 "${CACHED[@]}" \
  --throughput-secs 5 --duration-secs 2 --json "$OUT/baseline-decrypt-32.json"

if command -v oha >/dev/null 2>&1; then
  echo "==> 32 connections: oha closed loop, responder then sidecar (one pre-signed cached Decrypt)"
  "$LT" serve-baseline --listen 127.0.0.1:7399 --duration-secs 60 >"$OUT/serve-baseline.log" 2>&1 &
  pids+=($!)
  KEY=$(python3 scripts/sigv4_headers.py call "$KMS" TrentService.CreateKey '{}' | jq -r .KeyMetadata.KeyId)
  BLOB=$(python3 scripts/sigv4_headers.py call "$KMS" TrentService.Encrypt \
    "$(jq -nc --arg k "$KEY" '{KeyId: $k, Plaintext: "c2lkZWNhci1iZW5jaC1wbGFpbnRleHQtMzJieXRlcw==", EncryptionContext: {app: "kms-loadtest"}}')" |
    jq -r .CiphertextBlob)
  BODY=$(jq -nc --arg b "$BLOB" '{CiphertextBlob: $b, EncryptionContext: {app: "kms-loadtest"}}')
  HEADERS=()
  while IFS= read -r h; do HEADERS+=(-H "$h"); done < <(python3 scripts/sigv4_headers.py headers "$KMS" TrentService.Decrypt "$BODY")
  RESPONDER_PID=${pids[-1]}
  sleep 1
  # CPU seconds (user + system) a process has used so far, and oha's own from `time`.
  cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat"; }
  TIMEFORMAT='%U %S'
  oha_run() { # NAME URL SERVER_PID: 5 s closed loop; writes $OUT/oha-NAME.json and $OUT/cpu-NAME.txt
    local before after gen
    before=$(cpu_s "$3")
    gen=$( { time oha -c 32 -z 5s --no-tui --output-format json -m POST "${HEADERS[@]}" -d "$BODY" \
      "$2/" >"$OUT/oha-$1.json"; } 2>&1)
    after=$(cpu_s "$3")
    echo "$before $after $gen" >"$OUT/cpu-$1.txt"
  }
  oha_run responder http://127.0.0.1:7399 "$RESPONDER_PID"
  oha_run sidecar "$KMS" "$SIDECAR_PID"
else
  echo "oha not installed (cargo install oha --locked): oha comparison skipped"
fi
RSS_AFTER=$(rss)
kill "$SIDECAR_PID"
wait "$SIDECAR_PID" 2>/dev/null || true
VERIFY=$("$SIDECAR" audit verify "$DATA/audit" 2>&1 | tail -1)

echo "==> memory: a decrypt cache of 100,000 entries (second sidecar, 100,000 setup ciphertexts)"
bench_start sidecar-cache "$WORK/cache" "$OUT/sidecar-cache.log" \
  --cache-max-entries 100000 --cache-max-bytes 268435456 --cache-ttl-secs 3600
bench_creds "$OUT/sidecar-cache.log"
RSS_CACHE_IDLE=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$PID/status")
AWS_ACCESS_KEY_ID=$AKID AWS_SECRET_ACCESS_KEY=$SECRET "$LT" run --no-progress --target "$KMS" \
  --admin-url "$ADMIN" --warmup-secs 0 --rate 0 --connections 8 --mix decrypt --keys 4 \
  --ciphertexts-per-key 25000 --payload-bytes 32 --duration-secs 20 --json "$OUT/cache-100k.json" >/dev/null
ENTRIES=$(curl -s "$ADMIN/metrics" | awk '/^kms_sidecar_cache_entries\{cache="decrypt"\}/ {print $2}')
RSS_CACHE=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$PID/status")
bench_stop

{
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- Commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- sidecar loadtest || echo ' (with uncommitted changes)')"
  echo
  echo "| figure | responder | sidecar | sidecar / responder | load average at start |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  sed -n 's/^alloc_per_request op=\([a-z_]*\) requests=[0-9]* allocations=\([0-9.]*\) bytes=\([0-9]*\)$/| heap allocations (bytes) per request, \1 | | \2 (\3) | | |/p' "$OUT/alloc.txt"
  for run in decrypt:decrypt encrypt:encrypt decrypt-busy:busy; do
    f=${run%%:*}
    jq -r --arg op "$f" --arg load "${LOAD[${run##*:}]}" '.baseline as $b |
      "| \($op) throughput, closed loop, 8 conns (req/s) | \($b.baseline_throughput|floor) | \($b.sidecar_throughput|floor) | \($b.throughput_ratio*1000|round/1000) | \($load) |",
      "| \($op) p50 at \($b.rate) req/s (ms) | \($b.baseline_latency_ms.p50) | \($b.sidecar_latency_ms.p50) | \($b.p50_ratio*100|round/100) | |",
      "| \($op) p99 at \($b.rate) req/s (ms) | \($b.baseline_latency_ms.p99) | \($b.sidecar_latency_ms.p99) | \($b.p99_ratio*100|round/100) | |",
      "| \($op) p99.9 at \($b.rate) req/s (ms) | \($b.baseline_latency_ms.p999) | \($b.sidecar_latency_ms.p999) | \($b.p999_ratio*100|round/100) | |",
      .runs[$b.baseline_latency_run] as $r | .runs[$b.sidecar_latency_run] as $s |
      "| \($op) service time p99 at \($b.rate) req/s (ms) | \($r.service_time_ms.p99) | \($s.service_time_ms.p99) | | |",
      "| \($op) errors / late starts at \($b.rate) req/s | \($r.errors) / \($r.late_starts) | \($s.errors) / \($s.late_starts) | | |",
      "| \($op) machine busy / hypervisor steal during the latency runs (% of all CPUs) | \($r.cpu.busy_pct*10|round/10) / \($r.cpu.steal_pct*100|round/100) | \($s.cpu.busy_pct*10|round/10) / \($s.cpu.steal_pct*100|round/100) | pair \(($b.baseline_latency_run - 2) / 2 + 1) of \($b.latency_attempts) run\(if $b.latency_disturbed then ", DISTURBED (steal above \($b.max_steal_pct) % in every pair)" else "" end) | |"' \
      "$OUT/baseline-$f.json"
  done
  jq -r --arg load "${LOAD[c32]}" '.baseline as $b |
    "| cached decrypt throughput, kms-loadtest, 32 conns (req/s) | \($b.baseline_throughput|floor) | \($b.sidecar_throughput|floor) | \($b.throughput_ratio*1000|round/1000) | \($load) |"' \
    "$OUT/baseline-decrypt-32.json"
  if [ -s "$OUT/oha-sidecar.json" ] && jq -e .summary "$OUT/oha-sidecar.json" >/dev/null 2>&1; then
    jq -rn --slurpfile r "$OUT/oha-responder.json" --slurpfile s "$OUT/oha-sidecar.json" '
      ($r[0].summary.requestsPerSec) as $a | ($s[0].summary.requestsPerSec) as $b |
      "| cached decrypt throughput, oha, 32 conns (req/s; sidecar success rate \($s[0].summary.successRate)) | \($a|floor) | \($b|floor) | \(($b/$a)*1000|round/1000) | |"'
    jq -rn --slurpfile s "$OUT/oha-sidecar.json" '"| oha status codes against the sidecar | | \($s[0].statusCodeDistribution|tostring) | | |"'
    # Per request: the server's CPU and oha's own, in microseconds (requests: every status counted).
    per_req() { # NAME -> "server_us generator_us"
      local n
      n=$(jq '[.statusCodeDistribution[]] | add' "$OUT/oha-$1.json")
      awk -v n="$n" '{printf "%.1f %.1f", ($2 - $1) * 1e6 / n, ($3 + $4) * 1e6 / n}' "$OUT/cpu-$1.txt"
    }
    read -r RS RG <<<"$(per_req responder)"
    read -r SS SG <<<"$(per_req sidecar)"
    echo "| server CPU per request during the oha runs (us) | $RS | $SS | $(awk -v a="$RS" -v b="$SS" 'BEGIN {printf "%.2f", b / a}') | |"
    echo "| oha's own CPU per request (us) | $RG | $SG | | |"
  fi
  echo "| sidecar RSS idle / after the run (MiB) | | $RSS_IDLE / $RSS_AFTER | | |"
  echo "| audit verify after the run | | $VERIFY | | |"
  echo "| RSS with a decrypt cache: right after start / with $ENTRIES entries (MiB) | | $RSS_CACHE_IDLE / $RSS_CACHE | | |"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
