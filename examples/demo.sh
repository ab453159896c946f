#!/bin/sh
# make demo: start the bundled mock CMS on loopback, download a recording with
# examples/download.lua, show its type, size and checksum, show one error, stop.
set -eu
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/cmsrec-demo.XXXXXX)
mock_pid=
cleanup() {
    [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

python3 test/mock_cms.py --state-dir "$work/mock" --max-lifetime 120 >"$work/mock.log" 2>&1 &
mock_pid=$!
i=0
while [ ! -s "$work/mock/ready.json" ]; do
    i=$((i + 1)); [ $i -lt 200 ] || { cat "$work/mock.log"; exit 1; }
    sleep 0.05
done
port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["https_port"])' "$work/mock/ready.json")
echo "mock CMS listening on https://127.0.0.1:$port (its own CA: $work/mock/ca.pem)"

export LUA_CPATH="$PWD/build/?.so;;"
export CMSREC_URL="https://127.0.0.1:$port" CMSREC_AK=mock-ak CMSREC_SK=mock-sk-0123456789abcdef
export CMSREC_CAFILE="$work/mock/ca.pem"

echo
echo "\$ lua5.4 examples/download.lua 1748587841-77268"
(cd "$work" && lua5.4 "$OLDPWD/examples/download.lua" 1748587841-77268)
echo "bytes:  $(wc -c <"$work/1748587841-77268.wav")"
echo "sha256: $(sha256sum "$work/1748587841-77268.wav" | cut -d' ' -f1)"
echo "served: $(python3 test/mockctl.py "$work/mock" expect 1748587841-77268)"

echo
echo "\$ lua5.4 examples/download.lua notfound    # the seed's error, sent with HTTP 200"
(cd "$work" && lua5.4 "$OLDPWD/examples/download.lua" notfound) || echo "(exit status $?)"
