#!/bin/sh
# make demo: start the bundled mock CMS on loopback, download recordings with the
# cmsrec command and with examples/download.lua, show what came back (type,
# bytes, checksum) and one error case, then stop the mock.
#
# Lua 5.4 by default; any other Lua, with its build, as for the specs:
#   CMSREC_LUA=luajit CMSREC_CPATH='build/luajit/?.so' sh examples/demo.sh
set -eu
cd "$(dirname "$0")/.."
top=$PWD
lua=${CMSREC_LUA:-lua5.4}
cpath=${CMSREC_CPATH:-build/5.4/?.so}
case $cpath in /*) ;; *) cpath=$top/$cpath ;; esac
work=$(mktemp -d /tmp/cmsrec-demo.XXXXXX)
mock_pid=
cleanup() {
    [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null && wait "$mock_pid" || true
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
echo "mock CMS on https://127.0.0.1:$port, with its own CA ($work/mock/ca.pem)"

export LUA_CPATH="$cpath;;"
export CMSREC_URL="https://127.0.0.1:$port" CMSREC_AK=mock-ak CMSREC_SK=mock-sk-0123456789abcdef
export CMSREC_CAFILE="$work/mock/ca.pem"
mkdir "$work/out"
cd "$work/out"
run() { echo; echo "\$ $*"; "$@"; }
cmsrec() { "$lua" "$top/bin/cmsrec" "$@"; }

run cmsrec get --call-id 1748587841-77268
echo "served by the mock: $(python3 "$top/test/mockctl.py" "$work/mock" expect 1748587841-77268)"
run cmsrec get --call-id wav-30000000 -o big.wav
run cmsrec get --call-id zip-3 --unzip --json -o .
run "$lua" "$top/examples/download.lua" 1748587841-77268 example.wav
echo; echo "\$ ls -l"; ls -l

echo; echo "# the seed's error answer, which real servers send with HTTP 200:"
rc=0
run cmsrec get --call-id notfound || rc=$?
echo "(exit status $rc: 3 = API error)"
