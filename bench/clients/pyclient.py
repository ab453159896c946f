#!/usr/bin/python3
"""The Python alternative for make bench: requests (python3-requests) with
auth-v2 signed by hmac/hashlib, as a user without cmsrec would write it.

  pyclient.py sign N                          signatures/s (CPU time)
  pyclient.py many URL CA N OUTDIR            N recordings, one Session (keep-alive)
  pyclient.py mem URL CA                      one recording into memory

Prints RESULT key=value lines. Bench-only code.
"""
import hashlib
import hmac
import json
import os
import sys
import time
from datetime import datetime, timezone
from urllib.parse import quote, urlsplit

AK, SK = "bench-ak", b"bench-sk-0123456789"
CTYPE = "application/json;charset=UTF-8"


def normalize(s):
    return quote(s.encode("utf-8") if isinstance(s, str) else s, safe="-._~")


def authv2(ak, sk, method, path, headers, body, timestamp):
    names = sorted(headers)
    signed = ";".join(names)
    canon = sorted(normalize(n) + ":" + normalize(headers[n].strip()) for n in names)
    request = "\n".join([method, path, signed, "\n".join(canon), normalize(body)])
    prefix = "auth-v2/%s/%s/%s" % (ak, timestamp, signed)
    key = hmac.new(sk, prefix.encode(), hashlib.sha256).hexdigest()
    return prefix + "/" + hmac.new(key.encode(), request.encode(), hashlib.sha256).hexdigest()


def selftest():
    auth = authv2("globalaktest", b"example-sk-0123456789", "POST", "/rest/cmsapp/v1/ping",
                  {"host": "10.22.26.181:28080", "content-type": CTYPE, "content-length": "23"},
                  '{"say": "Hello world!"}', "2024-10-31T14:06:52Z")
    assert auth.endswith("/151388d296c25c51b38d6800e04a09201cd481eaf10e247de50d9cb16a08da8a"), auth


def signed_post(url, call_id):
    parts = urlsplit(url)
    body = json.dumps({"callID": call_id, "workNo": "", "beginTime": "", "callerNo": "",
                       "calleeNo": ""}, separators=(",", ":"))
    ts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {"host": parts.netloc, "content-type": CTYPE, "content-length": str(len(body))}
    headers["authorization"] = authv2(AK, SK, "POST", parts.path, dict(headers), body, ts)
    return body, headers


def main():
    selftest()
    mode = sys.argv[1]
    if mode == "sign":
        n = int(sys.argv[2])
        headers = {"host": "10.0.0.1:28080", "content-type": CTYPE, "content-length": "80"}
        t0 = time.process_time()
        for _ in range(n):
            authv2(AK, SK, "POST", "/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile",
                   headers, "x" * 80, "2024-10-31T14:06:52Z")
        print("RESULT rate=%.1f" % (n / (time.process_time() - t0)))
        return
    import requests
    url, ca = sys.argv[2], sys.argv[3]
    session = requests.Session()
    if mode == "mem":
        body, headers = signed_post(url, "big-1")
        r = session.post(url, data=body, headers=headers, verify=ca)
        data = r.content
        print("RESULT bytes=%d status=%d" % (len(data), r.status_code))
        return
    n, out = int(sys.argv[4]), sys.argv[5]
    ok = 0
    for i in range(1, n + 1):
        body, headers = signed_post(url, "small-%d" % i)
        r = session.post(url, data=body, headers=headers, verify=ca)
        if r.status_code == 200 and r.content[:4] == b"RIFF":
            with open(os.path.join(out, "small-%d.wav" % i), "wb") as f:
                f.write(r.content)
            ok += 1
    print("RESULT ok=%d" % ok)


if __name__ == "__main__":
    main()
