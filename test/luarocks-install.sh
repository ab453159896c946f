#!/bin/sh
# Install test, with the real luarocks and no LuaRocks server (--deps-mode=none;
# lua-cjson comes from Debian). Prints TAP.
#
# For Lua 5.1, 5.4 and LuaJIT, each in its own scratch tree: `luarocks make`
# the rockspec, download a recording from the mock CMS through the installed
# module, then through the installed commands (bin/cmsrec, bin/cmsrec-5.x),
# checking the bytes and the interpreter the command ran under (LUA_INIT
# probe). Then 5.1 and 5.4 in one tree (the versioned commands keep both
# usable), CURL_DIR reaching the compiler, and the message for a missing header.
#
# Each tree is the only rocks tree of a scratch LuaRocks config (LUAROCKS_CONFIG),
# as /usr/local or ~/.luarocks are by default: the user's own trees and config
# play no part. LuaJIT is installed as LuaRocks' Lua 5.1 with the config
# naming its interpreter and headers (see the README).
set -u
cd "$(dirname "$0")/.." || exit 2
# Nothing from the caller's Lua set-up: the paths must come from the install.
unset LUA_PATH LUA_CPATH LUA_INIT LUAROCKS_CONFIG
for v in 5_2 5_3 5_4; do unset "LUA_PATH_$v" "LUA_CPATH_$v" "LUA_INIT_$v"; done

work=$(mktemp -d /tmp/cmsrec-rock.XXXXXX) || exit 2
mock_pid=
cleanup() {
    if [ -n "$mock_pid" ]; then kill "$mock_pid" 2>/dev/null; wait "$mock_pid" 2>/dev/null; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
n=0 fail=0
tap() { # tap STATUS NAME: returns STATUS, so that `tap $? NAME || diag FILE` works
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fail=1; fi
    return "$1"
}
diag() { # diag FILE...: the last lines of each, as TAP comments
    for f in "$@"; do [ -s "$f" ] && tail -n 25 "$f" | sed 's/^/# /'; done
    return 0
}
started=$(date +%s)

# The mock CMS starts while the rocks build.
export CMSREC_SK=mock-sk-0123456789abcdef
python3 test/mock_cms.py --state-dir "$work/mock" --max-lifetime 300 >"$work/mock.log" 2>&1 &
mock_pid=$!

# Build from a copy of the tracked sources: luarocks make writes cmsrec.so in place.
mkdir -p "$work/src" "$work/empty"
cp lua_cmsrec.c cmsrec-*.rockspec "$work/src/" && cp -r src bin "$work/src/" || exit 2
rockspec=$(cd "$work/src" && ls cmsrec-*.rockspec)
ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || cc -print-multiarch)
curl_inc=/usr/include/$ma # Debian keeps curl/curl.h in the multiarch directory
# A prefix of our own for CURL_DIR: LuaRocks must look there, and only there.
mkdir -p "$work/curl/include" "$work/curl/lib"
ln -s "$curl_inc/curl" "$work/curl/include/curl"
ln -s "/usr/lib/$ma/libcurl.so" "$work/curl/lib/libcurl.so"

# The LuaJIT set-up (Debian's luajit2, OpenResty's LuaJIT): the interpreter and
# its headers; --lua-dir=/usr would pick lua5.1, found first in /usr/bin.
jit_bin=$(command -v luajit || true)
jit_inc=$(pkg-config --variable=includedir luajit 2>/dev/null)
[ -n "$jit_inc" ] || jit_inc=/usr/include/luajit-2.1

config() { # config NAME TREE [luajit]: a LuaRocks config with TREE as its only tree
    {
        echo "rocks_trees = { [[$2]] }"
        if [ "${3:-}" = luajit ]; then
            echo 'lua_interpreter = "luajit"'
            echo "variables = { LUA_BINDIR = [[${jit_bin%/*}]], LUA_INCDIR = [[$jit_inc]] }"
        fi
    } >"$work/$1.config.lua"
}
lr() { # lr CONFIG LUA_VERSION ARGS...: luarocks under that config, bounded in time
    lr_cfg=$1 lr_luav=$2
    shift 2
    LUAROCKS_CONFIG="$work/$lr_cfg.config.lua" timeout 300 luarocks --lua-version="$lr_luav" "$@"
}
make_rock() { # make_rock CONFIG LUA_VERSION TREE LOG VAR=VALUE...: luarocks make into TREE
    mr_cfg=$1 mr_luav=$2 mr_tree=$3 mr_log=$4
    shift 4
    (cd "$work/src" && lr "$mr_cfg" "$mr_luav" make --deps-mode=none --tree="$mr_tree" "$rockspec" "$@") \
        >"$mr_log" 2>&1
}

mock_ready() {
    i=0
    while [ ! -s "$work/mock/ready.json" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
    port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["https_port"])' \
        "$work/mock/ready.json" 2>/dev/null)
    want=$(timeout 30 python3 test/mockctl.py "$work/mock" expect wav-123456 |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["sha256"])' 2>/dev/null)
    [ -n "$port" ] && [ -n "$want" ]
}
port= want=
sha() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }

# LUA_INIT runs before the script in every interpreter (5.2+ read LUA_INIT
# when LUA_INIT_5_x is unset): it records which one the command ran under.
cat >"$work/probe.lua" <<'EOF'
local f = io.open(os.getenv("CMSREC_PROBE"), "w")
if f then f:write(_VERSION, jit and (" " .. jit.version) or "", "\n") f:close() end
EOF

# run_cmd LABEL CONFIG TREE COMMAND: the installed command downloads wav-123456
# to $work/LABEL.wav; the probe goes to $work/LABEL.probe, output to LABEL.out.
run_cmd() {
    rm -f "$work/$1.wav" "$work/$1.probe"
    LUAROCKS_CONFIG="$work/$2.config.lua" LUA_INIT="@$work/probe.lua" CMSREC_PROBE="$work/$1.probe" \
        timeout 60 "$3/bin/$4" get --quiet --url "https://127.0.0.1:$port" --ak mock-ak \
        --cafile "$work/mock/ca.pem" --call-id wav-123456 -o "$work/$1.wav" \
        >"$work/$1.out" 2>&1 </dev/null
}
# ran_under LABEL PATTERN [NOT]: the probe matches PATTERN (and not NOT)
ran_under() {
    grep -q "$2" "$work/$1.probe" 2>/dev/null || return 1
    [ -z "${3:-}" ] || ! grep -q "$3" "$work/$1.probe"
}
# got_bytes LABEL: the command succeeded and the file is what the mock served
got_bytes() { [ -n "$want" ] && [ "$(sha "$work/$1.wav")" = "$want" ]; }

# check_lua NAME LUA_VERSION INTERPRETER PROBE NOT_PROBE [VAR=VALUE...]:
# install into $work/tree-NAME, then the module and the commands.
check_lua() {
    name=$1 luav=$2 interp=$3 probe=$4 notprobe=$5
    shift 5
    tree=$work/tree-$name
    t0=$(date +%s)
    make_rock "$name" "$luav" "$tree" "$work/$name.build.log" "$@"
    tap $? "$name: luarocks make --deps-mode=none builds and installs the rock" ||
        diag "$work/$name.build.log"
    so=$tree/lib/lua/$luav/cmsrec.so
    test -f "$so" && lr "$name" "$luav" --tree="$tree" list --porcelain 2>/dev/null | cut -f1 | grep -qx cmsrec
    tap $? "$name: luarocks list shows cmsrec, its module is lib/lua/$luav/cmsrec.so"
    [ -n "$port" ] || mock_ready || diag "$work/mock.log"

    # The module, loaded by the interpreter from the tree (nothing from ./ or build/).
    rm -f "$work/$name.mod.wav"
    timeout 60 "$interp" -e "
local so, out = '$so', '$work/$name.mod.wav'
package.cpath = '$tree/lib/lua/$luav/?.so;' .. package.cpath:gsub('%./%?%.so;?', '')
local first
for t in package.cpath:gmatch('[^;]+') do
  local f = io.open((t:gsub('%?', 'cmsrec')))
  if f then f:close() first = t:gsub('%?', 'cmsrec') break end
end
assert(first == so, 'cmsrec would load from ' .. tostring(first))
local cmsrec = require 'cmsrec'
local data, info = cmsrec.download({ base_url = 'https://127.0.0.1:$port', ak = 'mock-ak',
  sk = 'mock-sk-0123456789abcdef', cafile = '$work/mock/ca.pem' }, { callID = 'wav-123456' })
assert(data, tostring(info))
local f = assert(io.open(out, 'wb')) f:write(data) f:close()
" >"$work/$name.mod.log" 2>&1 && [ -n "$want" ] && [ "$(sha "$work/$name.mod.wav")" = "$want" ]
    tap $? "$name: $interp loads the installed module, which downloads the bytes the mock served" ||
        diag "$work/$name.mod.log"

    # LuaRocks wraps the Lua script (it must compile under $interp to be
    # wrapped; a script copied as is would run whatever its #! line names).
    cmd_v=cmsrec-$("$interp" -e 'io.write((_VERSION:gsub("^Lua ", "")))')
    ok=0
    for c in cmsrec "$cmd_v"; do
        head -n 1 "$tree/bin/$c" 2>/dev/null | grep -qx '#!/bin/sh' &&
            grep -q "exec '[^']*/$interp' .*rocks-$luav/cmsrec/[^/]*/bin/$c'" "$tree/bin/$c" || ok=1
    done
    tap $ok "$name: bin/cmsrec and bin/$cmd_v are LuaRocks wrappers that exec $interp" ||
        for c in cmsrec "$cmd_v"; do head -n 3 "$tree/bin/$c" 2>&1 | sed "s|^|# bin/$c: |"; done

    run_cmd "$name" "$name" "$tree" cmsrec
    got_bytes "$name"
    tap $? "$name: the installed cmsrec command downloads the bytes the mock served"
    ran_under "$name" "$probe" "$notprobe"
    tap $? "$name: the installed cmsrec command ran under $interp ($(cat "$work/$name.probe" 2>/dev/null))"
    got_bytes "$name" && ran_under "$name" "$probe" "$notprobe" || diag "$work/$name.out"
    echo "# $name: $(($(date +%s) - t0)) s"
}

config lua5.1 "$work/tree-lua5.1"
check_lua lua5.1 5.1 lua5.1 '^Lua 5\.1$' LuaJIT CURL_INCDIR="$curl_inc"

# 5.4 with CURL_DIR: the compiler must get its include/ and lib/.
config lua5.4 "$work/tree-lua5.4"
check_lua lua5.4 5.4 lua5.4 '^Lua 5\.4$' '' CURL_DIR="$work/curl"
grep -q -- "-I\"$work/curl/include\"" "$work/lua5.4.build.log" &&
    grep -q -- "-L\"$work/curl/lib\"" "$work/lua5.4.build.log"
tap $? "CURL_DIR=<prefix> is honoured: the compiler got <prefix>/include and <prefix>/lib" ||
    diag "$work/lua5.4.build.log"

if [ -n "$jit_bin" ] && [ -f "$jit_inc/luajit.h" ]; then
    config luajit "$work/tree-luajit" luajit
    check_lua luajit 5.1 luajit '^Lua 5\.1 LuaJIT 2\.' '' CURL_INCDIR="$curl_inc"
    grep -q -- "-I\"$jit_inc\"" "$work/luajit.build.log"
    tap $? "luajit: the module was compiled against LuaJIT's headers ($jit_inc)" ||
        diag "$work/luajit.build.log"
else
    tap 0 "luajit: # SKIP luajit or its headers ($jit_inc) are not installed"
fi

# Two Luas in one tree: bin/ is shared. The later install takes bin/cmsrec
# (LuaRocks moves the earlier one aside to bin/cmsrec~); cmsrec-5.1 and
# cmsrec-5.4 keep both usable, also once one of them is removed.
shared=$work/tree-shared
config shared "$shared"
t0=$(date +%s)
make_rock shared 5.1 "$shared" "$work/shared-5.1.build.log" CURL_INCDIR="$curl_inc" &&
    make_rock shared 5.4 "$shared" "$work/shared-5.4.build.log" CURL_INCDIR="$curl_inc"
tap $? "shared tree: installing for 5.4 after 5.1 succeeds" ||
    diag "$work/shared-5.1.build.log" "$work/shared-5.4.build.log"
echo "# shared tree, bin/ after both installs:" $(ls "$shared/bin" 2>/dev/null)
for c in cmsrec-5.1:'^Lua 5\.1$' cmsrec-5.4:'^Lua 5\.4$' cmsrec:'^Lua 5\.4$'; do
    cmd=${c%%:*} pat=${c#*:}
    run_cmd "shared-$cmd" shared "$shared" "$cmd"
    got_bytes "shared-$cmd" && ran_under "shared-$cmd" "$pat"
    tap $? "shared tree: bin/$cmd downloads the served bytes under $(echo "$pat" | tr -d '^$\\')" ||
        diag "$work/shared-$cmd.out" "$work/shared-$cmd.probe"
done
lr shared 5.4 remove --tree="$shared" cmsrec >"$work/shared-remove.log" 2>&1
rc=$?
run_cmd shared-after shared "$shared" cmsrec-5.1
[ "$rc" -eq 0 ] && [ ! -e "$shared/bin/cmsrec-5.4" ] && got_bytes shared-after &&
    ran_under shared-after '^Lua 5\.1$'
tap $? "shared tree: once the 5.4 rock is removed, bin/cmsrec-5.1 still downloads under Lua 5.1" ||
    diag "$work/shared-remove.log" "$work/shared-after.out"
echo "# shared tree: $(($(date +%s) - t0)) s"

# A missing header stops the build before compiling, naming the header and the variables.
config missing "$work/tree-missing"
make_rock missing 5.4 "$work/tree-missing" "$work/missing.log" CURL_INCDIR="$work/empty"
rc=$?
[ "$rc" -ne 0 ] && grep -q "curl/curl.h in $work/empty" "$work/missing.log" &&
    grep -q "CURL_DIR or CURL_INCDIR" "$work/missing.log" && ! grep -q '^gcc' "$work/missing.log" &&
    [ ! -e "$work/tree-missing/lib/lua/5.4/cmsrec.so" ]
tap $? "a missing curl/curl.h fails the install with a message naming it and CURL_DIR/CURL_INCDIR"
diag "$work/missing.log"

echo "# luarocks suite: $(($(date +%s) - started)) s"
echo "1..$n"
exit $fail
