#!/bin/sh
# The OpenResty examples (examples/openresty/) in a real nginx in front of the
# mock CMS, driven with curl. Prints TAP; exits non-zero on a failure.
#
# For each example (capture, stream, thread), rendered with test values by
# test/nginx/render.py and run with one worker:
#   - recordings arrive byte for byte (sha256 = what the mock served), with
#     Content-Type and Content-Disposition from the bytes;
#   - no recording gives JSON 404 (streaming: never a complete 200), CMS
#     failures JSON 502, timeouts JSON 504, a bad request JSON 400;
#   - nothing of the browser's request (cookies, its Authorization) reaches
#     the CMS; way 2 leaves no spool file behind and answers 503 (the worker
#     alive) beyond $cmsrec_max_downloads;
#   - while three slow downloads run, /ping answers in under 50 ms, and the
#     three finish together (about the time of one).
# test/nginx/naive.conf (client:download in content_by_lua) then shows that the
# same measurements catch a blocked worker.
#
# Every nginx and the mock run under a private directory in /tmp and are
# stopped, and the directory removed, however the script ends.
set -u
cd "$(dirname "$0")/.." || exit 2
SLOW=2          # seconds each slow download takes (mock: slowwav-S)
PING_MAX=0.050  # seconds: /ping must answer faster than this during downloads
SK=mock-sk-0123456789abcdef
MODULES=/usr/lib/nginx/modules
WORKER_USER=www-data  # the examples' `user`: the workers run unprivileged

n=0 fail=0
tap() { # tap STATUS NAME
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fail=1; fi
}
diag() { sed 's/^/# /'; }
finish() { echo "1..$n"; exit $fail; }

if ! command -v nginx >/dev/null 2>&1 || [ ! -f "$MODULES/ngx_http_lua_module.so" ] ||
    [ ! -f "$MODULES/ndk_http_module.so" ]; then
    echo "ok 1 # SKIP nginx with the Lua module is not installed (make deps installs it)"
    echo "1..1"
    exit 0
fi

work=$(mktemp -d /tmp/cmsrec-nginx.XXXXXX) || exit 2
chmod 755 "$work" # the workers run as $WORKER_USER and read their prefix
mock_pid= ngx_pid= bg_pids= started=

# True while process $1 runs (a zombie, exited but not yet waited for, does not).
alive() {
    [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null
}

tree() { # tree PID: PID and all its descendants
    echo "$1"
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do tree "$c"; done
}

# $ngx_pid is timeout(1) running the nginx master, which forwards it the TERM.
stop_nginx() {
    [ -n "$ngx_pid" ] || return 0
    pids=$(tree "$ngx_pid")
    kill -TERM "$ngx_pid" 2>/dev/null
    i=0
    while alive "$ngx_pid" && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    for p in $pids; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
    wait "$ngx_pid" 2>/dev/null
    ngx_pid=
}

cleanup() {
    for p in $bg_pids; do kill "$p" 2>/dev/null; done
    stop_nginx
    if [ -n "$mock_pid" ]; then kill "$mock_pid" 2>/dev/null && wait "$mock_pid"; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

if [ ! -f build/luajit/cmsrec.so ]; then
    tap 1 "build/luajit/cmsrec.so is built (make LUA=luajit build)"
    finish
fi

# ---------------------------------------------------------------- the mock CMS
python3 test/mock_cms.py --state-dir "$work/mock" --max-lifetime 300 >"$work/mock.log" 2>&1 &
mock_pid=$!
started=$mock_pid
i=0
while [ ! -s "$work/mock/ready.json" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
mock_port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["https_port"])' \
    "$work/mock/ready.json" 2>/dev/null)
if [ -z "$mock_port" ]; then
    tap 1 "the mock CMS starts"
    diag <"$work/mock.log"
    finish
fi
cp "$work/mock/ca.pem" "$work/ca.pem" && chmod 644 "$work/ca.pem"
# The workers run as $WORKER_USER: they get copies they can read wherever the
# checkout is (a CI clone lives in a directory only its owner may enter).
mkdir -p "$work/lua" "$work/lib" &&
    cp examples/openresty/lua/*.lua "$work/lua/" && cp build/luajit/cmsrec.so "$work/lib/" &&
    chmod -R a+rX "$work/lua" "$work/lib" || exit 2

expect_sha() { # the sha256 of the mock's success body for callID $1
    python3 test/mockctl.py "$work/mock" expect "$1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["sha256"])'
}
SHA_WAV=$(expect_sha wav-3000000)
SHA_ZIP=$(expect_sha zip-3)
SHA_SLOW=$(expect_sha wav-160044) # slowwav-S serves the bytes of wav-160044

# ---------------------------------------------------------------- nginx
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_nginx NAME CONF [OLD NEW]...: render CONF with the test values into
# $work/NAME/conf/nginx.conf and run it (one worker; the master in the
# foreground of a background job). Sets $prefix and $base.
start_nginx() {
    name=$1 src=$2
    shift 2
    prefix=$work/$name
    mkdir -p "$prefix/conf" "$prefix/logs" "$prefix/tmp" "$prefix/spool" "$prefix/out"
    # (as root the workers run as $WORKER_USER; otherwise as the caller, who owns it)
    chown "$WORKER_USER" "$prefix/spool" 2>/dev/null; chmod 700 "$prefix/spool"
    port=$(free_port)
    base=http://127.0.0.1:$port
    python3 test/nginx/render.py "$src" "$prefix/conf/nginx.conf" \
        "worker_processes auto;" "worker_processes 1;" \
        "listen 127.0.0.1:8080;" "listen 127.0.0.1:$port;" \
        "/usr/local/share/cmsrec/openresty/?.lua" "$work/lua/?.lua" \
        "/usr/local/lib/lua/5.1/?.so" "$work/lib/?.so" \
        "$@" >"$prefix/render.log" 2>&1 || { diag <"$prefix/render.log"; return 1; }
    # timeout: should this script be killed outright, nginx still ends (as the mock does)
    env CMSREC_URL="https://127.0.0.1:$mock_port" CMSREC_AK=mock-ak CMSREC_SK="$SK" \
        CMSREC_CAFILE="$work/ca.pem" CMSREC_TIMEOUT=$((SLOW + 1)) \
        timeout -k 5 300 nginx -p "$prefix/" -c conf/nginx.conf -e logs/error.log -g 'daemon off;' \
        >"$prefix/logs/stdout.log" 2>&1 &
    ngx_pid=$!
    i=0
    while [ $i -lt 100 ]; do
        alive "$ngx_pid" || break
        if [ "$(curl -s --max-time 1 -o /dev/null -w '%{http_code}' "$base/ping")" = 200 ]; then
            started="$started $(tree "$ngx_pid")"
            return 0
        fi
        sleep 0.05
        i=$((i + 1))
    done
    cat "$prefix/logs/stdout.log" "$prefix/logs/error.log" 2>/dev/null | tail -n 20 | diag
    stop_nginx
    return 1
}

# ---------------------------------------------------------------- requests

# get NAME QUERY [CURL_ARGS...]: GET /recording?QUERY into $prefix/out/NAME.{body,head};
# sets $o (that path without extension), $code (HTTP status, 000 if none), $crc
# (curl's exit code), $ctype, $cdisp.
get() {
    o=$prefix/out/$1 q=$2
    shift 2
    curl -sS --max-time "${GET_TIMEOUT:-10}" -o "$o.body" -D "$o.head" -w '%{http_code}' "$@" \
        "$base/recording?$q" >"$o.code" 2>"$o.err"
    crc=$?
    code=$(cat "$o.code")
    ctype=$(header "$o.head" content-type)
    cdisp=$(header "$o.head" content-disposition)
}
header() { # header FILE NAME: the value of the last NAME header in FILE
    grep -i "^$2:" "$1" 2>/dev/null | tail -n 1 | cut -d: -f2- | sed 's/^ *//' | tr -d '\r'
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
json() { # json FILE KEY: a top-level field of a JSON file ("" if absent or not JSON)
    python3 -c 'import json, sys
try:
    v = json.load(open(sys.argv[1])).get(sys.argv[2])
except Exception:
    v = None
print("" if v is None else str(v).lower() if isinstance(v, bool) else v)' "$1" "$2"
}
explain() { # what the last request saw
    { echo "status $code, curl exit $crc, Content-Type '$ctype', Content-Disposition '$cdisp'"
      head -c 300 "$o.body" | tr -c '[:print:]\n' '.'; echo
      cat "$o.err"; tail -n 5 "$prefix/logs/error.log"; } | diag
}
check() { # check NAME COMMAND...: one TAP line; on failure, what the request saw
    name=$1
    shift
    if "$@"; then tap 0 "$name"; else tap 1 "$name"; explain; fi
}

is_recording() { # is_recording FILE_BASE CTYPE EXT SHA
    [ "$crc" -eq 0 ] && [ "$code" = 200 ] && [ "$ctype" = "$2" ] &&
        [ "$cdisp" = "attachment; filename=\"$1.$3\"" ] && [ "$(sha "$o.body")" = "$4" ]
}
is_json() { # is_json STATUS ERROR [KEY VALUE]
    [ "$crc" -eq 0 ] && [ "$code" = "$1" ] && [ "$ctype" = application/json ] &&
        [ "$(json "$o.body" error)" = "$2" ] &&
        { [ $# -lt 4 ] || [ "$(json "$o.body" "$3")" = "$4" ]; }
}
is_retry_503() { # the CMS's 503 with Retry-After: 7, as a retryable JSON 502
    is_json 502 cms status 503 && [ "$(header "$o.head" retry-after)" = 7 ] &&
        [ "$(json "$o.body" retryable)" = true ]
}
cms_saw_only_signed() { # the mock's last request: callID $1, signed, none of the browser's headers
    python3 test/mockctl.py "$work/mock" stats | python3 -c 'import json, sys
last = json.load(sys.stdin)["last"]
h = last["headers"]
sys.exit(not (last["callID"] == sys.argv[1] and last["auth_ok"] and "cookie" not in h
              and "x-forwarded-for" not in h))' "$1"
}
is_cut() { # a response that nginx cut: curl reports an empty reply (52), a
    # partial file (18) or a receive failure (56), not a timeout, and got no
    # complete 200
    case $crc in 18 | 52 | 56) true ;; *) false ;; esac
}

now() { date +%s.%N; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
ms() { awk -v a="$1" 'BEGIN { printf "%.1f ms", a * 1000 }'; }

# concurrency LABEL: three slow downloads (slowwav-$SLOW) started together,
# /ping timed three times while they run. Sets $ping_max, $inflight (1 if all
# three were running before and after every ping), $total (seconds until the
# last one finished) and $slow_ok (1 if all three got 200 and the right bytes).
concurrency() {
    t0=$(now)
    bg_pids=
    for k in 1 2 3; do
        curl -s --max-time 30 -o "$prefix/out/slow$k.body" -w '%{http_code} %{time_total}' \
            "$base/recording?callID=slowwav-$SLOW" >"$prefix/out/slow$k.w" 2>&1 &
        bg_pids="$bg_pids $!"
    done
    sleep 0.5
    ping_max=0 pings= inflight=1
    for k in 1 2 3; do
        for p in $bg_pids; do alive "$p" || inflight=0; done
        t=$(curl -s --max-time 30 -o /dev/null -w '%{time_total}' "$base/ping")
        for p in $bg_pids; do alive "$p" || inflight=0; done
        pings="$pings $(ms "$t")"
        lt "$ping_max" "$t" && ping_max=$t
        sleep 0.2
    done
    for p in $bg_pids; do wait "$p"; done
    bg_pids=
    total=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
    slow_ok=1
    for k in 1 2 3; do
        { [ "$(cut -d' ' -f1 "$prefix/out/slow$k.w")" = 200 ] &&
            [ "$(sha "$prefix/out/slow$k.body")" = "$SHA_SLOW" ]; } || slow_ok=0
    done
    echo "# $1: /ping took$pings while 3 downloads of $SLOW s ran (in flight: $inflight);" \
        "all 3 done in $total s (each: $(cut -d' ' -f2 "$prefix"/out/slow?.w | tr '\n' ' ')s)"
}

nonblocking_checks() { # nonblocking_checks LABEL
    concurrency "$1"
    [ "$inflight" = 1 ] && lt "$ping_max" "$PING_MAX"
    tap $? "$1: /ping answers in < 50 ms while three slow downloads are in flight (max $(ms "$ping_max"))"
    [ "$slow_ok" = 1 ] && lt "$total" "$(awk -v s=$SLOW 'BEGIN { print s * 1.5 + 0.5 }')"
    tap $? "$1: three $SLOW s downloads started together arrive intact in about $SLOW s, not $((3 * SLOW)) ($total s)"
    [ "$slow_ok" = 1 ] || { cat "$prefix"/out/slow?.w; echo; tail -n 5 "$prefix/logs/error.log"; } | diag
}

# Checks shared by the three examples.
common_checks() { # common_checks LABEL
    get wav "callID=wav-3000000"
    check "$1: a 3 MB WAV arrives byte for byte as audio/wav, wav-3000000.wav" \
        is_recording wav-3000000 audio/wav wav "$SHA_WAV"
    get zip "callID=zip-3"
    check "$1: a ZIP bundle arrives byte for byte as application/zip, zip-3.zip" \
        is_recording zip-3 application/zip zip "$SHA_ZIP"
    get private "callID=wav-1000" -H "Cookie: session=browser-secret" \
        -H "Authorization: Basic YnJvd3Nlcjpz" -H "X-Forwarded-For: 192.0.2.1"
    check "$1: nothing of the browser's request (cookie, authorization) reaches the CMS" \
        eval '[ "$code" = 200 ] && cms_saw_only_signed wav-1000'
    get invalid "beginTime=20250530120000"
    check "$1: no callID: JSON 400 naming the field" is_json 400 invalid field callID
    get h503 "callID=http-503"
    check "$1: the CMS answers 503: JSON 502, retryable, with its Retry-After" is_retry_503
    get auth "callID=auth-401"
    check "$1: the CMS rejects the request (401): JSON 502 kind auth" is_json 502 cms kind auth
    get tmo "callID=slowheaders-$((SLOW + 3))"
    check "$1: the CMS does not answer in time: JSON 504" is_json 504 timeout
}

# ================================================================ way 1, buffered
if start_nginx capture examples/openresty/nginx-capture.conf \
    "/etc/cmsrec/cms-ca.pem" "$work/ca.pem" \
    "proxy_ssl_name cms.example.com;" "proxy_ssl_name localhost;" \
    "proxy_read_timeout 60s;" "proxy_read_timeout 1s;"; then
    tap 0 "capture: nginx runs examples/openresty/nginx-capture.conf"
    common_checks capture
    get nf "callID=notfound"
    check "capture: no recording (JSON at HTTP 200): JSON 404 notfound, never a 200" \
        is_json 404 notfound callID notfound
    get html "callID=html"
    check "capture: an HTML page at HTTP 200: JSON 502 kind protocol" is_json 502 cms kind protocol
    get drop "callID=drop-200000"
    check "capture: the CMS connection breaks off midway: JSON 502, no partial recording" \
        is_json 502 cms
    nonblocking_checks capture
    stop_nginx
else
    tap 1 "capture: nginx runs examples/openresty/nginx-capture.conf"
fi

# ================================================================ way 1, streaming
if start_nginx stream examples/openresty/nginx-stream.conf \
    "/etc/cmsrec/cms-ca.pem" "$work/ca.pem" \
    "proxy_ssl_name cms.example.com;" "proxy_ssl_name localhost;" \
    "proxy_read_timeout 60s;" "proxy_read_timeout 1s;"; then
    tap 0 "stream: nginx runs examples/openresty/nginx-stream.conf"
    common_checks stream
    for cid in notfound wsjson flow bom html; do
        GET_TIMEOUT=5 get "cut-$cid" "callID=$cid"
        check "stream: '$cid' (an error at HTTP 200) is never a complete 200: the response is cut" is_cut
    done
    get drop "callID=drop-200000"
    check "stream: the CMS connection breaks off midway: the browser sees an incomplete response" is_cut
    nonblocking_checks stream
    stop_nginx
else
    tap 1 "stream: nginx runs examples/openresty/nginx-stream.conf"
fi

# ================================================================ way 2, thread pool
spool_empty() { # true when $prefix/spool is empty, waiting up to 2 s
    i=0
    while [ -n "$(ls -A "$prefix/spool")" ] && [ $i -lt 40 ]; do sleep 0.05; i=$((i + 1)); done
    [ -z "$(ls -A "$prefix/spool")" ] || { ls -lA "$prefix/spool" | diag; return 1; }
}
if start_nginx thread examples/openresty/nginx-thread.conf \
    "set \$cmsrec_spool /var/lib/nginx/cmsrec;" "set \$cmsrec_spool $work/thread/spool;" \
    "thread_pool cmsrec threads=16 max_queue=64;" "thread_pool cmsrec threads=3 max_queue=3;" \
    "set \$cmsrec_max_downloads 64;" "set \$cmsrec_max_downloads 3;"; then
    tap 0 "thread: nginx runs examples/openresty/nginx-thread.conf"
    common_checks thread
    get nf "callID=notfound"
    check "thread: no recording (JSON at HTTP 200): JSON 404 notfound, never a 200" \
        is_json 404 notfound callID notfound
    get drop "callID=drop-200000"
    check "thread: the CMS connection breaks off midway: JSON 502 kind network" \
        is_json 502 cms kind network
    nonblocking_checks thread
    spool_empty
    tap $? "thread: every recording served was removed from the spool"
    # more downloads than the pool's queue holds: 503 at once, the worker lives on
    bg_pids=
    for k in 1 2 3; do
        curl -s --max-time 10 -o /dev/null "$base/recording?callID=slowwav-1" &
        bg_pids="$bg_pids $!"
    done
    sleep 0.3
    get busy "callID=wav-1000"
    for p in $bg_pids; do wait "$p"; done
    bg_pids=
    check "thread: a 4th download while 3 (= max_queue) run: JSON 503 busy with Retry-After" \
        eval 'is_json 503 busy && [ "$(header "$o.head" retry-after)" = 5 ]'
    get after "callID=wav-1000"
    ! grep -q 'exited on signal' "$prefix/logs/error.log" && [ "$code" = 200 ]
    tap $? "thread: the worker survives a full thread pool and serves the next download"
    # a browser that gives up while the thread downloads: the file goes all the same
    curl -s --max-time 0.5 -o /dev/null "$base/recording?callID=slowwav-1" 2>/dev/null
    sleep 1
    spool_empty
    tap $? "thread: a browser that gives up midway leaves nothing in the spool"
    stop_nginx
else
    tap 1 "thread: nginx runs examples/openresty/nginx-thread.conf"
fi

# ================================================================ the blocking way
if start_nginx naive test/nginx/naive.conf; then
    concurrency naive
    lt "$PING_MAX" "$ping_max"
    tap $? "naive: with client:download in content_by_lua, /ping waits for the downloads (max $(ms "$ping_max")): the check above can fail"
    lt "$(awk -v s=$SLOW 'BEGIN { print s * 2.5 }')" "$total"
    tap $? "naive: three blocking downloads run one after the other ($total s for 3 x $SLOW s)"
    stop_nginx
else
    tap 1 "naive: nginx runs test/nginx/naive.conf"
fi

# ================================================================ nothing left
stop_nginx
kill "$mock_pid" 2>/dev/null && wait "$mock_pid"
mock_pid=
left=
for p in $started; do alive "$p" && left="$left $p"; done
[ -z "$left" ]
tap $? "every nginx process and the mock CMS have exited${left:+ (still running:$left)}"
finish
