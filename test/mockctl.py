#!/usr/bin/env python3
"""Query a running mock CMS (test/mock_cms.py) over its plain-HTTP control port.

usage: mockctl.py STATE_DIR stats|reset|expect CALLID
Prints the JSON answer. Used by the specs, which have no HTTP client of their own.
"""
import json
import sys
import urllib.parse
import urllib.request


def main():
    state, cmd = sys.argv[1], sys.argv[2]
    with open(f"{state}/ready.json") as f:
        port = json.load(f)["http_port"]
    path = {"stats": "/_mock/stats", "reset": "/_mock/reset"}.get(cmd)
    if cmd == "expect":
        path = "/_mock/expect?callID=" + urllib.parse.quote(sys.argv[3])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        sys.stdout.write(r.read().decode())


if __name__ == "__main__":
    main()
