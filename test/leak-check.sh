#!/bin/sh
# Leak check: run test/leak_workload.lua once and four times against the
# AddressSanitizer build with LeakSanitizer on. libcurl and OpenSSL keep a few
# KB of one-time global state (curl_global_init is never undone while the
# module may be loaded), so the check is that the leaked total does not grow
# with the workload. Prints TAP.
set -u
cd "$(dirname "$0")/.." || exit 2
LUA=${LUA:-lua5.4}
preload="$(cc -print-file-name=libasan.so) $(cc -print-file-name=libubsan.so)"
summary() {
    out=$(CMSREC_CPATH='build/asan/?.so' LD_PRELOAD="$preload" \
        ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=exitcode=0 "$LUA" test/leak_workload.lua "$1" 2>&1)
    echo "$out" | grep -q "workload done: $1" || { echo "$out" | sed 's/^/# /' >&2; echo FAILED; return; }
    echo "$out" | sed -n 's/^SUMMARY: AddressSanitizer: \([0-9]*\) byte(s) leaked in \([0-9]*\) allocation.*/\1 bytes in \2 allocations/p'
}
one=$(summary 1)
four=$(summary 4)
one=${one:-0 bytes in 0 allocations}
four=${four:-0 bytes in 0 allocations}
if [ "$one" != FAILED ] && [ "$one" = "$four" ]; then
    echo "ok 1 - leaks do not grow with the workload (1 and 4 runs: $one, one-time global init)"
else
    echo "not ok 1 - leaks grow with the workload: 1 run: $one; 4 runs: $four"
fi
echo "1..1"
