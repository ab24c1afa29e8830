#!/usr/bin/env python3
"""Signs one KMS JSON request with SigV4 and prints it for scripts/bench.sh.

Why: oha sends one fixed request again and again; a SigV4 signature stays valid for the sidecar's
clock-skew window and the sidecar keeps no replay state, so one request signed here can be replayed
by oha for a bounded run (seconds) against a cached Decrypt. Also used to create the key and the
ciphertext (mode `call`: sends the request and prints the answer's JSON).

Usage: sigv4_headers.py headers|call URL TARGET BODY   (credentials from AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY; region us-east-1). `headers` prints `-H 'name: value'` lines for oha.
"""
import datetime
import hashlib
import hmac
import os
import sys
import urllib.parse
import urllib.request

REGION = "us-east-1"
SERVICE = "kms"


def sign(url, target, body):
    host = urllib.parse.urlsplit(url).netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    headers = {
        "content-type": "application/x-amz-json-1.1",
        "host": host,
        "x-amz-date": amz_date,
        "x-amz-target": target,
    }
    names = ";".join(sorted(headers))
    canonical = "\n".join(
        ["POST", "/", ""]
        + [f"{k}:{headers[k]}" for k in sorted(headers)]
        + ["", names, hashlib.sha256(body).hexdigest()]
    )
    scope = f"{date}/{REGION}/{SERVICE}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + os.environ["AWS_SECRET_ACCESS_KEY"]).encode()
    for part in (date, REGION, SERVICE, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={os.environ['AWS_ACCESS_KEY_ID']}/{scope}, "
        f"SignedHeaders={names}, Signature={signature}"
    )
    return headers


def main():
    mode, url, target, body = sys.argv[1:5]
    body = body.encode()
    headers = sign(url, target, body)
    if mode == "headers":
        for k, v in headers.items():
            if k != "host":
                print(f"{k}: {v}")
        return
    req = urllib.request.Request(url + "/", data=body, method="POST")
    for k, v in headers.items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=10) as resp:
        sys.stdout.write(resp.read().decode())


if __name__ == "__main__":
    main()
