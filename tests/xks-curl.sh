#!/usr/bin/env bash
# One XKS proxy API call signed by curl's own SigV4 (--aws-sigv4, curl >= 7.75), the way the XKS
# proxy API specification's Appendix D calls a proxy. Used by tests/tests/xks.rs as an independent
# signer (curl signs content-type and a host with its port), and usable by hand:
#
#   XKS_ACCESS_KEY_ID=... XKS_SECRET_ACCESS_KEY=... tests/xks-curl.sh \
#       http://127.0.0.1:7302/kms/xks/v1/health '{"requestMetadata":{"kmsRequestId":"1","kmsOperation":"KmsHealthCheck"}}'
#
# Prints the response body, then a last line "status=<HTTP status>". XKS_REGION defaults to
# us-east-1; XKS_CACERT names a CA bundle for https:// URLs (the sidecar's <data-dir>/tls/cert.pem).
set -euo pipefail

url=${1:?usage: xks-curl.sh URL JSON-BODY}
body=${2:?usage: xks-curl.sh URL JSON-BODY}
region=${XKS_REGION:-us-east-1}
tls=()
if [[ -n "${XKS_CACERT:-}" ]]; then
    tls=(--cacert "$XKS_CACERT")
fi

curl --silent --show-error --max-time 10 "${tls[@]}" \
    --aws-sigv4 "aws:amz:${region}:kms-xks-proxy" \
    --user "${XKS_ACCESS_KEY_ID:?}:${XKS_SECRET_ACCESS_KEY:?}" \
    -X POST -H "Content-Type: application/json" \
    --data-binary "$body" \
    --write-out '\nstatus=%{http_code}\n' \
    "$url"
