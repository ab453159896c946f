#!/usr/bin/env python3
"""Raw plain-HTTP server on loopback for spec/trace_review_spec.lua (review of issue 10).

Usage: python3 spec/trace_review_raw.py PORTFILE   (writes its port there; exits after 120 s)
One request per connection, answered by its JSON body's callID, then close:
  longtok      200 notfound JSON with a header "X-<62 a>-Token: RAWSECRET1" (name > 64 bytes)
  spacetok     200 notfound JSON with "Set-Cookie : sid=RAWSECRET2" (a space before the colon)
  foldtok      200 notfound JSON with "X-Auth-Token: part1" folded onto " RAWSECRET3"
  tabcl-N      WAV of N bytes, "Content-Length: N<TAB>" (optional whitespace, RFC 9110)
  jsonmp3-N    N bytes starting "ID3" (an MP3), Content-Type application/json;charset=UTF-8
  wav-N        WAV of N bytes with Content-Length
"""
import json
import os
import socket
import sys
import threading
import time


def wav(n):
    return (b"RIFF" + (n - 8).to_bytes(4, "little") + b"WAVEfmt " +
            bytes((i * 7) & 0xFF for i in range(n - 16)))[:n]


NF = b'{"resultData":"","resultCode":"1","resultDesc":"Record List is empty"}'


def json_with(header):
    return (b"HTTP/1.1 200 OK\r\n" + header + b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(NF) + NF)


def answer(cid):
    if cid == "longtok":
        return json_with(b"X-" + b"a" * 62 + b"-Token: RAWSECRET1\r\n")
    if cid == "spacetok":
        return json_with(b"Set-Cookie : sid=RAWSECRET2\r\n")
    if cid == "foldtok":
        return json_with(b"X-Auth-Token: part1\r\n RAWSECRET3\r\n")
    if cid.startswith("tabcl-"):
        n = int(cid[6:])
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\t\r\n\r\n" % n + wav(n)
    if cid.startswith("jsonmp3-"):
        n = int(cid[8:])
        body = (b"ID3" + bytes((i * 13) & 0xFF for i in range(n)))[:n]
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json;charset=UTF-8\r\n"
                b"Content-Length: %d\r\n\r\n" % n + body)
    if cid.startswith("wav-"):
        n = int(cid[4:])
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + wav(n)
    return json_with(b"")


def serve(conn):
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        n = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v)
        while len(body) < n:
            chunk = conn.recv(65536)
            if not chunk:
                return
            body += chunk
        conn.sendall(answer(json.loads(body[:n].decode()).get("callID", "")))
    except Exception:
        pass
    finally:
        conn.close()


def main():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.settimeout(0.5)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(s.getsockname()[1]))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    end = time.time() + 120
    while time.time() < end:
        try:
            c, _ = s.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(c,), daemon=True).start()


main()
