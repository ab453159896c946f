#!/usr/bin/env python3
"""A tiny plain-HTTP gateway for spec/gateways_review_spec.lua (loopback only): token
shapes the mock CMS does not produce (long tokens, odd expiresIn, a quoting 400).

POST /tok/<mode>: the token endpoint. Modes:
  len-N     200 {"AccessToken": <N visible chars>, "expiresIn": 3600}
  refuse-N  as len-N, and every API request is then refused (401 quoting the token)
  ttl-X     200 {"AccessToken": <40 chars>, "expiresIn": X}   (X as JSON: 0, -5; else the
            string X, as "abc"; "none": no expiresIn at all)
  quote-N   400 {"message": <N chars of padding> + the request body}  (a gateway quoting what it got)
POST /rest/... (a path with "refuse", or after refuse-N: always 401 as below): 200
  {"resultCode":"0"} for the newest token while it is fresh (issued under ttl-X with X <= 0:
  fresh for no time at all; X not a number: 3600 s), else 401 quoting the token in resultDesc.
GET /stats: {"tokens": issued, "api": API requests, "refused": 401s, "token": the newest}.
Prints the port on stdout, exits after the number of seconds given as its argument (300).
"""
import json, sys, time, threading, http.server, socketserver, random, string

state = {"tokens": 0, "api": 0, "refused": 0, "token": None, "expires": 0.0, "refuse": False}
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
            self.reply(200, {k: state[k] for k in ("tokens", "api", "refused", "token")})
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n).decode("utf-8", "replace")
        if self.path.startswith("/tok/"):
            mode, _, arg = self.path[5:].partition("-")
            if mode == "quote":
                return self.reply(400, {"message": "x" * int(arg) + " bad request: " + body})
            with lock:
                state["tokens"] += 1
                t = tok(int(arg) if mode in ("len", "refuse") else 40)
                ttl = 3600
                if mode == "ttl":
                    try:
                        ttl = json.loads(arg)
                    except ValueError:
                        ttl = arg
                state["token"] = t
                state["refuse"] = mode == "refuse"
                fresh = ttl if isinstance(ttl, (int, float)) else 3600
                state["expires"] = time.monotonic() + fresh
            answer = {"AccessToken": t, "expiresIn": ttl}
            if ttl == "none":
                del answer["expiresIn"]
            return self.reply(200, answer)
        auth = self.headers.get("Authorization", "")
        with lock:
            state["api"] += 1
            t = auth[len("Bearer "):]
            if t == state["token"] and time.monotonic() < state["expires"] \
                    and "refuse" not in self.path and not state["refuse"]:
                return self.reply(200, {"resultCode": "0", "resultDesc": "success"})
            state["refused"] += 1
        return self.reply(401, {"resultCode": "0100001", "resultDesc": "token " + t + " is invalid or expired"})

class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

srv = S(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
threading.Timer(float(sys.argv[1]) if len(sys.argv) > 1 else 300, srv.shutdown).start()
srv.serve_forever()
