#!/bin/sh
# make bench: start nginx on loopback with TLS, serving the CMS's POST from
# static files, then run bench/run.lua (the measurements and the table).
#
# Everything lives in a private directory in /tmp (certificates, the 300 MB
# recording, nginx's prefix), removed with nginx stopped however this ends.
# Environment (all optional): BENCH_ONLY=server,disk,mem,many,sign picks
# sections; BENCH_BIG_BYTES (300000000) and BENCH_SMALL_N (1000) the sizes;
# BENCH_REPS overrides every repetition count.
set -u
cd "$(dirname "$0")/.." || exit 2
MODULES=/usr/lib/nginx/modules

for tool in nginx curl openssl lua5.4 build/bench/measure build/5.4/cmsrec.so; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -e "$tool" ]; then
        echo "bench: $tool is missing (make bench installs and builds what it needs)" >&2
        exit 2
    fi
done
if [ ! -f "$MODULES/ngx_http_lua_module.so" ] || [ ! -f "$MODULES/ndk_http_module.so" ]; then
    echo "bench: nginx's Lua module is missing (libnginx-mod-http-lua)" >&2
    exit 2
fi

work=$(mktemp -d /tmp/cmsrec-bench.XXXXXX) || exit 2
chmod 755 "$work" # nginx's workers may run as another user and read the data here
ngx_pid=

alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }

# $ngx_pid is timeout(1) running the nginx master, which forwards it the TERM
cleanup() {
    if [ -n "$ngx_pid" ]; then
        kill -TERM "$ngx_pid" 2>/dev/null
        i=0
        while alive "$ngx_pid" && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
        alive "$ngx_pid" && kill -KILL "$ngx_pid" 2>/dev/null
        wait "$ngx_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/conf" "$work/logs" "$work/tmp" "$work/data"
if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$work/server.key" -out "$work/server.pem" >"$work/openssl.log" 2>&1; then
    cat "$work/openssl.log" >&2
    exit 2
fi

# The recordings: a WAV header and random bytes (nothing compresses them)
wav() { # wav BYTES FILE
    python3 -c 'import struct, sys
n = int(sys.argv[1])
sys.stdout.buffer.write(b"RIFF" + struct.pack("<I", min(n - 8, 0xFFFFFFFF)) + b"WAVE" + b"fmt " +
    struct.pack("<IHHIIHH", 16, 6, 1, 8000, 8000, 1, 8) + b"data" + struct.pack("<I", n - 44))' "$1" >"$2" &&
        head -c $(($1 - 44)) /dev/urandom >>"$2"
}
wav "${BENCH_BIG_BYTES:-300000000}" "$work/data/big.wav" && wav 2000 "$work/data/small.wav" || exit 2
chmod -R a+rX "$work"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
user=
if [ "$(id -u)" -eq 0 ]; then # the workers must not run as root
    if id www-data >/dev/null 2>&1; then user="user www-data;"; else user="user nobody nogroup;"; fi
fi
sed -e "s|@USER@|$user|" -e "s|@PORT@|$port|" -e "s|@DIR@|$work|g" \
    -e "s|@SSL_BUFFER@|${BENCH_SSL_BUFFER:-16k}|" bench/nginx.conf >"$work/conf/nginx.conf"
# timeout: should this script be killed outright, nginx still ends
timeout -k 5 1800 nginx -p "$work/" -c conf/nginx.conf -e logs/error.log -g 'daemon off;' \
    >"$work/logs/stdout.log" 2>&1 &
ngx_pid=$!
url=https://127.0.0.1:$port
i=0
until [ "$(curl -s --cacert "$work/server.pem" -X POST --data-binary '{}' -o /dev/null \
    -w '%{http_code}' "$url/small/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile")" = 200 ]; do
    i=$((i + 1))
    if [ $i -ge 100 ] || ! alive "$ngx_pid"; then
        echo "bench: nginx did not start:" >&2
        cat "$work/logs/stdout.log" "$work/logs/error.log" >&2 2>/dev/null
        exit 2
    fi
    sleep 0.05
done

BENCH_DIR=$work BENCH_URL=$url LUA_CPATH="build/5.4/?.so;;" lua5.4 bench/run.lua
