#!/bin/sh
# valgrind memcheck over a subset of the specs and the leak workload, against
# build/5.4/cmsrec.so under lua5.4 (the normal build: no sanitizer runtime to
# get in valgrind's way). Leak checking is off (the leak suite does that with
# LeakSanitizer); any other report fails the file. Children are not traced:
# the mock CMS (python) and the shells and CLIs the specs start run natively.
# busted runs in the traced interpreter itself (lua5.4 /usr/bin/busted, no
# --lua, which would exec another one). Prints TAP: one line per spec file.
#
#   download  memory, chunked, ZIP detection, keep-alive, signing variants
#   stream    sinks, chunks and readers (read, failed, abandoned, closed)
#   zip       unzip into directories, every refused archive
#   errors    every error kind the mock can produce
#   bulk      retries and download_many, without its three timed cases
#             (max_rate pacing, the speed-up): valgrind makes them meaningless
#   tls       client certificates, pins, tls_min, the SK's pages, the trace
#   leak_workload.lua  every path once (the leak suite's workload)
# First a planted use-after-free, which must be reported: the check can fail.
set -u
cd "$(dirname "$0")/.." || exit 2
LUA=lua5.4
BUSTED=$(command -v busted)
tmp=$(mktemp -d /tmp/cmsrec-valgrind.XXXXXX)
trap 'rm -rf "$tmp"' EXIT INT TERM
n=0 bad=0

vg() {
    log=$1
    shift
    valgrind --tool=memcheck --error-exitcode=99 --leak-check=no --trace-children=no \
        --num-callers=30 --log-file="$log" "$@"
}

# "N errors" from a log; empty when valgrind wrote no summary (it died).
errors_in() {
    sed -n 's/^==[0-9]*== ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$1" | tail -n 1
}

report() { # name, exit code, log, output, tests line
    n=$((n + 1))
    errs=$(errors_in "$3")
    if [ "$2" -eq 0 ] && [ "${errs:-x}" = 0 ]; then
        echo "ok $n - valgrind: $1: $5, no memcheck report"
    else
        bad=$((bad + 1))
        echo "not ok $n - valgrind: $1: exit $2, ${errs:-no} memcheck errors"
        grep -E '^not ok' "$4" | head -n 10 | sed 's/^/# /'
        grep -v -E '^==[0-9]+== *$' "$3" | grep -A 25 -m 3 -E '== (Invalid|Conditional|Use of|Syscall|Mismatched|Source and)' |
            head -n 80 | sed 's/^/# /'
    fi
}

# The canary: memcheck must see this read of freed memory.
cat >"$tmp/canary.c" <<'EOF'
#include <stdlib.h>
int main(void) { volatile char *p = malloc(8); free((void *)p); return p[1]; }
EOF
cc -O0 -g -o "$tmp/canary" "$tmp/canary.c"
vg "$tmp/canary.log" "$tmp/canary" >/dev/null 2>&1
rc=$?
n=$((n + 1))
if [ "$rc" -eq 99 ] && [ "$(errors_in "$tmp/canary.log")" = 1 ]; then
    echo "ok $n - valgrind reports a planted use-after-free (the check can fail)"
else
    bad=$((bad + 1))
    echo "not ok $n - valgrind did not report a planted use-after-free (exit $rc)"
fi

for spec in download stream zip errors bulk tls; do
    filter=
    [ $spec = bulk ] && filter="--filter-out=max_rate --filter-out=faster"
    start=$(date +%s)
    CMSREC_CPATH='build/5.4/?.so' CMSREC_LUA=$LUA \
        vg "$tmp/$spec.log" $LUA "$BUSTED" -o TAP $filter "spec/${spec}_spec.lua" \
        >"$tmp/$spec.out" 2>&1
    rc=$?
    tests=$(grep -c '^ok ' "$tmp/$spec.out")
    report "spec/${spec}_spec.lua" $rc "$tmp/$spec.log" "$tmp/$spec.out" \
        "$tests tests passed in $(($(date +%s) - start)) s"
done

start=$(date +%s)
CMSREC_CPATH='build/5.4/?.so' vg "$tmp/workload.log" $LUA test/leak_workload.lua 1 \
    >"$tmp/workload.out" 2>&1
rc=$?
[ "$rc" -eq 0 ] && ! grep -q 'workload done: 1' "$tmp/workload.out" && rc=1
report test/leak_workload.lua $rc "$tmp/workload.log" "$tmp/workload.out" \
    "every path once in $(($(date +%s) - start)) s"
echo "1..$n"
[ $bad -eq 0 ]
