#!/usr/bin/env python3
"""Query a running mock CMS (test/mock_cms.py) over its plain-HTTP control port.

usage: mockctl.py STATE_DIR stats|strict|reset|revoke|expect CALLID|set NAME VALUE|tls [MODE]
  stats           the counters (/_mock/stats)
  strict          the strict request checks, with every body seen (/_mock/strict)
  reset           clear them, settings back to their defaults (/_mock/reset)
  revoke          revoke every bearer token issued so far (/_mock/revoke)
  expect CALLID   size and sha256 of the success body of CALLID (/_mock/expect)
  set NAME VALUE  change a setting, e.g. `set latency_ms 20` (/_mock/set)
  tls [MODE]      what tls_switch_port serves, e.g. `tls expired` (/_mock/tls)
Prints the JSON answer. Used by the specs, which have no HTTP client of their own.
An error answer goes to stderr, and the exit status is 1.
"""
import json
import sys
import urllib.error
import urllib.parse
import urllib.request


def main():
    state, cmd = sys.argv[1], sys.argv[2]
    with open(f"{state}/ready.json") as f:
        port = json.load(f)["http_port"]
    path = {"stats": "/_mock/stats", "reset": "/_mock/reset", "strict": "/_mock/strict",
            "revoke": "/_mock/revoke"}.get(cmd)
    if cmd == "expect":
        path = "/_mock/expect?callID=" + urllib.parse.quote(sys.argv[3])
    if cmd == "set":
        path = "/_mock/set?" + urllib.parse.urlencode({sys.argv[3]: sys.argv[4]})
    if cmd == "tls":
        path = "/_mock/tls" + ("?mode=" + urllib.parse.quote(sys.argv[3]) if len(sys.argv) > 3 else "")
    if path is None:
        sys.exit(__doc__.split("\n\n")[1])
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            sys.stdout.write(r.read().decode())
    except urllib.error.HTTPError as exc:
        sys.exit(f"mockctl: HTTP {exc.code}: {exc.read().decode()}")


if __name__ == "__main__":
    main()
