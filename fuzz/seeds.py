#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz harnesses: fuzz/corpus/<harness>/<name>.

Run from the repository root: python3 fuzz/seeds.py. Deterministic, so the
committed files are its output; inputs a harness once crashed on are kept
beside them as regress-* (written by hand from libFuzzer's crash files, not
by this script). The ZIP seeds are the mock CMS's tricky archives
(special_zip in test/mock_cms.py), built with its own helpers from small
members so that they stay under make fuzz's -max_len.
"""
import io
import os
import struct
import sys
import warnings
import zipfile

sys.dont_write_bytecode = True  # no __pycache__ in test/
warnings.filterwarnings("ignore", "Duplicate name")  # zipbad-twice is meant
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test"))
import mock_cms as mock  # noqa: E402  (zip_of, zip64_declaring, zip32_declaring, wav_bytes)

SEP = b"\xff"


def write(harness, name, data):
    d = os.path.join(HERE, "corpus", harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def request_seeds():
    """Control byte (low nibble: the escaper fails at that call), fields split by 0xFF."""
    def req(*fields, control=0):
        return bytes([control]) + SEP.join(f.encode() if isinstance(f, str) else f
                                           for f in fields)
    seeds = {
        "callid-only": req("1748587841-77268"),
        "all-fields": req("1748587841-77268", "10086", "20250530120000", "13800000000", "95511"),
        "leap-day": req("1", "", "20240229235959"),
        "not-leap": req("1", "", "20250229120000"),
        "hour-24": req("1", "", "20250530240000"),
        "year-1969": req("1", "", "19691231235959"),
        "thirteen-digits": req("1", "", "2025053012000"),
        "absent-middle": req("1", b"\xfe", "20250530120000", b"\xfe", "x"),
        "no-callid": req(b"\xfe", "w"),
        "empty-callid": req(""),
        "crlf": req("1", "1\r\nX-Injected: 1"),
        "nul": req(b"12\x0034"),
        "quote-backslash": req('a"b\\c', "caf\u00e9", "", "\u4e2d\u6587"),
        "latin1": req(b"caf\xe9"),
        "overlong": req(b"\xc0\xaf"),
        "surrogate": req(b"\xed\xa0\x80"),
        "c1-csi": req("1", "", "\u009b31m"),
        "too-long": req("x" * 257),
        "longest": req("x" * 256, "y" * 256),
        "escaper-fails": req("1748587841-77268", "w", control=3),
        "del": req("a\x7fb"),
    }
    for name, data in seeds.items():
        write("request", name, data)


def classify_seeds():
    """4 header bytes (status, flags, excerpt size), code 0xFF desc 0xFF message 0xFF, body."""
    def ans(status, body, code=b"", desc=b"", message=b"", flags=0, cap=159):
        return (struct.pack(">H", status) + bytes([flags, cap]) + code + SEP + desc + SEP
                + message + SEP + body)
    notfound = b'{"resultData":"","resultCode":"1","resultDesc":"Record List is empty"}'
    seeds = {
        "notfound": ans(200, notfound, b"1", b"Record List is empty"),
        "flow": ans(200, b'{"resultCode":"0300008"}', b"0300008", flags=8),
        "ok-json": ans(200, b'{"resultCode":"0"}', b"0"),
        "no-code": ans(200, b'{"a":1}', flags=16 | 32),
        "badjson": ans(200, b'{"resultCode":"1", "res', flags=2),
        "truncated": ans(200, b'{"resultCode":"1"' + b" " * 64, b"1", flags=1),
        "auth-401": ans(401, b'{"resultCode":"0100001","resultDesc":"token expired"}',
                        b"0100001", b"token expired"),
        "auth-403": ans(403, b'{"status":403,"error":"Forbidden","message":"IP locked"}',
                        message=b"IP locked"),
        "http-503": ans(503, b'{"error":"mock 503"}', message=b"mock 503", flags=8, cap=7),
        "http-302": ans(302, b'{"error":"mock 302"}'),
        "http-304-empty": ans(304, b""),
        "html": ans(200, b"<html><body>login</body></html>"),
        "jsonarray": ans(200, b"[1,2]"),
        "blank": ans(200, b" \r\n\t "),
        "bom": ans(200, b"\xef\xbb\xbf" + notfound, b"1", b"Record List is empty"),
        "wsjson": ans(200, b"\r\n" * 40 + notfound, b"1"),
        "blank-past-cap": ans(200, b" " * 1030 + b"{}", flags=2),
        "wav": ans(200, mock.wav_bytes(60)),
        "zip": ans(200, b"PK\x03\x04" + bytes(26)),
        "unknown": ans(200, b"ID3\x03\x00\x00\x00"),
        "gbkdesc": ans(200, b'{"resultCode":"1","resultDesc":"\xb4\xed\xce\xf3"}', b"1",
                       b"\xb4\xed\xce\xf3"),
        "c1desc": ans(500, "bad \u009b31m \x1b[2J".encode(), cap=1),
        "long-desc": ans(200, b'{"resultCode":"1"}', b"1" * 40, "\u4e2d".encode() * 100),
    }
    for name, data in seeds.items():
        write("classify", name, data)


def url_seeds():
    """Control byte (bit 0 allow_http, bit 1 the path after 0xFF is used), base_url."""
    seeds = {
        "ip-port": b"\x00https://10.22.26.181:28080",
        "name": b"\x00https://cms.example",
        "ipv6-prefix": b"\x00https://[::1]:8443/gw/",
        "http-allowed": b"\x01http://127.0.0.1:1",
        "http-refused": b"\x00http://127.0.0.1:1",
        "query": b"\x00https://h/a?b=c",
        "userinfo": b"\x00https://user:pw@h",
        "fragment": b"\x00https://h/#f",
        "non-ascii-path": "\x00https://h/caf\u00e9".encode(),
        "custom-path": b"\x02https://h:1/prefix//\xff/rest/x",
        "bad-path": b"\x02https://h\xff/a b",
        "ftp": b"\x00ftp://h",
        "zone": b"\x00https://[fe80::1%25eth0]:8443",
        "ipv4-short": b"\x00https://127.1:28080",
        "escaped-host": b"\x00https://%41.example",
    }
    for name, data in seeds.items():
        write("url", name, data)


def trace_seeds():
    """Event type (TEXT 0, HEADER_IN 1, HEADER_OUT 2, DATA_IN 3, DATA_OUT 4), buffer size, bytes."""
    def ev(kind, data, cap=255):
        return bytes([kind, cap]) + data
    request = (b"POST /rest/cmsapp/v1/openapi/hisindex/downloadRecordFile HTTP/1.1\r\n"
               b"Host: 10.22.26.181:28080\r\nContent-Type: application/json;charset=UTF-8\r\n"
               b"Authorization: auth-v2/mockak/2024-10-31T14:06:52Z/content-length;"
               b"content-type;host/e77feacaa3781f9f4b7b391abc2cf2fb75677908c26de4cfa787c2cfb49c2487"
               b"\r\nContent-Length: 95\r\n\r\n")
    seeds = {
        "request-headers": ev(2, request),
        "bearer": ev(2, b"Authorization: Bearer abcdefghijklmnop\r\n"),
        "signature-scheme": ev(2, b"Proxy-Authorization: HMAC Credential=x, Signature=0123456789abcdef\r\n"),
        "cookie": ev(2, b"Cookie: JSESSIONID=0123456789abcdef; x=1\r\nX-Auth-Token: tok-0123456789\r\n"),
        "answer-headers": ev(1, b"HTTP/1.1 200 OK\r\nSet-Cookie: s=0123456789abcdef\r\n"
                                b"Content-Type: text/plain\r\nX-Evil: \x1b[2J\xc2\x9b31m\r\n"),
        "proxy-note": ev(0, b"Uses proxy env variable https_proxy == 'http://user:s3cretpassw0rd@proxy:3128'"),
        "connect-note": ev(0, b"  Trying 127.0.0.1:28080...\n"),
        "tls-note": ev(0, b"SSL connection using TLSv1.3 / TLS_AES_256_GCM_SHA384\n"),
        "body-out": ev(4, b'{"callID":"1748587841-77268","workNo":"","beginTime":""}'),
        "body-in": ev(3 | 8, b'{"resultCode":"1"}'),
        "ssl-data": ev(5, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        "outcome-sunk": ev(2 | 8 * 3, b"RIFF\x24\x00\x00\x00WAVE"),
        "short-buffer": ev(2, b"Authorization: auth-v2/ak/t/h/0123456789abcdef\r\n", cap=12),
    }
    for name, data in seeds.items():
        write("trace", name, data)


def zip_seeds():
    good = [("rec_1.wav", mock.wav_bytes(200), 0o100644)]
    second = ("rec_2.wav", mock.wav_bytes(300), 0o100644)
    crc = bytearray(mock.zip_of(good + [second]))
    crc[crc.index(b"rec_2.wav", 30) + len("rec_2.wav") + 40] ^= 0xFF
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:  # fixed dates: same bytes each run
        zf.writestr(zipfile.ZipInfo("a.wav", (2024, 10, 31, 14, 6, 52)), b"RIFF....WAVE")
        zf.writestr(zipfile.ZipInfo("empty.wav", (2024, 10, 31, 14, 6, 52)), b"")
    seeds = {
        "zip-2": mock.zip_of(good + [second]),
        "zip-dirs": mock.zip_of([("day1/", b"", 0o040755), ("day1/rec_1.wav", b"RIFF 1", 0o100644),
                                 ("day1/rec_2.wav", b"RIFF 2", 0o100644)]),
        "stored-and-empty": stored.getvalue(),
        "only-dir": mock.zip_of([("d/", b"", 0o040755)]),
        "no-members": mock.zip_of([]),
        "zipbad-slip": mock.zip_of(good + [("../evil.wav", b"RIFF evil", 0o100644)]),
        "zipbad-abs": mock.zip_of(good + [("/tmp/cmsrec-evil.wav", b"RIFF evil", 0o100644)]),
        "zipbad-symlink": mock.zip_of(good + [("link.wav", b"/etc/passwd", 0o120777)]),
        "zipbad-crc": bytes(crc),
        "zipbad-hugesize": mock.zip64_declaring(b"b.wav", b"RIFF", (1 << 64) - 500),
        "zipbad-trunc": mock.zip_of(good + [second])[:300],
        "zipbad-c1name": mock.zip_of(good + [("a\u009b31mb", b"RIFF c1", 0o100644)]),
        "zipbad-filedir": mock.zip_of(good + [("a", b"RIFF file a", 0o100644),
                                              ("a/", b"", 0o040755)]),
        "zipbad-file-and-dir": mock.zip_of([("a", b"1", 0o100644), ("a/b", b"2", 0o100644)]),
        "zipbad-declared": mock.zip32_declaring(b"b.wav", b"RIFF", 3 << 30),
        "zipbad-twice": mock.zip_of([("a.wav", b"1", 0o100644), ("a.wav", b"2", 0o100644)]),
        "zipbad-backslash": mock.zip_of([("a\\b.wav", b"1", 0o100644)]),
        "zipbad-drive": mock.zip_of([("C:x.wav", b"1", 0o100644)]),
        "zipbad-dot": mock.zip_of([("./a.wav", b"1", 0o100644)]),
        "too-large": mock.zip_of([("z.wav", bytes(1 << 21), 0o100644)]),
    }
    for name, data in seeds.items():
        write("zip", name, data)


if __name__ == "__main__":
    request_seeds()
    classify_seeds()
    url_seeds()
    trace_seeds()
    zip_seeds()
