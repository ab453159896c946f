#!/bin/sh
# Install test: `luarocks make --deps-mode=none` (no LuaRocks server needed,
# lua-cjson comes from Debian) into a scratch tree, then load the installed
# module in a fresh interpreter and download from the mock CMS. Prints TAP.
set -u
cd "$(dirname "$0")/.." || exit 2
LUA=${LUA:-lua5.4}
LUAV=${LUAV:-5.4}
work=$(mktemp -d /tmp/cmsrec-rock.XXXXXX)
mock_pid=
cleanup() {
    [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null && wait "$mock_pid"
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
n=0 fail=0
tap() { # tap STATUS NAME
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fail=1; fi
}

# Build from a copy of the tracked sources: luarocks make writes objects in place.
mkdir -p "$work/src" "$work/tree"
cp lua_cmsrec.c cmsrec-*.rockspec "$work/src/" && cp -r src bin "$work/src/"
ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || cc -print-multiarch)
(cd "$work/src" && luarocks --lua-version="$LUAV" make --deps-mode=none --tree="$work/tree" \
    cmsrec-*.rockspec CURL_INCDIR="/usr/include/$ma" OPENSSL_INCDIR=/usr/include \
    >"$work/build.log" 2>&1)
tap $? "luarocks make --deps-mode=none builds and installs the rock"
[ "$fail" -eq 0 ] || sed 's/^/# /' "$work/build.log"
luarocks --lua-version="$LUAV" --tree="$work/tree" list 2>/dev/null | grep -q '^cmsrec$'
tap $? "luarocks list shows cmsrec in the tree"
so="$work/tree/lib/lua/$LUAV/cmsrec.so"
test -f "$so"
tap $? "the module is installed at lib/lua/$LUAV/cmsrec.so"

export CMSREC_SK=mock-sk-0123456789abcdef
python3 test/mock_cms.py --state-dir "$work/mock" --max-lifetime 300 >"$work/mock.log" 2>&1 &
mock_pid=$!
i=0
while [ ! -s "$work/mock/ready.json" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["https_port"])' "$work/mock/ready.json")
want=$(python3 test/mockctl.py "$work/mock" expect wav-123456 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["sha256"])')
# Only the installed tree on the C path: the build/ copy must not be picked up.
"$LUA" -e "
package.cpath = '$work/tree/lib/lua/$LUAV/?.so;' .. package.cpath:gsub('%./%?%.so;?', '')
local cmsrec = require 'cmsrec'
assert(package.searchpath('cmsrec', package.cpath):find('$work', 1, true), 'wrong module')
local data, info = cmsrec.download({ base_url = 'https://127.0.0.1:$port', ak = 'mock-ak',
  sk = 'mock-sk-0123456789abcdef', cafile = '$work/mock/ca.pem' }, { callID = 'wav-123456' })
assert(data, tostring(info))
local f = assert(io.open('$work/out.wav', 'wb')); f:write(data); f:close()
" >"$work/run.log" 2>&1
tap $? "the installed module downloads from the mock CMS"
[ -f "$work/out.wav" ] || sed 's/^/# /' "$work/run.log"
got=$(sha256sum "$work/out.wav" 2>/dev/null | cut -d' ' -f1)
[ -n "$want" ] && [ "$got" = "$want" ]
tap $? "the downloaded bytes match the served sha256"
# The command-line tool is installed by the rock and runs on the installed module.
test -x "$work/tree/bin/cmsrec"
tap $? "the rock installs bin/cmsrec"
out=$(LUA_CPATH="$work/tree/lib/lua/$LUAV/?.so;;" "$work/tree/bin/cmsrec" get --quiet \
    --url "https://127.0.0.1:$port" --ak mock-ak --cafile "$work/mock/ca.pem" \
    --call-id wav-123456 -o "$work/cli.wav" 2>&1 </dev/null) &&
    [ "$(sha256sum "$work/cli.wav" | cut -d' ' -f1)" = "$want" ]
tap $? "the installed cmsrec command downloads the same bytes"
[ "$fail" -eq 0 ] || echo "$out" | sed 's/^/# /'
echo "1..$n"
exit $fail
