#!/usr/bin/env bash
# Checks the alerting and deployment files: promtool rule checks and unit tests, the Prometheus config,
# the Alertmanager config and its routing, YAML of every manifest, one runbook per alert, promtool tests
# that make every alert fire and stay silent, and every metric name used by the rules and runbooks is
# exported by the sidecar (docs/metrics.md "Exported", which a Rust test keeps equal to the registry).
# Prints PASS/FAIL/SKIP per check and a summary; exits non-zero if any check failed.
# Run from anywhere: alerts/check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

# Metric families being added to the sidecar under exactly these names (DESIGN.md "Metrics contract").
# Remove a name from this list once docs/metrics.md lists it under "Exported".
PENDING_METRICS=()

RULES=(alerts/*.rules.yml)
TESTS=(alerts/tests/*.yml)
results=()
failed=0

pass() { results+=("PASS  $1"); echo "--- PASS: $1"; }
fail() { results+=("FAIL  $1"); echo "--- FAIL: $1"; failed=1; }
skip() { results+=("SKIP  $1 ($2)"); echo "--- SKIP: $1: $2"; }
run() { # run NAME CMD...: PASS if the command succeeds
  local name=$1; shift
  echo "==> $name: $*"
  if "$@"; then pass "$name"; else fail "$name"; fi
}

# ---- promtool -----------------------------------------------------------------------------------
if command -v promtool >/dev/null 2>&1; then
  run "promtool check rules" promtool check rules "${RULES[@]}"
  run "promtool test rules" promtool test rules "${TESTS[@]}"
  run "promtool check config deploy/prometheus.yml" promtool check config deploy/prometheus.yml
else
  fail "promtool not installed (apt-get install prometheus; scripts/test.sh installs it)"
fi

# ---- alertmanager -------------------------------------------------------------------------------
if command -v amtool >/dev/null 2>&1; then
  run "amtool check-config alerts/alertmanager.yml" amtool check-config alerts/alertmanager.yml
  echo "==> alertmanager routing: every alert reaches the receiver named by its severity"
  ok=1
  while read -r alert severity; do
    got=$(amtool config routes test --config.file=alerts/alertmanager.yml \
      "alertname=$alert" "severity=$severity" 2>/dev/null)
    if [ "$got" != "$severity" ]; then
      echo "  $alert (severity=$severity) routes to '$got', expected '$severity'"
      ok=0
    fi
  done < <(awk '/^ *- alert:/ {a=$3} /^ *severity:/ && a {print a, $2; a=""}' "${RULES[@]}" | sort -u)
  if [ $ok = 1 ]; then pass "alertmanager routing (page/ticket)"; else fail "alertmanager routing (page/ticket)"; fi
else
  skip "amtool check-config" "amtool not installed: apt-get install prometheus-alertmanager"
fi

# ---- one runbook per alert ----------------------------------------------------------------------
echo "==> runbooks: alerts/runbooks/<AlertName>.md for every alert, and runbook_url pointing at it"
ok=1
alerts=$(grep -hoE '^ *- alert: *[A-Za-z0-9_]+' "${RULES[@]}" | awk '{print $3}' | sort -u)
[ -n "$alerts" ] || { echo "  no alerts found in ${RULES[*]}"; ok=0; }
for a in $alerts; do
  [ -s "alerts/runbooks/$a.md" ] || { echo "  missing runbook: alerts/runbooks/$a.md"; ok=0; }
done
while read -r url; do
  name=$(basename "$url" .md)
  if [ "$url" != "alerts/runbooks/$name.md" ] || ! grep -qx "$name" <<<"$alerts"; then
    echo "  runbook_url '$url' is not alerts/runbooks/<an alert's name>.md"
    ok=0
  fi
done < <(grep -hoE 'runbook_url: *[^ ]+' "${RULES[@]}" | awk '{print $2}')
if [ $ok = 1 ]; then pass "runbook for every alert ($(wc -w <<<"$alerts") alerts)"; else fail "runbook for every alert"; fi

# ---- metric names are exported ------------------------------------------------------------------
echo "==> metric names used by the rules and runbooks are exported (docs/metrics.md, or pending)"
exported=$(awk '/^## /{s=($0 ~ /^## Exported/)} s' docs/metrics.md \
  | grep -oE '^\| `kms_sidecar_[a-z0-9_]+`' | tr -d '|` ' | sort -u)
if [ -z "$exported" ]; then
  fail "metric names exported (no kms_sidecar_ rows under '## Exported' in docs/metrics.md)"
else
  allowed=$(printf '%s\n' "$exported" "${PENDING_METRICS[@]}" | sort -u)
  ok=1
  for f in "${RULES[@]}" alerts/runbooks/*.md; do
    # Recording rules are named kms_sidecar:...; the colon keeps them out of this match.
    for m in $(grep -oE 'kms_sidecar_[a-z0-9_]+' "$f" | sed -E 's/_(bucket|sum|count)$//' | sort -u); do
      grep -qx "$m" <<<"$allowed" || { echo "  $f uses $m, which the sidecar does not export"; ok=0; }
    done
  done
  done_pending=$(for m in "${PENDING_METRICS[@]}"; do grep -qx "$m" <<<"$exported" && echo "$m"; done)
  if [ -n "$done_pending" ]; then
    echo "  note: now exported, can leave PENDING_METRICS in alerts/check.sh: $(echo $done_pending)"
  fi
  if [ $ok = 1 ]; then pass "metric names exported"; else fail "metric names exported"; fi
fi

# ---- YAML, alert structure, test coverage, manifests --------------------------------------------
if python3 -c 'import yaml' 2>/dev/null; then
  echo "==> YAML: parse, alert labels/annotations, test coverage per alert, Kubernetes manifests"
  if python3 - "${RULES[@]}" <<'PY'
import glob, re, sys, yaml

rules_files = sys.argv[1:]
problems = []

# Every YAML file parses.
files = sorted(set(glob.glob("alerts/*.yml") + glob.glob("alerts/tests/*.yml")
                   + glob.glob("deploy/*.yml") + glob.glob("deploy/kubernetes/*.yaml")))
docs = {}
for f in files:
    try:
        docs[f] = [d for d in yaml.safe_load_all(open(f)) if d is not None]
    except yaml.YAMLError as e:
        problems.append(f"{f}: does not parse: {e}")
print(f"  parsed {len(docs)} YAML files")

# Every alert: severity page|ticket, summary, description, runbook_url.
alerts = {}
for f in rules_files:
    for g in (docs.get(f) or [{}])[0].get("groups", []):
        for r in g.get("rules", []):
            if "alert" not in r:
                continue
            name = r["alert"]
            sev = (r.get("labels") or {}).get("severity")
            alerts.setdefault(name, set()).add(sev)
            if sev not in ("page", "ticket"):
                problems.append(f"{name}: severity must be page or ticket, is {sev!r}")
            ann = r.get("annotations") or {}
            for k in ("summary", "description", "runbook_url"):
                if not ann.get(k):
                    problems.append(f"{name}: missing annotation {k}")

# Every alert has a promtool case where it fires and one where it stays silent.
fires, silent = set(), set()
for f in glob.glob("alerts/tests/*.yml"):
    for d in docs.get(f, []):
        for t in d.get("tests", []):
            for a in t.get("alert_rule_test", []):
                (fires if a.get("exp_alerts") else silent).add(a["alertname"])
                for e in a.get("exp_alerts") or []:
                    sev = (e.get("exp_labels") or {}).get("severity")
                    if sev not in alerts.get(a["alertname"], set()):
                        problems.append(f"test expects {a['alertname']} with severity {sev!r}")
for name in sorted(alerts):
    if name not in fires:
        problems.append(f"{name}: no promtool test where it fires")
    if name not in silent:
        problems.append(f"{name}: no promtool test where it stays silent")
print(f"  {len(alerts)} alerts; fire tests for {len(fires & set(alerts))}, silent tests for {len(silent & set(alerts))}")

# Kubernetes: the sidecar container as the deployment docs promise.
k8s = [d for f in docs if f.startswith("deploy/kubernetes/") for d in docs[f]]
deps = [d for d in k8s if d.get("kind") == "Deployment"]
if not deps:
    problems.append("deploy/kubernetes: no Deployment")
for dep in deps:
    spec = dep["spec"]["template"]["spec"]
    cs = {c["name"]: c for c in spec.get("containers", [])}
    sc = cs.get("kms-sidecar")
    if sc is None:
        problems.append("Deployment has no kms-sidecar container")
        continue
    ports = {p.get("name"): p["containerPort"] for p in sc.get("ports", [])}
    if ports.get("kms-metrics") != 7301:
        problems.append("kms-sidecar: admin port 7301 must be declared as kms-metrics")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        if (sc.get(probe) or {}).get("httpGet", {}).get("path") != path:
            problems.append(f"kms-sidecar: {probe} must GET {path}")
    sec = sc.get("securityContext") or {}
    pod_sec = spec.get("securityContext") or {}
    if not sec.get("readOnlyRootFilesystem"):
        problems.append("kms-sidecar: readOnlyRootFilesystem must be true")
    if not (sec.get("runAsNonRoot") or pod_sec.get("runAsNonRoot")):
        problems.append("kms-sidecar: runAsNonRoot must be true")
    if not (sc.get("resources") or {}).get("requests"):
        problems.append("kms-sidecar: resource requests missing")
    mounts = {m["mountPath"] for m in sc.get("volumeMounts", [])}
    envs = {e["name"]: e for e in sc.get("env", [])}
    for e in ("KMS_SIDECAR_ROOT_KEY", "KMS_SIDECAR_PKCS11_PIN"):
        if "secretKeyRef" not in (envs.get(e, {}).get("valueFrom") or {}):
            problems.append(f"kms-sidecar: {e} must come from a Secret")
    args = sc.get("args", []) + sc.get("command", [])
    if "--config" not in args:
        problems.append("kms-sidecar: must be started with --config")

# The ConfigMap's config.toml parses and uses only keys of the README's configuration table.
try:
    import tomllib
except ImportError:
    tomllib = None
readme_keys = set(re.findall(r"^\| `([a-z0-9_]+)` \|", open("README.md").read(), re.M))
for cm in (d for d in k8s if d.get("kind") == "ConfigMap"):
    for fname, text in (cm.get("data") or {}).items():
        if not fname.endswith(".toml"):
            continue
        if tomllib is None:
            print(f"  SKIPPED TOML parse of {fname}: python3 has no tomllib (needs 3.11+)")
            continue
        cfg = tomllib.loads(text)
        for k in cfg:
            if readme_keys and k not in readme_keys:
                problems.append(f"ConfigMap {fname}: unknown config key {k!r} (not in README's table)")
        if cfg.get("admin_listen") != "0.0.0.0:7301":
            problems.append(f"ConfigMap {fname}: admin_listen must be 0.0.0.0:7301 for Prometheus")
        if deps and cfg.get("data_dir") not in mounts:
            problems.append(f"ConfigMap {fname}: data_dir {cfg.get('data_dir')!r} is not a mounted volume")

for p in problems:
    print("  " + p)
sys.exit(1 if problems else 0)
PY
  then pass "YAML parse, alert structure, per-alert test coverage, manifests"
  else fail "YAML parse, alert structure, per-alert test coverage, manifests"
  fi
else
  skip "YAML parse and manifest checks" "python3 with PyYAML not available (apt-get install python3-yaml)"
fi
if command -v kubeconform >/dev/null 2>&1; then
  run "kubeconform deploy/kubernetes" kubeconform -summary -ignore-missing-schemas \
    $(ls deploy/kubernetes/*.yaml | grep -v kustomization.yaml)
else
  skip "kubeconform schema validation" "kubeconform not installed (no Debian, PyPI, npm or crates.io package); manifests are parsed and checked above"
fi

# ---- summary ------------------------------------------------------------------------------------
echo
echo "==> alerts/check.sh summary"
printf '  %s\n' "${results[@]}"
if [ $failed = 0 ]; then
  echo "alerts/check.sh: PASS"
else
  echo "alerts/check.sh: FAIL"
fi
exit $failed
