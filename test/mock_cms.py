#!/usr/bin/env python3
"""Mock Huawei CC-CMS recording-download server for the cmsrec test suite.

Usage: python3 test/mock_cms.py --state-dir DIR [--ak AK] [--sk SK]
                                [--max-lifetime SECONDS] [--self-test]

On start it writes DIR/{ca,server,other-ca}.{pem,key} (EC P-256, openssl CLI),
listens on 127.0.0.1:0 for HTTPS and for plain HTTP (same handler), then
writes DIR/ready.json {"https_port","http_port","wrong_name_port","blackhole_port","pid",
"ak","ca"} (wrong_name_port: HTTPS with a certificate of the same CA for other.invalid;
blackhole_port: a full accept queue, so connecting there hangs). It logs one
line per request to DIR/server.log and exits on SIGTERM/SIGINT or after
--max-lifetime seconds (default 600). --self-test checks the auth-v2 signer
against vectors V1-V3 of cms-protocol.md and exits.

TLS fault ports (same handler and API as https_port), also in ready.json:
  expired_port      a certificate of the mock CA that expired a year ago
  notyet_port       a certificate of the mock CA valid only from a year from now
  mtls_port         asks for a client certificate signed by the mock CA (TLS 1.3):
                    DIR/client.pem + DIR/client.key is one; DIR/other-client.pem +
                    DIR/other-client.key is signed by the unrelated CA (refused)
  tls11_port        speaks only TLS 1.0 and 1.1 (@SECLEVEL=0); null when this
                    Python/OpenSSL cannot (tls11_error then says why)
  tls12_port        speaks only TLS 1.2
  tls_switch_port   serves what /_mock/tls?mode=MODE last chose, for each new
                    connection (reset leaves it): good (as https_port), expired,
                    notyet, otherca (a certificate of other-ca.pem), wrongname, mtls,
                    tls12 (and tls11 when available). So one client can meet a TLS
                    failure and then a good server on the same base_url.
The certificates of these ports have the server's key (DIR/server.key), so one
pinnedpubkey matches all but otherca's (DIR/otherca.key).

API: POST <any prefix>/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile,
auth-v2 verified (401 resultCode 0100001 on failure), JSON body with "callID":

  callID            answer
  ----------------  ---------------------------------------------------------
  <digits>-<digits> WAV of 160044 bytes, same bytes as wav-160044
  wav-N             WAV, exactly N bytes (N >= 44): 44-byte A-law/8 kHz/mono
                    header + deterministic pseudo-random data; Content-Length
  chunked-N         same bytes as wav-N, Transfer-Encoding: chunked (16 KiB)
  zip-K             ZIP (deflated) of rec_1.wav..rec_K.wav, member i = wav-(10000+i)
  odd...            "odd" after any dots, slashes, spaces: the bytes of wav-1000
  zip-dirs          ZIP with a directory entry day1/ and day1/rec_{1,2}.wav
  zipbad-slip       ZIP with a member ../evil.wav (zip-slip)
  zipbad-abs        ZIP with a member /tmp/cmsrec-evil.wav
  zipbad-symlink    ZIP with a Unix symlink member link.wav -> /etc/passwd
  zipbad-crc        ZIP whose second member has a flipped byte (CRC/inflate error)
  zipbad-trunc      the first half of a ZIP
  zipbad-hugesize   a zip64 member declaring 2**64 - 500 bytes
  wsjson            200 the notfound answer after 80 bytes of CR LF
  html              200 an HTML login page
  jsonarray         200 a JSON array
  blank             200 a body of whitespace only
  unknown-N         N deterministic bytes starting with "ID3" (N >= 3)
  notfound          200 text/plain {"resultData":"","resultCode":"1",...empty}
  flow              200 JSON resultCode 0300008 (flow control)
  param             200 JSON resultCode 0100003 (parameter error)
  ok-json           200 JSON resultCode 0 but no recording
  badjson           200 truncated JSON
  emptybody         200 with Content-Length 0
  auth-401          401 JSON resultCode 0100001 "token expired"
  auth-403          403 Spring-style JSON (IP locked)
  http-C            status C (300-599), {"error":"mock C"} (304: empty); Retry-After: 7
                    for 429/503; Location https://127.0.0.1:<https port>/elsewhere
                    for 301/302/303/307/308
  bigerror          500 with 64 MiB of "x" (Content-Length set); stats.bigerror_sent
                    records how much was written before the client hung up
  numcode           200 JSON with a numeric resultCode 1
  bom               200 the notfound answer after a UTF-8 byte-order mark
  flow-retry        200 the flow answer with Retry-After: 30
  drop-N            wav-N headers, first N//2 bytes, then abrupt close
  stall-S           Content-Length 100000, 1000 bytes, sleep S (<= 30) s, close
  slowheaders-S     sleep S (<= 30) s, then the notfound answer
  slowjson-S        200 JSON with Content-Length: the notfound answer padded with spaces
                    after its '{', trickled in pieces 0.1 s apart over S (<= 30) s; the
                    first piece is '{' and 15 spaces
  slow503-S         as slowjson-S, but status 503 with Retry-After: 7
  zipbig-M          ZIP (deflated, small) of big_1.wav..big_4.wav, each a WAV header and
                    zeros, exactly M MiB (1 <= M <= 512; built once, cached)
  gzipjson          200 JSON, Content-Encoding: gzip, the notfound answer gzipped
  gzipwav-N         Content-Encoding: gzip, the gzip of wav-N (44 <= N <= 64 MiB);
                    /_mock/expect gives the decoded size and sha256 (those of wav-N)
  extra-N           as wav-N (44 <= N <= 64 MiB), then after 0.3 s an unrequested second
                    200 response (the bytes of wav-(N+1)) on the same keep-alive
                    connection; stats.extra_sent counts them
  gbkdesc           200 JSON resultCode 1, resultDesc in raw GBK bytes (not UTF-8)
  c1desc            200 JSON resultCode 1, resultDesc with a raw U+009B (C2 9B): a C1 CSI
  badtext           500 text/plain with a C1 CSI, GBK bytes and an ESC [2J
  zipbad-c1name     ZIP with rec_1.wav and a member named a<U+009B>31mb (UTF-8 flag)
  zipbad-filedir    ZIP with rec_1.wav, a file member a and then a directory entry a/
  zipbad-declared   ZIP (stored, no zip64) whose member b.wav holds 4 bytes "RIFF" but
                    declares 3 GiB uncompressed
  http09            no status line: raw WAV-like bytes, then close (HTTP/0.9 style)
  bigheader         200 the notfound answer with a 200000-character X-Filler header
  slowwav-S         200 the bytes of wav-160044 (Content-Length), trickled in pieces
                    0.1 s apart over S (<= 30) s: a recording that is slow to arrive
  retry-K-H-N       the first K answered requests with this exact callID (counted since
                    the last reset; a 401 is not counted) fail as H says, the later ones
                    get the bytes of wav-N (Content-Length; 44 <= N <= 2**32). H is:
                      flow  200 the flow answer with Retry-After: 1
                      503   503 {"error":"mock 503"} with Retry-After: 1
                      429   429 {"error":"mock 429"} with Retry-After: 1
                      drop  as drop-N: the headers of wav-N, N//2 bytes, abrupt close
                      slow  sleep 10 s, then wav-N (meant for a client timeout below 10 s)
                    /_mock/expect gives the size and sha256 of wav-N
  delay-MS-N        wav-N (44 <= N <= 2**32) after MS (<= 30000) ms, on top of latency_ms
  ---- fault suite (spec/fault_spec.lua): raw HTTP, written byte by byte ----
  fault-nostatus    the request is read, then the connection is cut: no byte of an answer
  fault-midheaders  half a header block ("HTTP/1.1 200 OK" CR LF "Content-Ty"), then cut
  fault-midchunk-N  chunked wav-N: the first chunk (16 KiB) announced, half of it sent, cut
  fault-long-N      wav-N with Content-Length N, followed in the same write by 64 bytes
                    that no request asked for (a bogus response start); kept alive
  fault-short-N     Content-Length N, N//2 bytes, then a clean close (TLS close_notify)
  fault-badhex-N    chunked wav-N whose second chunk size is "zz" (not hex)
  fault-noend-N     chunked wav-N without the final 0 chunk, then a clean close
  fault-chunklong-N chunked: a first chunk announced as 44 bytes carrying 100 bytes of wav-N
  fault-hugejson-C  status C (200 or 500), a 5 MiB JSON object with resultCode "1"
                    (Content-Length set)
  fault-jsonstring  200 application/json, the body a JSON string
  fault-jsonnumber  200 application/json, the body the JSON number 1
  fault-http10-N    "HTTP/1.0 200 OK", no Content-Length, wav-N, then a clean close
  fault-http10cut-N as fault-http10-N, but only N//2 bytes before the clean close
  fault-http10drop-N as fault-http10cut-N, but an abrupt close (no TLS close_notify)
  fault-continue-N  "HTTP/1.1 100 Continue" before the 200 answer of wav-N
  fault-early-N     "HTTP/1.1 103 Early Hints" with a Link header before the 200 of wav-N
  fault-dupcl-N     wav-N with two Content-Length headers, N+10 then N-10 (whichever a
                    client believes, it is wrong), then a clean close
  fault-clist-N     wav-N with one header "Content-Length: N-10, N", then a clean close
  fault-dupct-N     wav-N with two Content-Type headers (text/plain, then octet-stream)
  fault-manyheaders the notfound answer after 3000 X-Many-i headers (about 100 KB)
  fault-redirect-C  status C (301, 302, 303, 307 or 308) with Location: the API path on this
                    server with ?redirected=1 (a followed redirect would count as a request)
  fault-badstatus   "HTTP/1.1 2x0 Banana" as status line, then the notfound answer
  fault-garbage     "SSH-2.0-OpenSSH_9.2" CR LF and other non-HTTP bytes, then close
  Raw TCP ports, in ready.json, that fail before any HTTP while armed and otherwise
  forward every connection to the HTTPS port (so one client can fail, then succeed):
    refused_port    armed from the start: a bound socket that does not listen (connection
                    refused); disarmed, it listens (for good: it cannot be armed again)
    hang_port       accepts, then never reads nor writes: a TLS handshake that stalls
    cut_port        accepts, then closes at once: not one byte is received
    halfhello_port  reads the ClientHello, sends the first 10 bytes of a TLS record that
                    announces 64, then closes: a handshake cut in the middle
  GET /_mock/fault?NAME=K (NAME: refused, hang, cut, halfhello) arms NAME for its next K
  connections (0 disarms; refused: K > 0 refuses, 0 listens); answers the armed counts.
  /_mock/reset does not touch them; forwarded connections count as HTTPS connections.
  ---- end of fault suite modes ----
  anything else     as notfound (also wav-N with N < 44, unknown-N with N < 3,
                    zip-K outside 1..1000, N > 2**32, zipbig-M outside 1..512,
                    gzipwav-N / extra-N outside 44..64 MiB)

Every request but the control ones (any path, any method) is first held for
latency_ms (see /_mock/set) before its status line; its body (by Content-Length, up to
1 MiB) was read before, by the strict checks (below).
Every accepted socket (all ports) has TCP_NODELAY: no 40 ms delayed-ACK stalls.

Control (GET, no auth): /_mock/stats, /_mock/expect?callID=ID (size and sha256
of the success body of ID), /_mock/reset, /_mock/set?latency_ms=MS (0 <= MS <= 60000,
may be fractional; answers the settings; reset puts it back to 0), /_mock/strict.

Strict checks: every request but the control ones is checked as it arrives, as
cmsrec must send it: the request line exactly "POST <path> HTTP/1.1" CRLF (visible
ASCII, no query); header lines as received, each ending in CRLF, no obs-fold, names
that are tokens, values without control characters (HTAB aside); exactly one Host
(naming this port), Content-Type (application/json;charset=UTF-8), Content-Length
(equal to the body's length) and Authorization, no Transfer-Encoding; a body that is
a JSON object in UTF-8 with exactly callID, workNo, beginTime, callerNo, calleeNo in
that order, strings of at most 256 bytes without control characters (C0, DEL, C1),
callID not empty, beginTime empty or a real yyyyMMddHHmmss; a signature that
verifies. A request that breaks one, or that http.server refuses before any handler
(a request line or header line over 64 KiB, more than 100 headers, a bad request
line, an unknown method), counts as malformed (the token endpoint and the echo paths,
below, are not checked: their bodies are not this interface's). /_mock/strict answers {seen,
malformed, reason, bodies: {"<the five values joined by \x1f>": count}}.

/_mock/stats (JSON; reset clears every counter, a setting goes back to its default):
  requests          POSTs to the API path (auth failures included)
  connections       TCP connections accepted on all ports (control connections too)
  auth_failures     requests answered 401 by the signature check
  last              the last API request: method, path, headers, body, auth_ok,
                    auth_error, callID, canonical_request
  bigerror_sent     see bigerror; extra_sent: see extra-N
  latency_ms        the current setting
  https_connections TCP connections accepted on the HTTPS port (https_port only)
  handshakes        TLS handshakes completed on the HTTPS port
  resumed           of those, the ones that resumed a session (session_reused)
  open              HTTPS-port connections open now (accepted before a reset too)
  max_open          the peak of HTTPS-port connections open at once, counting only
                    those accepted since the last reset
  request_times     time.monotonic() (float seconds) at which each of the last 2000
                    API POSTs was received, oldest first: for rate limits (compare
                    differences only; the clock is the server's)
  per_call          {callID: number of API POSTs that carried it} (401s included)
  per_call_times    {callID: [the receive times of its last 100 POSTs]}: for backoff
  strict_seen       requests the strict checks saw (control ones aside)
  malformed         of those, the ones that broke a rule; malformed_reason: the last's

Gateways (cms-protocol.md, "Other authentication seen in the field"):
  Schemes. Every API and echo request is verified by the scheme its Authorization header
  names (stats.last.scheme): "SDK-HMAC-SHA256 Access=..., SignedHeaders=..., Signature=..."
  (the API gateway's signer, written here independently of the module: path segments
  unquoted and quoted again with a trailing '/', query pairs ordered by key then value as
  the SDKs do, header values as received; --self-test checks vector V4), "Bearer <token>" with X-APP-Key = the AK (a token issued below, not
  revoked or expired), else auth-v2. A failure is 401 resultCode 0100001.
  Token endpoint: POST /apigovernance/api/oauth/tokenByAkSk {"app_key","app_secret"}
  (no Authorization) answers 200 {"AccessToken","expiresIn"} for the mock's AK/SK, 401
  {"error","message"} otherwise. Settings (/_mock/set, back to the default on reset):
    token_ttl=S      lifetime of new tokens, 1..86400 s (default 3600), sent as expiresIn
    token_mode=M     ok (default) | noaccess (200 {"resultCode":"1",...}: no AccessToken)
                     | 503 (503 with Retry-After: 1)
    bearer_reject=1  every bearer request is refused (401, the token quoted in resultDesc,
                     as a careless gateway might): a refresh cannot help
  /_mock/revoke (GET) revokes every token issued so far. Stats: tokens_issued,
  token_requests (answered token requests, refusals included), waf_refused.
  WAF port (ready.json waf_port, waf_name): HTTPS with a certificate for DNS:cms.example.test
  and IP:127.0.0.1 (so that a connection by IP passes the certificate check and meets the
  WAF), signed by the mock CA. A request whose TLS SNI is not cms.example.test (a
  connection by IP sends none) is answered 418 {"error": ...}; with it, the port serves
  exactly what the HTTPS port serves.
  Echo: any other POST path containing /rest/ is verified like the API, recorded in
  stats.last (and stats.requests), and answers 200
  {"resultCode":"0","resultDesc":"success","resultData":{"echo": <the JSON sent>}}, unless
  the body has "_reply": "array" (200 [1,2,3]), "html" (200 an HTML page), "status-C"
  (status C, {"error": "mock C"}), "big-N" (200 a JSON object of about N bytes, N <= 64 MiB).
"""
import argparse
import collections
import datetime
import difflib
import gzip
import hashlib
import hmac
import io
import json
import os
import random
import re
import secrets
import signal
import ssl
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import warnings
import zipfile
import zlib
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote_to_bytes

API_SUFFIX = "/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile"
JSON_CT = "application/json;charset=UTF-8"
NOTFOUND = b'{"resultData":"","resultCode":"1","resultDesc":"Record List is empty"}'
BLOCK = 64 * 1024          # generation block (fixed: keeps the byte stream deterministic)
CHUNK = 16 * 1024          # Transfer-Encoding chunk size
MAX_BODY = 1 << 32         # wav-N / unknown-N above this are treated as "anything else"
MAX_SMALL = 64 << 20       # same for gzipwav-N / extra-N (built in memory / sent twice)
MAX_REQUEST = 1 << 20      # largest request body accepted
BIGERROR_MB = 64           # size of the bigerror body
ZIPBIG_MB = 512            # largest zipbig-M member size
TRICKLE_STEP = 0.1         # seconds between the pieces of slowjson-S / slow503-S
EXTRA_DELAY = 0.3          # seconds before the unrequested response of extra-N
HTTP09 = b"RIFF\x24\x00\x00\x00WAVEhello, no status line"
RETRY_AFTER = "1"          # Retry-After of the retry-K-H-N failures
RETRY_SLOW = 10.0          # seconds retry-K-slow-N holds a failing attempt
MAX_LATENCY_MS = 60000     # largest latency_ms setting
MAX_DELAY_MS = 30000       # largest MS of delay-MS-N
REQUEST_TIMES = 2000       # receive times kept in stats.request_times
PER_CALL_TIMES = 100       # receive times kept per callID in stats.per_call_times
TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", re.ASCII)
SIG_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
HDR_RE = re.compile(r"[a-z0-9-]+", re.ASCII)
NUM_RE = re.compile(r"\d+(\.\d+)?", re.ASCII)
RETRY_RE = re.compile(r"retry-(\d+)-(flow|503|429|drop|slow)-(\d+)", re.ASCII)
DELAY_RE = re.compile(r"delay-(\d+)-(\d+)", re.ASCII)
# gateways
TOKEN_PATH = "/apigovernance/api/oauth/tokenByAkSk"
WAF_NAME = "cms.example.test"
TOKEN_TTL = 3600           # default lifetime of a token, seconds
TOKEN_MODES = ("ok", "noaccess", "503")
APIG_RE = re.compile(r"SDK-HMAC-SHA256 Access=([^,\s]+), SignedHeaders=([^,\s]+), "
                     r"Signature=([0-9a-f]{64})", re.ASCII)
SDK_DATE_RE = re.compile(r"\d{8}T\d{6}Z", re.ASCII)


def result(code, desc):
    return {"resultCode": code, "resultDesc": desc, "resultData": ""}


FIXED = {  # callID -> (status, body, content type)
    "notfound": (200, NOTFOUND, "text/plain"),
    "flow": (200, result("0300008", "Flow control: too many requests"), JSON_CT),
    "param": (200, result("0100003", "Parameter error"), JSON_CT),
    "ok-json": (200, result("0", "success"), JSON_CT),
    "badjson": (200, b'{"resultCode": "1", "resu', JSON_CT),
    "emptybody": (200, b"", JSON_CT),
    "auth-401": (401, result("0100001", "Authentication failed: token expired"), JSON_CT),
    "numcode": (200, b'{"resultCode":1,"resultDesc":"Record List is empty","resultData":""}',
                JSON_CT),
    "bom": (200, b"\xef\xbb\xbf" + NOTFOUND, "text/plain"),
    "wsjson": (200, b"\r\n" * 40 + NOTFOUND, "text/plain"),
    "html": (200, b"<!DOCTYPE html><html><body>Please log in</body></html>", "text/html"),
    "jsonarray": (200, b'[{"resultCode":"1"}]', JSON_CT),
    "blank": (200, b" \r\n" * 10, "text/plain"),
    "gbkdesc": (200, b'{"resultCode":"1","resultDesc":"' + "录音不存在".encode("gbk")
                + b'","resultData":""}', JSON_CT),
    "c1desc": (200, b'{"resultCode":"1","resultDesc":"' + "Record\u009b31m List is empty".encode()
               + b'","resultData":""}', JSON_CT),
    "badtext": (500, b"bad \xc2\x9b31m gateway \xb4\xed\xce\xf3 \x1b[2J end", "text/plain"),
}

# ---------------------------------------------------------------- auth-v2 signer


def normalize(data):
    """UTF-8 bytes; keep A-Z a-z 0-9 - . _ ~; every other byte as %XX (upper hex)."""
    return quote(data, safe="")


def canonical_request(method, path, query, signed, headers, body):
    """query: [(key, value)], signed: sorted lowercase names, headers: {name: value}."""
    lines = [method.upper(), path]
    if query:
        lines.append("&".join(sorted(f"{normalize(k)}={normalize(v)}" for k, v in query)))
    lines.append(";".join(signed))
    lines.append("\n".join(sorted(f"{normalize(h)}:{normalize(headers[h].strip())}"
                                  for h in signed)))
    return "\n".join(lines) + "\n" + normalize(body)


def sign(ak, sk, timestamp, signed_headers, canonical):
    """Return (SigningKey, signature), both lowercase hex."""
    prefix = f"auth-v2/{ak}/{timestamp}/{signed_headers}"
    key = hmac.new(sk.encode(), prefix.encode(), hashlib.sha256).hexdigest()
    return key, hmac.new(key.encode(), canonical.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- SDK-HMAC-SHA256 signer


def apig_uri(path):
    """Each segment unquoted, then quoted with only unreserved bytes kept; a trailing '/'."""
    uri = "/".join(quote(unquote_to_bytes(seg), safe="~") for seg in path.split("/"))
    return uri if uri.endswith("/") else uri + "/"


def apig_query(query):
    """The gateway SDKs' rule: the pairs ordered by key, then by value, as received (before
    encoding: Python's SDK sorts its (key, value) tuples, Go's sort.Strings the keys, then
    each key's values), then each k=v quoted with only unreserved bytes kept."""
    return "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted(query))


def apig_canonical(method, path, query, signed, values, body):
    """query: [(key, value)] as bytes; signed: sorted lowercase names; values: {name: bytes}."""
    q = apig_query(query)
    headers = b"".join(n.encode() + b":" + values[n].strip() + b"\n" for n in signed)
    return b"\n".join([method.upper().encode(), apig_uri(path).encode(), q.encode(), headers,
                       ";".join(signed).encode(), hashlib.sha256(body).hexdigest().encode()])


def apig_sign(sk, date, canonical):
    """(string to sign, signature)."""
    sts = b"SDK-HMAC-SHA256\n" + date.encode() + b"\n" + \
        hashlib.sha256(canonical).hexdigest().encode()
    return sts, hmac.new(sk.encode(), sts, hashlib.sha256).hexdigest()


def self_test_apig():
    """Vector V4 of cms-protocol.md: [(name, got, want)]."""
    values = {"content-type": b"application/json;charset=UTF-8", "host": b"10.22.26.181:28080",
              "x-sdk-date": b"20241031T140652Z"}
    canon = apig_canonical("POST", "/rest/cmsapp/v1/ping", [], sorted(values), values,
                           b'{"say": "Hello world!"}')
    sts, sig = apig_sign("example-sk-0123456789", "20241031T140652Z", canon)
    return [
        ("V4 canonical request", canon.decode(),
         "POST\n/rest/cmsapp/v1/ping/\n\ncontent-type:application/json;charset=UTF-8\n"
         "host:10.22.26.181:28080\nx-sdk-date:20241031T140652Z\n\ncontent-type;host;x-sdk-date\n"
         "9a02a6785649cc14afb95999a3ddbb7bed2370840b9bca6d403c0b8dbf1d40a9"),
        ("V4 string to sign", sts.decode(), "SDK-HMAC-SHA256\n20241031T140652Z\n"
         "5a2899caf872bbfa54f09ca2b35f8f6c60fd803621d00b317ae68e46b5db1bc6"),
        ("V4 signature", sig, "c34e6acee3d185e6c72e77d72331e863ad694280734904f68daaeb3046125adb"),
        ("apig path encoding", apig_uri("/rest/a%41b/c!d"), "/rest/aAb/c%21d/"),
        ("apig query order", apig_query([(b"a-b", b"2"), (b"b", b"x y"), (b"a", b"1"),
                                         (b"a", b"0"), (b"a~", b"/")]),
         "a=0&a=1&a-b=2&a~=%2F&b=x%20y"),
    ]


def self_test():
    ak, sk, ts = "globalaktest", "example-sk-0123456789", "2024-10-31T14:06:52Z"
    path, body = "/rest/cmsapp/v1/ping", b'{"say": "Hello world!"}'
    hdrs = {"host": "10.22.26.181:28080", "content-length": "23",
            "content-type": "application/json;charset=UTF-8"}
    three = ["content-length", "content-type", "host"]
    c1 = canonical_request("POST", path, [], three, hdrs, body)
    k1, s1 = sign(ak, sk, ts, ";".join(three), c1)
    c2 = canonical_request("POST", path, [], ["host"], hdrs, body)
    s2 = sign(ak, sk, ts, "host", c2)[1]
    c3 = canonical_request("GET", path, [("b", "x y"), ("a", "1/2")], ["host"], hdrs, b"")
    s3 = sign(ak, sk, ts, "host", c3)[1]
    body_n = "%7B%22say%22%3A%20%22Hello%20world%21%22%7D"
    checks = [
        ("V1 canonical request", c1, "POST\n/rest/cmsapp/v1/ping\ncontent-length;content-type;host\n"
         "content-length:23\ncontent-type:application%2Fjson%3Bcharset%3DUTF-8\n"
         "host:10.22.26.181%3A28080\n" + body_n),
        ("V1 SigningKey", k1, "bb0c4d2407684a18485b7018d70a5ebdc2c895ffa7d24ff9465e9dcc2fa7bb0f"),
        ("V1 Authorization", f"auth-v2/{ak}/{ts}/{';'.join(three)}/{s1}",
         "auth-v2/globalaktest/2024-10-31T14:06:52Z/content-length;content-type;host/"
         "151388d296c25c51b38d6800e04a09201cd481eaf10e247de50d9cb16a08da8a"),
        ("V2 canonical request", c2,
         "POST\n/rest/cmsapp/v1/ping\nhost\nhost:10.22.26.181%3A28080\n" + body_n),
        ("V2 signature", s2, "e77feacaa3781f9f4b7b391abc2cf2fb75677908c26de4cfa787c2cfb49c2487"),
        ("V3 canonical request", c3,
         "GET\n/rest/cmsapp/v1/ping\na=1%2F2&b=x%20y\nhost\nhost:10.22.26.181%3A28080\n"),
        ("V3 signature", s3, "bf9b5078cf12b5efd40b94a325e2297f2b94adeba6bcdfa9e5cbad643784bed0"),
    ] + self_test_apig()
    failed = [(name, got, want) for name, got, want in checks if got != want]
    for name, got, want in failed:
        print(f"self-test FAILED: {name}")
        sys.stdout.writelines(difflib.unified_diff(
            (want + "\n").splitlines(True), (got + "\n").splitlines(True), "expected", "got"))
        print()
    if failed:
        return 1
    print("self-test ok")
    return 0

# ---------------------------------------------------------------- response bodies


def wav_header(n):
    data = n - 44
    return (b"RIFF" + struct.pack("<I", min(n - 8, 0xFFFFFFFF)) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 6, 1, 8000, 8000, 1, 8)
            + b"data" + struct.pack("<I", min(data, 0xFFFFFFFF)))


def prng(seed, n):
    """n deterministic pseudo-random bytes, in BLOCK-sized pieces."""
    rnd = random.Random(seed)
    while n > 0:
        piece = rnd.randbytes(min(BLOCK, n))
        n -= len(piece)
        yield piece


def wav_pieces(n):
    yield wav_header(n)
    yield from prng(f"wav-{n}", n - 44)


def unknown_pieces(n):
    yield b"ID3"
    yield from prng(f"unknown-{n}", n - 3)


def wav_bytes(n):
    return b"".join(wav_pieces(n))


@lru_cache(maxsize=8)
def zip_bytes(k):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(1, k + 1):
            info = zipfile.ZipInfo(f"rec_{i}.wav", date_time=(2024, 10, 31, 14, 6, 52))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            zf.writestr(info, wav_bytes(10000 + i))
    return buf.getvalue()


def zip_of(members):
    """A ZIP of (name, bytes, unix mode) members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 10, 31, 14, 6, 52))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, mode << 16
            if mode & 0o170000 == 0o040000:
                info.external_attr |= 0x10  # MS-DOS directory bit
            zf.writestr(info, data)
    return buf.getvalue()


def zip64_declaring(name, data, declared):
    """A one-member ZIP (stored, zip64 extras) whose member lies about its size."""
    crc = zlib.crc32(data)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF,
                        0xFFFFFFFF, len(name), 20) + name + \
        struct.pack("<HHQQ", 1, 16, declared, len(data)) + data
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc,
                          0xFFFFFFFF, 0xFFFFFFFF, len(name), 28, 0, 0, 0, 0o100644 << 16,
                          0xFFFFFFFF) + name + struct.pack("<HHQQQ", 1, 24, declared,
                                                           len(data), 0)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + end


def zip32_declaring(name, data, declared):
    """A one-member ZIP (stored, no zip64) whose member lies about its size (< 4 GiB)."""
    crc = zlib.crc32(data)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, len(data), declared,
                        len(name), 0) + name + data
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, crc, len(data),
                          declared, len(name), 0, 0, 0, 0, 0o100644 << 16, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + end


@lru_cache(maxsize=2)
def zipbig_bytes(m):
    """ZIP (deflated) of big_1.wav..big_4.wav, each a WAV header and zeros, m MiB each."""
    size, zeros = m << 20, bytes(1 << 20)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(1, 5):
            info = zipfile.ZipInfo(f"big_{i}.wav", date_time=(2024, 10, 31, 14, 6, 52))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            with zf.open(info, "w") as dest:
                dest.write(wav_header(size))
                left = size - 44
                while left > 0:
                    left -= dest.write(zeros[:left])
    return buf.getvalue()


@lru_cache(maxsize=1)
def gzip_wav(n):
    """The gzip (deterministic header) of the bytes of wav-n."""
    comp, out = zlib.compressobj(6, zlib.DEFLATED, 31), []
    for piece in wav_pieces(n):
        out.append(comp.compress(piece))
    out.append(comp.flush())
    return b"".join(out)


@lru_cache(maxsize=16)
def special_zip(name):
    """Archives for the unzip tests: zip-dirs is good, zipbad-* must be refused."""
    good = [("rec_1.wav", wav_bytes(10001), 0o100644)]
    if name == "zip-dirs":
        return zip_of([("day1/", b"", 0o040755), ("day1/rec_1.wav", wav_bytes(10001), 0o100644),
                       ("day1/rec_2.wav", wav_bytes(10002), 0o100644)])
    if name == "zipbad-slip":
        return zip_of(good + [("../evil.wav", b"RIFF evil", 0o100644)])
    if name == "zipbad-abs":
        return zip_of(good + [("/tmp/cmsrec-evil.wav", b"RIFF evil", 0o100644)])
    if name == "zipbad-symlink":
        return zip_of(good + [("link.wav", b"/etc/passwd", 0o120777)])
    if name == "zipbad-crc":  # a flipped byte inside the second member's data
        data = bytearray(zip_of(good + [("rec_2.wav", wav_bytes(10002), 0o100644)]))
        second = data.index(b"rec_2.wav", 30) + len("rec_2.wav") + 200
        data[second] ^= 0xFF
        return bytes(data)
    if name == "zipbad-hugesize":  # a zip64 member declaring 2**64 - 500 bytes
        return zip64_declaring(b"b.wav", b"RIFF", (1 << 64) - 500)
    if name == "zipbad-trunc":
        data = zip_of(good + [("rec_2.wav", wav_bytes(10002), 0o100644)])
        return data[: len(data) // 2]
    if name == "zipbad-c1name":  # a C1 CSI in a member name (stored as UTF-8)
        return zip_of(good + [("a\u009b31mb", b"RIFF c1", 0o100644)])
    if name == "zipbad-filedir":  # a file and then a directory of the same name
        return zip_of(good + [("a", b"RIFF file a", 0o100644), ("a/", b"", 0o040755)])
    if name == "zipbad-declared":  # 4 bytes declared as 3 GiB (stored, no zip64)
        return zip32_declaring(b"b.wav", b"RIFF", 3 << 30)
    kind, _, arg = name.partition("-")
    if kind == "zipbig" and arg.isascii() and arg.isdigit() and 1 <= int(arg) <= ZIPBIG_MB:
        return zipbig_bytes(int(arg))
    return None


def success_body(cid):
    """(size, content type, pieces factory) of the success body of cid, or None."""
    if re.fullmatch(r"\d+-\d+", cid, re.ASCII):
        return 160044, "application/octet-stream", lambda: wav_pieces(160044)
    if re.match(r"[./ ]*odd", cid):  # any name: for file-name safety tests
        return 1000, "application/octet-stream", lambda: wav_pieces(1000)
    special = special_zip(cid) if cid.startswith(("zip-dirs", "zipbad-", "zipbig-")) else None
    if special is not None:
        return len(special), "application/zip", lambda: iter([special])
    wrapped = RETRY_RE.fullmatch(cid) or DELAY_RE.fullmatch(cid)
    if wrapped:  # retry-K-H-N, delay-MS-N: the bytes of wav-N in the end
        n = int(wrapped.groups()[-1])
        return (n, "application/octet-stream", lambda: wav_pieces(n)) \
            if 44 <= n <= MAX_BODY else None
    kind, _, arg = cid.partition("-")
    if not (arg.isascii() and arg.isdigit()):
        return None
    n = int(arg)
    if kind in ("wav", "chunked", "drop") and 44 <= n <= MAX_BODY \
            or kind in ("gzipwav", "extra") and 44 <= n <= MAX_SMALL:  # gzipwav: decoded
        return n, "application/octet-stream", lambda: wav_pieces(n)
    if kind == "unknown" and 3 <= n <= MAX_BODY:
        return n, "application/octet-stream", lambda: unknown_pieces(n)
    if kind == "zip" and 1 <= n <= 1000:
        return len(zip_bytes(n)), "application/zip", lambda: iter([zip_bytes(n)])
    return None

# ---------------------------------------------------------------- shared state


class State:
    def __init__(self, ak, sk, log_path):
        self.ak, self.sk, self.https_port = ak, sk, 0
        self.lock = threading.Lock()
        self.log_file = open(log_path, "a", encoding="utf-8", buffering=1)
        self.expect_cache = {}
        self.epoch = 0      # bumped by reset: max_open counts this epoch's connections only
        self.open = 0       # HTTPS-port connections open now, whatever their epoch
        self.reset()

    def reset(self):
        with self.lock:
            self.requests = self.connections = self.auth_failures = 0
            self.last = self.bigerror_sent = None
            self.extra_sent = 0
            self.latency_ms = 0
            self.https_connections = self.handshakes = self.resumed = 0
            self.epoch += 1
            self.open_epoch = self.max_open = 0
            self.request_times = collections.deque(maxlen=REQUEST_TIMES)
            self.per_call, self.per_call_times, self.attempts = {}, {}, {}
            # gateways
            self.tokens = {}  # token -> expiry (time.monotonic())
            self.tokens_issued = self.token_requests = self.waf_refused = 0
            self.token_ttl, self.token_mode, self.bearer_reject = TOKEN_TTL, "ok", False
            self.strict = StrictStats()

    def count_connection(self):
        with self.lock:
            self.connections += 1

    def open_https(self):
        """A connection accepted on the HTTPS port: its epoch, for close_https."""
        with self.lock:
            self.https_connections += 1
            self.open += 1
            self.open_epoch += 1
            self.max_open = max(self.max_open, self.open_epoch)
            return self.epoch

    def close_https(self, epoch):
        with self.lock:
            self.open -= 1
            if epoch == self.epoch:
                self.open_epoch -= 1

    def count_handshake(self, resumed):
        with self.lock:
            self.handshakes += 1
            self.resumed += bool(resumed)

    def attempt(self, cid):
        """The number of this answer for cid since the last reset (1 for the first)."""
        with self.lock:
            n = self.attempts[cid] = self.attempts.get(cid, 0) + 1
            return n

    def record(self, handler, body, cid, err, canon, checked=True):
        last = {"method": handler.command, "path": handler.target,
                "headers": {}, "body": body.decode("utf-8", "replace"),
                "auth_ok": checked and err is None, "auth_error": err,
                "callID": cid, "canonical_request": canon,
                "scheme": getattr(handler, "_scheme", None)}
        for name, value in handler.headers.items():
            name = name.lower()
            last["headers"][name] = (last["headers"][name] + ", " + value
                                     if name in last["headers"] else value)
        with self.lock:
            self.requests += 1
            self.auth_failures += checked and err is not None
            self.last = last
            self.request_times.append(handler.received)
            if cid is not None:
                self.per_call[cid] = self.per_call.get(cid, 0) + 1
                times = self.per_call_times.setdefault(cid, [])
                times.append(handler.received)
                del times[:-PER_CALL_TIMES]

    def snapshot(self):
        with self.lock:
            return {"requests": self.requests, "connections": self.connections,
                    "auth_failures": self.auth_failures, "last": self.last,
                    "bigerror_sent": self.bigerror_sent, "extra_sent": self.extra_sent,
                    "latency_ms": self.latency_ms,
                    "https_connections": self.https_connections,
                    "handshakes": self.handshakes, "resumed": self.resumed,
                    "open": self.open, "max_open": self.max_open,
                    # sorted: taken on arrival, appended when recorded (threads race)
                    "request_times": sorted(self.request_times),
                    "per_call": dict(self.per_call),
                    "per_call_times": {k: sorted(v) for k, v in self.per_call_times.items()},
                    "tokens_issued": self.tokens_issued, "token_requests": self.token_requests,
                    "waf_refused": self.waf_refused, **self.strict.snapshot()}

    def settings(self):
        with self.lock:
            return {"latency_ms": self.latency_ms, "token_ttl": self.token_ttl,
                    "token_mode": self.token_mode, "bearer_reject": self.bearer_reject}

    # -- gateways: bearer tokens

    def issue_token(self):
        """A new token and its lifetime in seconds."""
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = time.monotonic() + self.token_ttl
            self.tokens_issued += 1
            return token, self.token_ttl

    def token_problem(self, token):
        """Why `token` is refused, or None."""
        with self.lock:
            expiry = self.tokens.get(token)
            if expiry is None:
                return "unknown or revoked token"
            if time.monotonic() >= expiry:
                return "expired token"
            if self.bearer_reject:
                return f"token {token} is not allowed to call this API"
        return None

    def log(self, line):
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        line = ascii(line)[1:-1]  # one line, printable
        with self.lock:
            if not self.log_file.closed:
                self.log_file.write(f"{stamp}Z {line}\n")

    def expect(self, cid):
        if cid in self.expect_cache:
            return self.expect_cache[cid]
        body = success_body(cid)
        if body is None:
            return None
        digest = hashlib.sha256()
        for piece in body[2]():
            digest.update(piece)
        ans = self.expect_cache[cid] = {"size": body[0], "sha256": digest.hexdigest()}
        return ans

# ---------------------------------------------------------------- strict request checks
#
# Every request but the control ones is checked as it arrives, before the
# handler runs: the exact request line, the header lines as received (raw
# bytes, so that nothing http.server folds or drops goes unseen), the body and
# the signature. A request that breaks a rule counts as `malformed` in
# /_mock/stats, with the reason of the last one; so does one that http.server
# refuses itself (send_error before any handler: a bad request line, a header
# line over 64 KiB, more than 100 headers, an unknown method). The specs that
# feed cmsrec malformed input (spec/corpus_spec.lua) assert malformed == 0.

STRICT_LINE_RE = re.compile(rb"POST (/[!-~]*) HTTP/1\.1\r\n")  # origin-form, visible ASCII
TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")           # RFC 9110 token
CTL_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")                 # CTLs but HTAB
DIGITS_RE = re.compile(r"[0-9]+", re.ASCII)
STRICT_ONCE = ("host", "content-type", "content-length", "authorization")
BODY_FIELDS = ["callID", "workNo", "beginTime", "callerNo", "calleeNo"]
BODY_FIELD_MAX = 256       # bytes of a value (cms_request.h)
STRICT_MAX_HEADERS = 100   # http.client's limit; the 101st line makes it refuse
STRICT_MAX_LINE = 65536    # same for a line's length
STRICT_MAX_BODIES = 100000  # distinct bodies remembered for /_mock/strict


class _JsonObject(list):
    """A JSON object as its (key, value) pairs, duplicates and order kept."""


class _Replay:
    """The body the checks read, read again by the handler, then the socket."""

    def __init__(self, data, rest):
        self.buf, self.rest = io.BytesIO(data), rest

    def read(self, n=-1):
        got = self.buf.read(n)
        if n is None or n < 0:
            return got + self.rest.read()
        return got if len(got) == n else got + self.rest.read(n - len(got))

    def readline(self, limit=-1):
        line = self.buf.readline(limit)
        if line.endswith(b"\n") or 0 <= limit <= len(line):
            return line
        return line + self.rest.readline(-1 if limit < 0 else limit - len(line))

    def __getattr__(self, name):  # close() and the rest: the socket's
        return getattr(self.rest, name)


class StrictStats:
    """What the checks saw since the last reset."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = self.malformed = 0
        self.reason = None
        self.bodies = collections.Counter()  # the five values joined by \x1f

    def saw(self, problem, values=None):
        with self.lock:
            self.seen += 1
            if problem:
                self.malformed += 1
                self.reason = problem
            if values is not None and (values in self.bodies
                                       or len(self.bodies) < STRICT_MAX_BODIES):
                self.bodies[values] += 1

    def snapshot(self):
        with self.lock:
            return {"strict_seen": self.seen, "malformed": self.malformed,
                    "malformed_reason": self.reason}

    def details(self):
        with self.lock:
            return {"seen": self.seen, "malformed": self.malformed, "reason": self.reason,
                    "bodies": dict(self.bodies)}


def strict_head_problem(line, lines, end, port):
    """The first rule the request line and header lines break, or None."""
    m = STRICT_LINE_RE.fullmatch(line)
    if not m:
        return f"request line {line[:100]!r} is not exactly 'POST <path> HTTP/1.1' CRLF"
    if b"?" in m.group(1) or b"#" in m.group(1):
        return "the request target has a query or a fragment"
    if end != b"\r\n":
        return f"the header block ends with {end!r}, not an empty line"
    counts, values = collections.Counter(), {}
    for raw in lines:
        if not raw.endswith(b"\r\n"):
            return f"header line {raw[:60]!r} does not end with CRLF"
        if raw[:1] in (b" ", b"\t"):
            return f"obs-fold: header line {raw[:60]!r} continues the previous one"
        name, colon, value = raw[:-2].partition(b":")
        if not colon or not TOKEN_RE.fullmatch(name):
            return f"header name {name[:60]!r} is not a token"
        if CTL_RE.search(value):
            return f"header {name[:60].decode()} has a control character: {value[:60]!r}"
        counts[name.lower()] += 1
        values[name.lower()] = value.strip(b" \t")
    for name in STRICT_ONCE:
        if counts[name.encode()] != 1:
            return f"{counts[name.encode()]} {name} headers, want exactly one"
    if counts[b"transfer-encoding"]:
        return "a Transfer-Encoding header"
    if not DIGITS_RE.fullmatch(values[b"content-length"].decode("latin-1")):
        return f"Content-Length {values[b'content-length'][:30]!r} is not a number"
    if values[b"host"].rpartition(b":")[2] != str(port).encode():
        return f"Host {values[b'host'][:60]!r} does not name this server's port"
    if values[b"content-type"] != JSON_CT.encode():
        return f"Content-Type {values[b'content-type'][:60]!r}"
    return None


def strict_datetime(s):
    if len(s) != 14 or not DIGITS_RE.fullmatch(s) or int(s[:4]) < 1970:
        return False
    try:
        datetime.datetime.strptime(s, "%Y%m%d%H%M%S")
    except ValueError:
        return False
    return True


def strict_body_problem(body):
    """(the first rule the body breaks or None, its values joined by \\x1f or None)."""
    try:
        obj = json.loads(body.decode("utf-8"), object_pairs_hook=_JsonObject,
                         parse_constant=lambda c: None)
    except ValueError:  # UnicodeDecodeError too
        return "the body is not JSON in UTF-8", None
    if not isinstance(obj, _JsonObject):
        return "the body is not a JSON object", None
    if [k for k, _ in obj] != BODY_FIELDS:
        return f"the body's fields are {[k for k, _ in obj][:8]!r}, want {BODY_FIELDS}", None
    vals = [v for _, v in obj]
    for name, v in obj:
        if not isinstance(v, str):
            return f"{name} is a {type(v).__name__}, not a string", None
        try:
            size = len(v.encode("utf-8"))
        except UnicodeEncodeError:
            return f"{name} has a lone surrogate", None
        if size > BODY_FIELD_MAX:
            return f"{name} is {size} bytes long", None
        if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in v):
            return f"{name} has a control character: {v[:40]!r}", None
    if not vals[0]:
        return "callID is empty", None
    if vals[2] and not strict_datetime(vals[2]):
        return f"beginTime {vals[2][:20]!r} is not a real yyyyMMddHHmmss", None
    return None, "\x1f".join(vals)


def gateway_path(target):
    """The token endpoint and echo paths: not downloadRecordFile, so not strict-checked."""
    path = target.split(b"?", 1)[0]
    return path == TOKEN_PATH.encode() or (b"/rest/" in path and not path.endswith(API_SUFFIX.encode()))


class StrictChecks:
    """Mixed into Handler: the checks run in parse_request (see above)."""

    def _strict_read_head(self):
        """The header lines as received, read as http.client would read them."""
        lines, end = [], b""
        while len(lines) <= STRICT_MAX_HEADERS:
            raw = self.rfile.readline(STRICT_MAX_LINE + 1)
            if raw in (b"\r\n", b"\n", b""):
                end = raw
                break
            lines.append(raw)
            if len(raw) > STRICT_MAX_LINE:
                break
        return lines, end

    def parse_request(self):
        if isinstance(self.rfile, _Replay):  # the last request's body was read
            self.rfile = self.rfile.rest
        self._strict_line, self._strict_counted = self.raw_requestline, False
        words = self.raw_requestline.split()
        if len(words) != 3:  # no header block to read: http.server refuses it
            return super().parse_request()
        lines, end = self._strict_read_head()
        real, self.rfile = self.rfile, io.BytesIO(b"".join(lines) + end)
        try:
            ok = super().parse_request()  # refusing, it calls send_error (counted there)
        finally:
            self.rfile = real
        if ok and not words[1].startswith(b"/_mock/") and not gateway_path(words[1]):
            self._strict_counted = True
            self.server.state.strict.saw(*self._strict_problem(lines, end))
        return ok

    def _strict_problem(self, lines, end):
        self.target = self.requestline.split()[1]  # what _verify signs (do_GET sets it too)
        problem = strict_head_problem(self.raw_requestline, lines, end,
                                      self.server.server_address[1])
        length = self.headers.get("Content-Length", "").strip()
        if not (DIGITS_RE.fullmatch(length) and int(length) <= MAX_REQUEST) \
                or "Transfer-Encoding" in self.headers:
            return problem or "no usable Content-Length", None
        body = self.rfile.read(int(length))
        self.rfile = _Replay(body, self.rfile)  # the handler reads it again
        if len(body) != int(length):
            return problem or "the body is shorter than its Content-Length", None
        body_problem, values = strict_body_problem(body)
        if not (problem or body_problem):
            sig_error = self._verify(body)[0]
            problem = sig_error and f"the signature does not verify: {sig_error}"
        return problem or body_problem, values

    def send_error(self, code, message=None, explain=None):
        """http.server refuses a request (a request line over 64 KiB, before
        parse_request; a bad request line or header block, in it; an unknown
        method, after it): counted once."""
        if getattr(self, "_strict_line", None) is not self.raw_requestline \
                or not self._strict_counted:
            self._strict_line, self._strict_counted = self.raw_requestline, True
            self.server.state.strict.saw(f"refused by http.server: HTTP {int(code)} {message}")
        super().send_error(code, message, explain)


# ---------------------------------------------------------------- HTTP


class MockServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # listen backlog: bursts of 64+ parallel connects

    def __init__(self, state, scheme, ssl_ctx=None, main=False, waf=False):
        """main: the HTTPS port, whose connections and handshakes are counted;
        waf: the WAF port (418 without the right SNI)."""
        self.state, self.scheme, self.ssl_ctx, self.main = state, scheme, ssl_ctx, main
        self.waf = waf
        super().__init__(("127.0.0.1", 0), Handler)

    def server_bind(self):  # skip HTTPServer's slow getfqdn() lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self):
        sock, addr = super().get_request()
        # before the handshake: a small write must not wait for a delayed ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.state.count_connection()
        if self.ssl_ctx:  # TLS handshake happens later, in the handler thread
            sock = self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        if self.main:
            sock.mock_epoch = self.state.open_https()
        return sock, addr

    def shutdown_request(self, request):
        """Called once per accepted connection, however its handler ended."""
        try:
            super().shutdown_request(request)
        finally:
            epoch = request.__dict__.pop("mock_epoch", None)
            if epoch is not None:
                self.state.close_https(epoch)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        self.state.log(f"{self.scheme} connection {client_address[0]}:{client_address[1]} "
                       f"error: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- fault suite modes
# Answers for spec/fault_spec.lua (see "fault suite" in the docstring): malformed
# HTTP written as raw bytes on the connection, and raw TCP ports that fail before
# any HTTP. Kept in this block so that other additions to the mock merge cleanly.

FAULT_RE = re.compile(r"fault-([a-z0-9]+)(?:-(\d+))?", re.ASCII)
FAULT_HUGE = 5 << 20       # bytes of the fault-hugejson-C body
FAULT_MANY = 3000          # headers of fault-manyheaders


def fault_hugejson():
    head = b'{"resultCode":"1","resultDesc":"Record List is empty","resultData":"'
    return head + b"x" * (FAULT_HUGE - len(head) - 2) + b'"}'


class FaultMixin:
    """Handler methods of the fault-* modes."""

    def _fault(self, cid):
        m = FAULT_RE.fullmatch(cid)
        name, n = (m.group(1), int(m.group(2) or 0)) if m else ("", 0)
        sized = ("midchunk", "long", "short", "badhex", "noend", "chunklong", "http10",
                 "http10cut", "http10drop", "continue", "early", "dupcl", "clist", "dupct")
        if name in sized and not 44 <= n <= MAX_SMALL:
            return self._reply(*FIXED["notfound"])
        self._note = f" (fault: {name})"
        how = getattr(self, "_fault_" + name, None)
        if how is None or (name == "hugejson" and n not in (200, 500)) \
                or (name == "redirect" and n not in (301, 302, 303, 307, 308)):
            return self._reply(*FIXED["notfound"])
        try:
            return how(n)
        except OSError as exc:  # the client hung up: expected for most of these
            self.close_connection = True
            self._note += f" (client hung up: {type(exc).__name__})"
            return None

    def _raw(self, data):
        self.wfile.write(data)
        self.wfile.flush()

    def _clean_close(self):
        """End the connection as a server that means to: TLS close_notify, then FIN."""
        self.close_connection = True
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(2)
            try:
                self.connection.unwrap()
            except (OSError, ValueError):
                pass
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _head(self, status_line, headers):
        self._status = int(status_line.split()[1]) if status_line.split()[1].isdigit() else "-"
        lines = [status_line] + [f"{k}: {v}" for k, v in headers]
        self._raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _fault_nostatus(self, n):
        return self._abort()

    def _fault_midheaders(self, n):
        self._raw(b"HTTP/1.1 200 OK\r\nContent-Ty")
        time.sleep(0.1)
        return self._abort()

    def _fault_midchunk(self, n):
        self._head("HTTP/1.1 200 OK", [("Content-Type", "application/octet-stream"),
                                       ("Transfer-Encoding", "chunked")])
        data = wav_bytes(n)[:CHUNK]
        self._raw(b"%x\r\n" % CHUNK + data[:len(data) // 2])
        time.sleep(0.1)
        return self._abort()

    def _fault_long(self, n):
        self._head("HTTP/1.1 200 OK", [("Content-Type", "application/octet-stream"),
                                       ("Content-Length", n)])
        extra = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nNOT-YOUR-ANSWER-...."
        self._raw(wav_bytes(n) + extra + b"." * (64 - len(extra)))

    def _fault_short(self, n):
        self._head("HTTP/1.1 200 OK", [("Content-Type", "application/octet-stream"),
                                       ("Content-Length", n)])
        self._raw(wav_bytes(n)[:n // 2])
        return self._clean_close()

    def _chunked_head(self):
        self._head("HTTP/1.1 200 OK", [("Content-Type", "application/octet-stream"),
                                       ("Transfer-Encoding", "chunked")])

    def _fault_badhex(self, n):
        self._chunked_head()
        data = wav_bytes(n)
        self._raw(b"%x\r\n%s\r\nzz\r\n%s\r\n0\r\n\r\n" % (n // 2, data[:n // 2], data[n // 2:]))

    def _fault_noend(self, n):
        self._chunked_head()
        data = wav_bytes(n)
        for i in range(0, n, CHUNK):
            piece = data[i:i + CHUNK]
            self._raw(b"%x\r\n%s\r\n" % (len(piece), piece))
        return self._clean_close()

    def _fault_chunklong(self, n):
        self._chunked_head()
        self._raw(b"2c\r\n%s\r\n0\r\n\r\n" % wav_bytes(n)[:100])

    def _fault_hugejson(self, code):
        body = fault_hugejson()
        self._head(f"HTTP/1.1 {code} {'OK' if code == 200 else 'Internal Server Error'}",
                   [("Content-Type", JSON_CT), ("Content-Length", len(body))])
        for i in range(0, len(body), BLOCK):
            self.wfile.write(body[i:i + BLOCK])
        self.wfile.flush()

    def _fault_jsonstring(self, n):
        self._reply(200, b'"Record List is empty"', JSON_CT)

    def _fault_jsonnumber(self, n):
        self._reply(200, b"1", JSON_CT)

    def _http10(self, n, cut, clean):
        self._head("HTTP/1.0 200 OK", [("Content-Type", "application/octet-stream")])
        data = wav_bytes(n)
        self._raw(data[:n // 2] if cut else data)
        return self._clean_close() if clean else self._abort()

    def _fault_http10(self, n):
        return self._http10(n, False, True)

    def _fault_http10cut(self, n):
        return self._http10(n, True, True)

    def _fault_http10drop(self, n):
        return self._http10(n, True, False)

    def _fault_continue(self, n):
        self._raw(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._stream(n, "application/octet-stream", wav_pieces(n))

    def _fault_early(self, n):
        self._raw(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        self._stream(n, "application/octet-stream", wav_pieces(n))

    def _fault_dupcl(self, n):
        self._head("HTTP/1.1 200 OK", [("Content-Type", "application/octet-stream"),
                                       ("Content-Length", n + 10), ("Content-Length", n - 10)])
        self._raw(wav_bytes(n))
        return self._clean_close()

    def _fault_clist(self, n):
        self._head("HTTP/1.1 200 OK", [("Content-Type", "application/octet-stream"),
                                       ("Content-Length", f"{n - 10}, {n}")])
        self._raw(wav_bytes(n))
        return self._clean_close()

    def _fault_redirect(self, code):
        where = f"https://127.0.0.1:{self.server.state.https_port}{API_SUFFIX}?redirected=1"
        self._reply(code, {"error": f"mock {code}"}, headers={"Location": where})

    def _fault_control(self):
        """GET /_mock/fault?NAME=K: arm the raw fault ports (see the docstring)."""
        ports = self.server.fault_ports
        query = parse_qs(self.target.partition("?")[2], keep_blank_values=True)
        for name, values in query.items():
            if name not in ports.armed or not values[-1].isdigit():
                return self._reply(400, {"error": f"want NAME=K, NAME in {sorted(ports.armed)}"})
            ports.arm(name, int(values[-1]))
        return self._reply(200, ports.counts())

    def _fault_dupct(self, n):
        self._head("HTTP/1.1 200 OK", [("Content-Type", "text/plain"),
                                       ("Content-Type", "application/octet-stream"),
                                       ("Content-Length", n)])
        self._raw(wav_bytes(n))

    def _fault_manyheaders(self, n):
        headers = [("Content-Type", "text/plain"), ("Content-Length", len(NOTFOUND))]
        headers += [(f"X-Many-{i}", "v" * 24) for i in range(FAULT_MANY)]
        self._head("HTTP/1.1 200 OK", headers)
        self._raw(NOTFOUND)

    def _fault_badstatus(self, n):
        self._raw(b"HTTP/1.1 2x0 Banana\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(NOTFOUND), NOTFOUND))
        return self._clean_close()

    def _fault_garbage(self, n):
        self._raw(b"SSH-2.0-OpenSSH_9.2\r\n\x00\x01\x02 not http at all\r\n")
        return self._clean_close()


def fault_pipe(src, dst):
    """Copy src to dst until EOF or an error, then end dst's sending side."""
    try:
        while True:
            data = src.recv(BLOCK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class FaultPorts:
    """The raw TCP ports of the fault suite: armed ones fail, others forward to
    the HTTPS port."""

    def __init__(self):
        self.lock = threading.Lock()
        self.https_port = 0
        self.armed = {"refused": 1, "hang": 0, "cut": 0, "halfhello": 0}
        self.held = []   # hang's connections: open until exit
        self.socks = {}
        refused = socket.socket()
        refused.bind(("127.0.0.1", 0))  # bound, not listening: connecting is refused
        self.socks["refused"] = refused
        for name in ("hang", "cut", "halfhello"):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            self.socks[name] = sock
            self._serve(name)

    def ports(self):
        return {f"{name}_port": sock.getsockname()[1] for name, sock in self.socks.items()}

    def counts(self):
        with self.lock:
            return dict(self.armed)

    def arm(self, name, k):
        with self.lock:
            was, self.armed[name] = self.armed[name], k
        if name == "refused" and was and not k:  # start listening (for good)
            self.socks["refused"].listen(16)
            self._serve("refused")

    def close(self):
        for sock in [*self.socks.values(), *self.held]:
            sock.close()

    def _serve(self, name):
        sock = self.socks[name]

        def loop():
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return  # closed at exit
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with self.lock:
                    fail = name != "refused" and self.armed[name] > 0
                    if fail:
                        self.armed[name] -= 1
                how = getattr(self, "_" + name) if fail else self._forward
                threading.Thread(target=how, args=(conn,), daemon=True).start()
        threading.Thread(target=loop, daemon=True).start()

    def _hang(self, conn):
        with self.lock:
            self.held.append(conn)

    def _cut(self, conn):
        conn.close()

    def _halfhello(self, conn):
        try:
            conn.settimeout(5)
            conn.recv(4096)  # the ClientHello
            conn.sendall(b"\x16\x03\x03\x00\x40\x02\x00\x00\x3c\x03")  # 10 of 69 bytes
        except OSError:
            pass
        conn.close()

    def _forward(self, conn):
        try:
            up = socket.create_connection(("127.0.0.1", self.https_port), timeout=5)
            up.settimeout(None)
        except OSError:
            return conn.close()
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=fault_pipe, args=(up, conn), daemon=True)
        back.start()
        fault_pipe(conn, up)
        back.join()
        conn.close()
        up.close()

# ---------------------------------------------------------------- end of fault suite modes


def json_or_none(body):
    """The JSON value of a request body, or None when it does not parse."""
    try:
        return json.loads(body)
    except ValueError:
        return None


class Handler(StrictChecks, FaultMixin, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MockCMS/1.0"
    timeout = 60  # idle keep-alive / slow request bodies
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()
            if self.server.main:
                self.server.state.count_handshake(self.connection.session_reused)

    def log_request(self, code="-", size="-"):
        self._status = int(code) if isinstance(code, int) else code

    def log_message(self, fmt, *args):
        self.server.state.log(f"{self.server.scheme} {fmt % args}")

    def do_GET(self):
        self.received = time.monotonic()
        self._status, self._cid, self._note, self._body_read = "-", None, "", False
        self._scheme = None
        # self.path has leading "//" collapsed by http.server: use the raw request target
        self.target = self.requestline.split()[1]
        path = self.target.split("?", 1)[0]
        try:
            control, latency = path.startswith("/_mock/"), self.server.state.latency_ms
            if latency and not control:  # the server's "processing time"
                time.sleep(latency / 1000)
            if control:
                self._control(path)
            elif self._gateway(path):  # the WAF, the token endpoint, echo paths
                pass
            elif not path.endswith(API_SUFFIX):
                self._reply(404, {"error": "not found"})
            elif self.command != "POST":
                self._reply(405, {"error": "method not allowed"}, headers={"Allow": "POST"})
            else:
                self._api(path)
        except OSError as exc:  # includes ssl.SSLError, BrokenPipeError, TimeoutError
            self.close_connection = True
            self._note = f" ({type(exc).__name__}: {exc})"
        finally:
            cid = "-" if self._cid is None else json.dumps(self._cid)
            self.server.state.log(f"{self.server.scheme} {self.command} {self.target} "
                                  f"callID={cid} status={self._status}{self._note}")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    # -- helpers

    def _reply(self, code, body=b"", ctype=JSON_CT, headers=None, close=False):
        if isinstance(body, dict):
            body = json.dumps(body, separators=(",", ":")).encode()
        if not self._body_read and ("Transfer-Encoding" in self.headers
                                    or self.headers.get("Content-Length", "0").strip() != "0"):
            close = True  # unread request body: the connection cannot be reused
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, size, ctype, pieces, chunked=False, limit=None, code=200):
        """Send a body given as an iterable of bytes; stop after limit bytes if set."""
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        sent, pending = 0, b""
        for piece in pieces:
            if limit is not None:
                piece = piece[:limit - sent]
            sent += len(piece)
            if not chunked:
                self.wfile.write(piece)
            else:  # re-cut the pieces into CHUNK-sized chunks
                pending += piece
                while len(pending) >= CHUNK:
                    self.wfile.write(b"%x\r\n%s\r\n" % (CHUNK, pending[:CHUNK]))
                    pending = pending[CHUNK:]
            if limit is not None and sent >= limit:
                break
        if chunked:
            if pending:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(pending), pending))
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _trickle(self, code, seconds, headers=None):
        """The notfound answer padded with JSON whitespace after its '{', written in
        pieces TRICKLE_STEP apart over seconds; stop quietly if the client hangs up."""
        steps = max(1, round(seconds / TRICKLE_STEP))
        pieces = [b"{" + b" " * 15] + [b" " * 16] * (steps - 1) + [NOTFOUND[1:]]
        start = time.monotonic()
        try:
            self.send_response(code)
            self.send_header("Content-Type", JSON_CT)
            self.send_header("Content-Length", str(sum(map(len, pieces))))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            for i, piece in enumerate(pieces):
                time.sleep(max(0.0, start + i * seconds / steps - time.monotonic()))
                self.wfile.write(piece)
                self.wfile.flush()
        except OSError as exc:
            self.close_connection = True
            self._note = f" (client hung up: {type(exc).__name__})"

    def _trickle_bytes(self, data, seconds):
        """200 data (Content-Length) in pieces TRICKLE_STEP apart over seconds."""
        steps = max(1, round(seconds / TRICKLE_STEP))
        cuts = [len(data) * i // steps for i in range(steps + 1)]
        start = time.monotonic()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for i in range(steps):
                time.sleep(max(0.0, start + i * seconds / steps - time.monotonic()))
                self.wfile.write(data[cuts[i]:cuts[i + 1]])
                self.wfile.flush()
        except OSError as exc:
            self.close_connection = True
            self._note = f" (client hung up: {type(exc).__name__})"

    def _abort(self):
        """Close the TCP connection without a clean TLS/HTTP ending."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.connection.close()

    # -- control endpoints

    def _control(self, path):
        state = self.server.state
        if self.command != "GET":
            return self._reply(405, {"error": "method not allowed"}, headers={"Allow": "GET"})
        if path == "/_mock/stats":
            return self._reply(200, state.snapshot())
        if path == "/_mock/tls":  # the TLS fault ports (see tls_control)
            return tls_control(self, state)
        if path == "/_mock/reset":
            state.reset()
            return self._reply(200, {"ok": True})
        if path == "/_mock/revoke":
            with state.lock:
                revoked, state.tokens = len(state.tokens), {}
            return self._reply(200, {"revoked": revoked})
        if path == "/_mock/set":
            query = parse_qs(self.target.partition("?")[2], keep_blank_values=True)
            unknown = sorted(set(query) - {"latency_ms", "token_ttl", "token_mode", "bearer_reject"})
            if unknown:
                return self._reply(400, {"error": "unknown setting: " + ", ".join(unknown)})
            if "latency_ms" in query:
                value = query["latency_ms"][-1]
                if not NUM_RE.fullmatch(value) or float(value) > MAX_LATENCY_MS:
                    return self._reply(400, {"error": f"latency_ms: want 0..{MAX_LATENCY_MS}"})
                with state.lock:
                    state.latency_ms = int(value) if value.isdigit() else float(value)
            problem = self._gateway_settings(query)
            if problem:
                return self._reply(400, {"error": problem})
            return self._reply(200, state.settings())
        if path == "/_mock/strict":
            return self._reply(200, state.strict.details())
        if path == "/_mock/fault":  # the fault suite's raw ports (FaultMixin)
            return self._fault_control()
        if path == "/_mock/expect":
            query = parse_qs(self.target.partition("?")[2], keep_blank_values=True)
            self._cid = query.get("callID", [""])[0]
            ans = state.expect(self._cid)
            if ans is None:
                return self._reply(404, {"error": "no success body for this callID"})
            return self._reply(200, ans)
        return self._reply(404, {"error": "not found"})

    # -- gateways: schemes, the token endpoint, the WAF, echo paths

    def _verify(self, body):
        """Check Authorization by the scheme it names: (error or None, canonical request)."""
        auth = self.headers.get_all("Authorization") or []
        first = auth[0].strip() if len(auth) == 1 else ""
        if first.startswith("SDK-HMAC-SHA256 "):
            self._scheme = "apig"
            return self._verify_apig(first, body)
        if first.startswith("Bearer "):
            self._scheme = "bearer"
            return self._verify_bearer(first)
        self._scheme = "auth-v2"
        return self._verify_v2(body)

    def _verify_apig(self, auth, body):
        state = self.server.state
        m = APIG_RE.fullmatch(auth)
        if not m:
            return "malformed SDK-HMAC-SHA256 Authorization header", None
        ak, signed, sig = m.groups()
        if ak != state.ak:
            return "unknown AK", None
        names = signed.split(";")
        if not all(HDR_RE.fullmatch(h) for h in names) or names != sorted(set(names)):
            return "bad SignedHeaders (want lowercase, sorted, unique)", None
        if "host" not in names or "x-sdk-date" not in names:
            return "SignedHeaders must include host and x-sdk-date", None
        values = {}
        for name in names:
            got = self.headers.get_all(name) or []
            if len(got) != 1:
                return f"signed header {'duplicate' if got else 'missing'}: {name}", None
            values[name] = got[0].encode("latin-1")  # the raw bytes received
        date = values["x-sdk-date"].decode("latin-1")
        try:
            if not SDK_DATE_RE.fullmatch(date):
                raise ValueError
            datetime.datetime.strptime(date, "%Y%m%dT%H%M%SZ")
        except ValueError:
            return "bad X-Sdk-Date", None
        raw_path, _, qs = self.target.partition("?")
        query = [(unquote_to_bytes(k), unquote_to_bytes(v))
                 for k, _, v in (p.partition("=") for p in qs.split("&") if p)]
        canon = apig_canonical(self.command, raw_path, query, names, values, body)
        want = apig_sign(state.sk, date, canon)[1]
        text = canon.decode("utf-8", "replace")
        if not hmac.compare_digest(want.encode(), sig.encode()):
            return "signature mismatch", text
        return None, text

    def _verify_bearer(self, auth):
        state = self.server.state
        if (self.headers.get_all("X-APP-Key") or []) != [state.ak]:
            return "missing or wrong X-APP-Key", None
        return state.token_problem(auth[len("Bearer "):].strip()), None

    def _gateway(self, path):
        """The WAF check, the token endpoint, the echo paths: True when handled here."""
        state = self.server.state
        if self.server.waf:
            sni = getattr(self.connection, "mock_sni", None)
            if sni != WAF_NAME:
                with state.lock:
                    state.waf_refused += 1
                self._note = f" (WAF: SNI {sni!r})"
                self._reply(418, {"error": "request blocked: connect by host name (SNI)"})
                return True
        if path == TOKEN_PATH or ("/rest/" in path and not path.endswith(API_SUFFIX)):
            if self.command != "POST":
                self._reply(405, {"error": "method not allowed"}, headers={"Allow": "POST"})
            elif path == TOKEN_PATH:
                self._token()
            else:
                self._echo()
            return True
        return False

    def _gateway_body(self):
        """The request body, or None (answered, or the connection closed)."""
        length = self.headers.get("Content-Length", "").strip()
        if "Transfer-Encoding" in self.headers or not (length.isascii() and length.isdigit()) \
                or int(length) > MAX_REQUEST:
            self._reply(411, {"error": "Content-Length (<= 1 MiB) required"}, close=True)
            return None
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            self.close_connection, self._note = True, " (request body truncated)"
            return None
        self._body_read = True
        return body

    def _token(self):
        state = self.server.state
        body = self._gateway_body()
        if body is None:
            return None
        obj = json_or_none(body)
        with state.lock:
            state.token_requests += 1
            mode = state.token_mode
        if mode == "503":
            return self._reply(503, {"error": "mock token 503"}, headers={"Retry-After": "1"})
        if not isinstance(obj, dict) or obj.get("app_key") != state.ak \
                or obj.get("app_secret") != state.sk:
            self._note = " (token: wrong app_key or app_secret)"
            return self._reply(401, {"error": "Unauthorized",
                                     "message": "Incorrect app_key or app_secret"})
        if mode == "noaccess":
            return self._reply(200, result("1", "the app is disabled"))
        token, ttl = state.issue_token()
        self._note = " (token issued)"
        return self._reply(200, {"AccessToken": token, "expiresIn": ttl})

    def _echo(self):
        state = self.server.state
        body = self._gateway_body()
        if body is None:
            return None
        obj = json_or_none(body)
        err, canon = self._verify(body)
        state.record(self, body, None, err, canon)
        if err:
            self._note = f" (auth: {err})"
            return self._reply(401, result("0100001", f"Authentication failed: {err}"))
        reply = str(obj.get("_reply")) if isinstance(obj, dict) else ""
        kind, _, arg = reply.partition("-")
        if reply == "array":
            return self._reply(200, b"[1,2,3]")
        if reply == "html":
            return self._reply(200, FIXED["html"][1], "text/html")
        if kind == "status" and arg.isdigit() and 200 <= int(arg) <= 599:
            return self._reply(int(arg), {"error": f"mock {arg}"})
        if kind == "big" and arg.isdigit() and int(arg) <= MAX_SMALL:
            return self._reply(200, {"resultCode": "0", "resultData": {"pad": "x" * int(arg)}})
        return self._reply(200, {"resultCode": "0", "resultDesc": "success",
                                 "resultData": {"echo": obj}})

    def _gateway_settings(self, query):
        """token_ttl, token_mode, bearer_reject from /_mock/set: an error, or None."""
        state = self.server.state
        ttl = query.get("token_ttl", [None])[-1]
        mode = query.get("token_mode", [None])[-1]
        reject = query.get("bearer_reject", [None])[-1]
        if ttl is not None and not (ttl.isascii() and ttl.isdigit() and 1 <= int(ttl) <= 86400):
            return "token_ttl: want 1..86400"
        if mode is not None and mode not in TOKEN_MODES:
            return "token_mode: want one of " + ", ".join(TOKEN_MODES)
        if reject is not None and reject not in ("0", "1"):
            return "bearer_reject: want 0 or 1"
        with state.lock:
            if ttl is not None:
                state.token_ttl = int(ttl)
            if mode is not None:
                state.token_mode = mode
            if reject is not None:
                state.bearer_reject = reject == "1"
        return None

    # -- the API

    def _api(self, path):
        state = self.server.state
        length = self.headers.get("Content-Length", "").strip()
        if "Transfer-Encoding" in self.headers or not length:
            code = 411
        elif not (length.isascii() and length.isdigit()):
            code = 400
        else:
            code = 413 if int(length) > MAX_REQUEST else None
        if code:
            state.record(self, b"", None, f"not checked (HTTP {code})", None, checked=False)
            return self._reply(code, {"error": "Content-Length (<= 1 MiB) required"}, close=True)
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            state.record(self, body, None, "not checked (body truncated)", None, checked=False)
            self.close_connection, self._note = True, " (request body truncated)"
            return
        self._body_read = True
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        cid = obj.get("callID") if isinstance(obj, dict) else None
        self._cid = cid if isinstance(cid, str) else None
        err, canon = self._verify(body)
        state.record(self, body, self._cid, err, canon)
        if err:
            self._note = f" (auth: {err})"
            return self._reply(401, result("0100001", f"Authentication failed: {err}"))
        if self._cid is None:
            return self._reply(200, result("0100003", "Parameter error: callID"))
        self._answer(self._cid, path)

    def _verify_v2(self, body):
        """Check the auth-v2 Authorization header: (error or None, canonical request)."""
        state = self.server.state
        auth = self.headers.get_all("Authorization") or []
        if len(auth) != 1:
            return ("duplicate" if auth else "missing") + " Authorization header", None
        parts = auth[0].strip().split("/")
        if len(parts) != 5 or parts[0] != "auth-v2":
            return "malformed Authorization header", None
        _, ak, stamp, signed, sig = parts
        if ak != state.ak:
            return "unknown AK", None
        try:
            if not TS_RE.fullmatch(stamp):
                raise ValueError
            datetime.datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            return "bad timestamp", None
        names = signed.split(";")
        if not all(HDR_RE.fullmatch(h) for h in names) or names != sorted(set(names)):
            return "bad SignedHeaders (want lowercase, sorted, unique)", None
        if "host" not in names:
            return "SignedHeaders must include host", None
        values = {}
        for name in names:
            got = self.headers.get_all(name) or []
            if len(got) != 1:
                return f"signed header {'duplicate' if got else 'missing'}: {name}", None
            values[name] = got[0].encode("latin-1")  # the raw bytes received
        if "content-length" in values and values["content-length"].strip() != b"%d" % len(body):
            return "content-length does not match the body", None
        raw_path, _, qs = self.target.partition("?")
        query = [(unquote_to_bytes(k), unquote_to_bytes(v))
                 for k, _, v in (p.partition("=") for p in qs.split("&") if p)]
        canon = canonical_request(self.command, raw_path, query, names, values, body)
        if not SIG_RE.fullmatch(sig):
            return "malformed signature (want 64 lowercase hex)", canon
        want = sign(state.ak, state.sk, stamp, signed, canon)[1]
        if not hmac.compare_digest(want.encode(), sig.encode()):
            return "signature mismatch", canon
        return None, canon

    def _answer(self, cid, path):
        kind, _, arg = cid.partition("-")
        if kind == "fault":  # the fault suite's raw answers (FaultMixin)
            return self._fault(cid)
        num = float(arg) if NUM_RE.fullmatch(arg) else None
        if cid in FIXED:
            return self._reply(*FIXED[cid])
        if cid == "auth-403":
            return self._reply(403, {
                "timestamp": "2024-10-31T14:06:52.000+00:00", "status": 403, "error": "Forbidden",
                "message": "IP locked after repeated authentication failures", "path": path})
        if cid == "bigerror":  # records how much was written before the client hung up
            sent = [0]

            def pieces():
                for _ in range(BIGERROR_MB):
                    yield b"x" * (1 << 20)
                    sent[0] += 1 << 20
            try:
                self._stream(BIGERROR_MB << 20, "text/plain", pieces(), code=500)
            except OSError:
                self.close_connection = True
            with self.server.state.lock:
                self.server.state.bigerror_sent = sent[0]
            return None
        if cid == "flow-retry":
            return self._reply(*FIXED["flow"], headers={"Retry-After": "30"})
        if kind == "http" and arg.isdigit() and 300 <= int(arg) <= 599:
            code, headers = int(arg), {}
            if code in (429, 503):
                headers["Retry-After"] = "7"
            if code in (301, 302, 303, 307, 308):
                headers["Location"] = f"https://127.0.0.1:{self.server.state.https_port}/elsewhere"
            return self._reply(code, b"" if code == 304 else {"error": f"mock {code}"},
                               headers=headers)
        if kind == "stall" and num is not None:
            self._stream(100000, "application/octet-stream", wav_pieces(100000), limit=1000)
            time.sleep(min(num, 30))
            return self._abort()
        if kind == "slowheaders" and num is not None:
            time.sleep(min(num, 30))
            return self._reply(*FIXED["notfound"])
        if kind == "slowjson" and num is not None:
            return self._trickle(200, min(num, 30))
        if kind == "slow503" and num is not None:
            return self._trickle(503, min(num, 30), headers={"Retry-After": "7"})
        if cid == "gzipjson":
            return self._reply(200, gzip.compress(NOTFOUND, mtime=0),
                               headers={"Content-Encoding": "gzip"})
        if kind == "slowwav" and num is not None:
            return self._trickle_bytes(wav_bytes(160044), min(num, 30))
        if cid == "bigheader":
            return self._reply(*FIXED["notfound"], headers={"X-Filler": "a" * 200000})
        if cid == "http09":  # no status line at all: raw bytes, then close
            self.close_connection, self._note = True, " (HTTP/0.9 style: no status line)"
            self.wfile.write(HTTP09)
            return self.wfile.flush()
        body = success_body(cid)
        if body is None:
            return self._reply(*FIXED["notfound"])
        size, ctype, pieces = body
        if kind == "retry":
            k, how = RETRY_RE.fullmatch(cid).group(1, 2)
            attempt = self.server.state.attempt(cid)
            if attempt <= int(k):
                self._note = f" (retry attempt {attempt} of {k}: {how})"
                if how == "flow":
                    return self._reply(*FIXED["flow"], headers={"Retry-After": RETRY_AFTER})
                if how in ("503", "429"):
                    return self._reply(int(how), {"error": f"mock {how}"},
                                       headers={"Retry-After": RETRY_AFTER})
                if how == "drop":
                    self._stream(size, ctype, pieces(), limit=size // 2)
                    return self._abort()
                time.sleep(RETRY_SLOW)  # slow: then the answer, if anyone still listens
            else:
                self._note = f" (retry attempt {attempt}: served)"
        if kind == "delay":
            time.sleep(min(int(DELAY_RE.fullmatch(cid).group(1)), MAX_DELAY_MS) / 1000)
        if kind == "drop":
            self._stream(size, ctype, pieces(), limit=size // 2)
            return self._abort()
        if kind == "gzipwav":
            return self._reply(200, gzip_wav(size), ctype, headers={"Content-Encoding": "gzip"})
        if kind == "extra":  # then an unrequested response on the same connection
            self._stream(size, ctype, pieces())
            time.sleep(EXTRA_DELAY)
            self._stream(size + 1, ctype, wav_pieces(size + 1))
            self._note = f" (+ unrequested response of {size + 1} bytes)"
            with self.server.state.lock:
                self.server.state.extra_sent += 1
            return None
        self._stream(size, ctype, pieces(), chunked=(kind == "chunked"))

# ---------------------------------------------------------------- startup

OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = cmsrec mock
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
[v3_wrongname]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:other.invalid
[v3_waf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:cms.example.test, IP:127.0.0.1
"""


def blackhole():
    """A port whose accept queue is full and never drained: connecting hangs
    (the kernel drops the SYNs), which is how connect timeouts are tested."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(sock.getsockname())
        except BlockingIOError:
            pass
        fillers.append(c)
    return sock, fillers


def remember_sni(sslsock, server_name, _ctx):
    """The WAF port's SNI callback: the name the client sent (None by IP), for _gateway."""
    sslsock.mock_sni = server_name


def make_certs(d):
    def p(name):
        return os.path.join(d, name)

    def run(*args):
        proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"mock_cms: openssl {args[0]} failed: {proc.stderr.strip()}")

    with open(p("openssl.cnf"), "w") as f:
        f.write(OPENSSL_CNF)
    for name in ("ca", "other-ca", "server", "wrongname", "waf"):
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-out", p(name + ".key"))
    for name, cn in (("ca", "cmsrec mock CA"), ("other-ca", "cmsrec unrelated CA")):
        run("req", "-x509", "-new", "-config", p("openssl.cnf"), "-extensions", "v3_ca",
            "-key", p(name + ".key"), "-subj", "/CN=" + cn, "-days", "3650", "-sha256",
            "-set_serial", str(secrets.randbits(100)), "-out", p(name + ".pem"))
    run("req", "-new", "-config", p("openssl.cnf"), "-key", p("server.key"),
        "-subj", "/CN=localhost", "-out", p("server.csr"))
    run("x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
        "-set_serial", str(secrets.randbits(100)), "-days", "825", "-sha256",
        "-extfile", p("openssl.cnf"), "-extensions", "v3_server", "-out", p("server.pem"))
    # same CA, but a certificate for another name: host name verification must fail
    run("req", "-new", "-config", p("openssl.cnf"), "-key", p("wrongname.key"),
        "-subj", "/CN=other.invalid", "-out", p("wrongname.csr"))
    run("x509", "-req", "-in", p("wrongname.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
        "-set_serial", str(secrets.randbits(100)), "-days", "825", "-sha256",
        "-extfile", p("openssl.cnf"), "-extensions", "v3_wrongname", "-out", p("wrongname.pem"))
    # the WAF port: the name in SNI is what it checks (and an IP SAN, see the docstring)
    run("req", "-new", "-config", p("openssl.cnf"), "-key", p("waf.key"),
        "-subj", "/CN=" + WAF_NAME, "-out", p("waf.csr"))
    run("x509", "-req", "-in", p("waf.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
        "-set_serial", str(secrets.randbits(100)), "-days", "825", "-sha256",
        "-extfile", p("openssl.cnf"), "-extensions", "v3_waf", "-out", p("waf.pem"))
    for name in ("server.csr", "wrongname.csr", "waf.csr", "openssl.cnf"):
        os.remove(p(name))


# ---------------------------------------------------------------- TLS fault ports
# Certificates outside their validity, a port asking for a client certificate,
# old and capped TLS versions, and one port whose behaviour the specs switch
# (see the module docstring). Kept apart from the rest of the mock.

TLS_EXT_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = cmsrec mock
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
"""

# `openssl ca` is the openssl 3.0 command that sets both ends of the validity
# (x509 -req only counts days from now).
TLS_CA_CNF = """\
[ca]
default_ca = mock
[mock]
database = {d}/tls-index.txt
new_certs_dir = {d}/tls-newcerts
default_md = sha256
policy = any
unique_subject = no
rand_serial = yes
[any]
commonName = supplied
"""

TLS_MODES = ("good", "expired", "notyet", "otherca", "wrongname", "mtls", "tls12", "tls11")


def make_tls_certs(d):
    def p(name):
        return os.path.join(d, name)

    def run(*args):
        proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"mock_cms: openssl {args[0]} failed: {proc.stderr.strip()}")

    def asn1(t):
        return t.strftime("%Y%m%d%H%M%SZ")

    with open(p("tls-ext.cnf"), "w") as f:
        f.write(TLS_EXT_CNF)
    with open(p("tls-ca.cnf"), "w") as f:
        f.write(TLS_CA_CNF.format(d=d))
    open(p("tls-index.txt"), "w").close()
    os.makedirs(p("tls-newcerts"), exist_ok=True)
    for name in ("client", "other-client", "otherca"):
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-out", p(name + ".key"))
    run("req", "-new", "-config", p("tls-ext.cnf"), "-key", p("server.key"),
        "-subj", "/CN=localhost", "-out", p("tls-server.csr"))
    now = datetime.datetime.now(datetime.timezone.utc)
    year = datetime.timedelta(days=365)
    for name, start, end in (("expired", now - 2 * year, now - year),
                             ("notyet", now + year, now + 2 * year)):
        run("ca", "-batch", "-config", p("tls-ca.cnf"), "-cert", p("ca.pem"),
            "-keyfile", p("ca.key"), "-in", p("tls-server.csr"), "-notext",
            "-startdate", asn1(start), "-enddate", asn1(end),
            "-extfile", p("tls-ext.cnf"), "-extensions", "v3_server", "-out", p(name + ".pem"))
    for name, ca, cn, ext in (("client", "ca", "cmsrec client", "v3_client"),
                              ("other-client", "other-ca", "cmsrec stranger", "v3_client"),
                              ("otherca", "other-ca", "localhost", "v3_server")):
        run("req", "-new", "-config", p("tls-ext.cnf"), "-key", p(name + ".key"),
            "-subj", "/CN=" + cn, "-out", p(name + ".csr"))
        run("x509", "-req", "-in", p(name + ".csr"), "-CA", p(ca + ".pem"),
            "-CAkey", p(ca + ".key"), "-set_serial", str(secrets.randbits(100)),
            "-days", "825", "-sha256", "-extfile", p("tls-ext.cnf"), "-extensions", ext,
            "-out", p(name + ".pem"))
        os.remove(p(name + ".csr"))
    for name in os.listdir(d):  # openssl ca's database and copies
        if name.startswith("tls-") and name != "tls-newcerts":
            os.remove(p(name))
    for name in os.listdir(p("tls-newcerts")):
        os.remove(os.path.join(p("tls-newcerts"), name))
    os.rmdir(p("tls-newcerts"))


def tls_contexts(d, good, wrong):
    """mode -> server SSLContext; and why TLS 1.1 is missing, or None."""
    def server_ctx(cert, key="server.key"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, cert), os.path.join(d, key))
        return ctx

    ctxs = {"good": good, "wrongname": wrong, "expired": server_ctx("expired.pem"),
            "notyet": server_ctx("notyet.pem"),
            "otherca": server_ctx("otherca.pem", "otherca.key")}
    mtls = ctxs["mtls"] = server_ctx("server.pem")
    mtls.verify_mode = ssl.CERT_REQUIRED
    mtls.load_verify_locations(os.path.join(d, "ca.pem"))
    tls12 = ctxs["tls12"] = server_ctx("server.pem")
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with warnings.catch_warnings():  # TLSv1/TLSv1_1 are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            old = server_ctx("server.pem")
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        ctxs["tls11"] = old
        return ctxs, None
    except (ssl.SSLError, ValueError, AttributeError) as exc:
        return ctxs, f"{type(exc).__name__}: {exc}"


TLS_LINGER = 0.3  # seconds a refused handshake keeps its connection open


class TlsHandler(Handler):
    """Handler of the TLS fault ports. A refused handshake (a missing or unknown
    client certificate, which TLS 1.3 refuses only after the client's Finished)
    keeps the connection a moment before closing it, as a server that reads the
    request first: the client reads the alert, rather than a reset from a close
    with its request unread (a race the client cannot tell from a network fault)."""

    def setup(self):
        try:
            super().setup()
        except ssl.SSLError:
            time.sleep(TLS_LINGER)
            raise


class TlsSwitchServer(MockServer):
    """HTTPS with the context of state.tls_mode, chosen for each new connection."""

    def __init__(self, state, contexts):
        self.contexts = contexts
        super().__init__(state, "https", contexts["good"])

    def get_request(self):
        self.ssl_ctx = self.contexts[self.state.tls_mode]  # one accept at a time
        return super().get_request()


def tls_fault_servers(state, d, good, wrong):
    """The TLS fault servers, and their ports for ready.json."""
    ctxs, tls11_error = tls_contexts(d, good, wrong)
    state.tls_mode, state.tls_modes = "good", [m for m in TLS_MODES if m in ctxs]
    named = {name: MockServer(state, "https", ctxs[mode]) for name, mode in
             (("expired_port", "expired"), ("notyet_port", "notyet"), ("mtls_port", "mtls"),
              ("tls12_port", "tls12"), ("tls11_port", "tls11")) if mode in ctxs}
    named["tls_switch_port"] = TlsSwitchServer(state, ctxs)
    for srv in named.values():
        srv.RequestHandlerClass = TlsHandler
    info = {name: srv.server_address[1] for name, srv in named.items()}
    info.setdefault("tls11_port", None)
    info["tls11_error"] = tls11_error
    return list(named.values()), info


def tls_control(handler, state):
    """/_mock/tls?mode=MODE: what tls_switch_port serves from now on."""
    query = parse_qs(handler.target.partition("?")[2], keep_blank_values=True)
    mode = query.get("mode", [None])[-1]
    if mode is not None:
        if mode not in state.tls_modes:
            return handler._reply(400, {"error": "mode: one of " + ", ".join(state.tls_modes)})
        with state.lock:
            state.tls_mode = mode
    return handler._reply(200, {"mode": state.tls_mode, "modes": state.tls_modes})


def main(argv=None):
    ap = argparse.ArgumentParser(description="Mock Huawei CC-CMS recording download server")
    ap.add_argument("--state-dir")
    ap.add_argument("--ak", default="mock-ak")
    ap.add_argument("--sk", default="mock-sk-0123456789abcdef")
    ap.add_argument("--max-lifetime", type=float, default=600.0)
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    if not args.state_dir:
        ap.error("--state-dir is required")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    d = os.path.abspath(args.state_dir)
    os.makedirs(d, exist_ok=True)
    ready = os.path.join(d, "ready.json")
    if os.path.exists(ready):
        os.remove(ready)  # stale file from an earlier run
    make_certs(d)
    make_tls_certs(d)

    state = State(args.ak, args.sk, os.path.join(d, "server.log"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(d, "server.pem"), os.path.join(d, "server.key"))
    wrong = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    wrong.load_cert_chain(os.path.join(d, "wrongname.pem"), os.path.join(d, "wrongname.key"))
    waf = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    waf.load_cert_chain(os.path.join(d, "waf.pem"), os.path.join(d, "waf.key"))
    waf.sni_callback = remember_sni
    waf_server = MockServer(state, "https", waf, waf=True)
    servers = [MockServer(state, "https", ctx, main=True), MockServer(state, "http"),
               MockServer(state, "https", wrong), waf_server]
    state.https_port = servers[0].server_address[1]
    tls_servers, tls_info = tls_fault_servers(state, d, ctx, wrong)
    servers += tls_servers
    for srv in servers:
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
    hole, hole_fillers = blackhole()  # kept open until exit
    fault_ports = FaultPorts()  # the fault suite's raw ports
    fault_ports.https_port = state.https_port
    for srv in servers:
        srv.fault_ports = fault_ports
    info = {"https_port": servers[0].server_address[1], "http_port": servers[1].server_address[1],
            "wrong_name_port": servers[2].server_address[1],
            "blackhole_port": hole.getsockname()[1],
            "waf_port": waf_server.server_address[1], "waf_name": WAF_NAME,
            "pid": os.getpid(), "ak": args.ak, "ca": os.path.join(d, "ca.pem"), **tls_info}
    info.update(fault_ports.ports())
    with open(ready + ".tmp", "w") as f:
        json.dump(info, f)
    os.replace(ready + ".tmp", ready)
    state.log(f"ready https={info['https_port']} http={info['http_port']} pid={info['pid']}")

    reason = "signal" if stop.wait(args.max_lifetime) else "max lifetime reached"
    state.log(f"exiting: {reason}")
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    fault_ports.close()
    for sock in [hole, *hole_fillers]:
        sock.close()
    with state.lock:
        state.log_file.close()
    try:
        os.remove(ready)
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
