#!/usr/bin/env bash
# The project's one test command (README "Test"; .ci/run calls exactly this).
# Installs what the tests need when it is missing, then runs formatting, lint, every test, and the
# Prometheus rule tests. A tool that cannot be installed makes its tests print SKIPPED with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v xvfb-run >/dev/null 2>&1 || missing+=(xvfb)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
# the fleet tests run a real 3-member etcd cluster (the build itself needs no protoc: build.rs
# compiles our .proto files in pure Rust)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
# the XKS tests sign with curl --aws-sigv4 (curl >= 7.75) as a second, independent SigV4 client
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
  echo "==> installing test dependencies: ${missing[*]}"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
      echo "WARNING: could not install ${missing[*]}; the tests that need them will print SKIPPED"
    fi
  else
    echo "WARNING: not root or no apt-get: cannot install ${missing[*]}; the tests that need them will print SKIPPED"
  fi
fi

# Proxy mode's tests run against moto_server (a second KMS implementation) and the AWS CLI.
pip_missing=()
command -v moto_server >/dev/null 2>&1 || pip_missing+=('moto[server]')
command -v aws >/dev/null 2>&1 || pip_missing+=(awscli)
if ((${#pip_missing[@]})); then
  echo "==> installing test dependencies with pip: ${pip_missing[*]}"
  if ! { command -v python3 >/dev/null 2>&1 && python3 -m pip install -q "${pip_missing[@]}"; }; then
    echo "WARNING: could not pip install ${pip_missing[*]}; the proxy tests that need them will print SKIP"
  fi
fi

# One clean build per run: incremental state only costs disk here (several GB for this workspace).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo test"
cargo test --workspace
echo "==> cargo deny (deny.toml: licences, duplicate versions, sources, advisories)"
if ! command -v cargo-deny >/dev/null 2>&1; then
  # From crates.io; took 8 min 47 s on a busy 2-core machine (docs/hardening.md).
  echo "    cargo-deny is missing: cargo install --locked cargo-deny"
  cargo install --locked cargo-deny >/dev/null 2>&1 || true
fi
if command -v cargo-deny >/dev/null 2>&1; then
  # Duplicate versions are warnings (deny.toml); the one-line summary of each is enough here.
  deny_out=$(cargo deny check --hide-inclusion-graph licenses bans sources 2>&1) || {
    echo "$deny_out"
    exit 1
  }
  echo "$deny_out" | grep -E '^warning\[' || true
  echo "$deny_out" | tail -1
  # The advisory database is a git clone from github.com; without it, say so instead of failing.
  if timeout 120 cargo deny --log-level error fetch db >/dev/null 2>&1; then
    cargo deny --log-level error check --disable-fetch advisories
  else
    echo "SKIP cargo deny advisories: the RustSec advisory database (github.com/rustsec/advisory-db) cannot be fetched from this machine"
  fi
else
  echo "SKIP cargo deny: cargo-deny is not installed and could not be installed (cargo install --locked cargo-deny)"
fi
echo "==> promtool test rules (alerts/check.sh: rules, rule unit tests, runbooks, metric names, manifests)"
alerts/check.sh
echo "==> all checks passed"
