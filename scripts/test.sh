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

# One clean build per run: incremental state only costs disk here (several GB for this workspace).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo test"
cargo test --workspace
echo "==> promtool test rules (alerts/check.sh: rules, rule unit tests, runbooks, metric names, manifests)"
alerts/check.sh
echo "==> all checks passed"
