#!/usr/bin/env python3
"""A tiny plain-HTTP gateway for the review12 reproducers (loopback only).

POST /tok/<mode>: the token endpoint. Modes:
  len-N     200 {"AccessToken": <N visible chars>, "expiresIn": 3600}
  ttl-X     200 {"AccessToken": <40 chars>, "expiresIn": X}   (X as JSON: 0, -5, "abc")
  quote-N   400 {"message": <N chars of padding> + the request body}  (a gateway quoting what it got)
POST /rest/... (a path with "refuse": always 401 as below): 200 {"resultCode":"0"} for the newest token while it is fresh (issued under
  ttl-X with X <= 0: fresh for no time at all), else 401 quoting the token in resultDesc.
GET /stats: {"tokens": issued, "api": API requests, "refused": 401s}.
Prints the port on stdout, exits after --max-lifetime seconds.
"""
import json, sys, time, threading, http.server, socketserver, random, string

state = {"tokens": 0, "api": 0, "refused": 0, "token": None, "expires": 0.0}
lock = threading.Lock()

def tok(n):
    alphabet = string.ascii_letters + string.digits + "-_."
    return "".join(random.choice(alphabet) for _ in range(n))

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        with lock:
            self.reply(200, {k: state[k] for k in ("tokens", "api", "refused")})
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n).decode("utf-8", "replace")
        if self.path.startswith("/tok/"):
            mode, _, arg = self.path[5:].partition("-")
            if mode == "quote":
                return self.reply(400, {"message": "x" * int(arg) + " bad request: " + body})
            with lock:
                state["tokens"] += 1
                t = tok(int(arg) if mode == "len" else 40)
                ttl = json.loads(arg) if mode == "ttl" else 3600
                state["token"] = t
                fresh = ttl if isinstance(ttl, (int, float)) else 3600
                state["expires"] = time.monotonic() + fresh
            return self.reply(200, {"AccessToken": t, "expiresIn": ttl})
        auth = self.headers.get("Authorization", "")
        with lock:
            state["api"] += 1
            t = auth[len("Bearer "):]
            if t == state["token"] and time.monotonic() < state["expires"] and "refuse" not in self.path:
                return self.reply(200, {"resultCode": "0", "resultDesc": "success"})
            state["refused"] += 1
        return self.reply(401, {"resultCode": "0100001", "resultDesc": "token " + t + " is invalid or expired"})

class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

srv = S(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
threading.Timer(float(sys.argv[1]) if len(sys.argv) > 1 else 300, srv.shutdown).start()
srv.serve_forever()
