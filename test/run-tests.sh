#!/bin/sh
# Runs every test suite and ends with one line: "N passed, N failed, N skipped".
#
# Suites (SUITES to choose, default all):
#   unit      C unit tests of src/ (ASan/UBSan build), no Lua, no network
#   busted    the specs against build/5.4/cmsrec.so and the mock CMS
#   busted-V  the same under Lua V (5.1 5.2 5.3 5.4 luajit) against build/V/cmsrec.so
#   asan      the same specs against build/asan/cmsrec.so under AddressSanitizer
#   leak      LeakSanitizer: leaked bytes must not grow with the workload
#   fuzz      each libFuzzer harness (build/fuzz, make fuzz-build) on its seed
#             corpus and a short run of mutations: one ok per harness
#   valgrind  a subset of the specs under valgrind memcheck, build/5.4/cmsrec.so
#   rss       a long loop of downloads and errors in one process: RSS must not grow
#   luarocks  `luarocks make --deps-mode=none` into scratch trees (5.1, 5.4,
#             LuaJIT), then a download and the installed command with each
#   nginx     OpenResty examples in a real nginx in front of the mock CMS
# Each suite prints TAP; a suite that dies without reporting counts as one failure.
set -u
cd "$(dirname "$0")/.." || exit 2
SUITES=${SUITES:-"unit busted busted-5.1 busted-5.2 busted-5.3 busted-luajit asan leak fuzz valgrind rss luarocks nginx"}
# The interpreter of the busted and asan suites (the Makefile's LUA is a version).
LUA=${CMSREC_LUA:-lua5.4}
log=$(mktemp -d /tmp/cmsrec-tests.XXXXXX)
trap 'rm -rf "$log"' EXIT INT TERM
passed=0 failed=0 skipped=0

run_suite() {
    name=$1
    shift
    echo "== $name"
    "$@" >"$log/$name.tap" 2>"$log/$name.err"
    rc=$?
    cat "$log/$name.tap"
    p=$(grep -c '^ok ' "$log/$name.tap" | tr -d ' ')
    s=$(grep -c '^ok .*# SKIP' "$log/$name.tap" | tr -d ' ')
    f=$(grep -c '^not ok ' "$log/$name.tap" | tr -d ' ')
    p=$((p - s))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "not ok - suite '$name' exited $rc without reporting a failure"
        f=1
    fi
    if [ "$f" -ne 0 ] || [ "$rc" -ne 0 ]; then
        echo "-- stderr of $name (last 40 lines):"
        tail -n 40 "$log/$name.err"
    fi
    echo "-- $name: $p passed, $f failed, $s skipped"
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

asan_lib=$(cc -print-file-name=libasan.so)
ubsan_lib=$(cc -print-file-name=libubsan.so)
for suite in $SUITES; do
    case $suite in
    unit) run_suite unit ./build/unit_core ;;
    busted) run_suite busted env CMSREC_CPATH='build/5.4/?.so' CMSREC_LUA="$LUA" \
        busted --lua="$LUA" -o TAP spec/ ;;
    busted-*)
        v=${suite#busted-}
        case $v in luajit) bin=luajit ;; *) bin=lua$v ;; esac
        run_suite "$suite" env CMSREC_CPATH="build/$v/?.so" CMSREC_LUA="$bin" \
            busted --lua="$bin" -o TAP spec/ ;;
    asan)
        # The interpreter is not instrumented: preload the runtimes. Leak
        # checking is off because busted exits without closing its Lua state.
        run_suite asan env CMSREC_CPATH='build/asan/?.so' LD_PRELOAD="$asan_lib $ubsan_lib" \
            ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1 \
            busted --lua="$LUA" -o TAP spec/ ;;
    leak) run_suite leak sh test/leak-check.sh ;;
    fuzz) run_suite fuzz sh fuzz/run.sh --smoke ;;
    valgrind) run_suite valgrind sh test/valgrind-check.sh ;;
    rss) run_suite rss sh test/rss-check.sh ;;
    luarocks) run_suite luarocks sh test/luarocks-install.sh ;;
    nginx) run_suite nginx sh test/nginx-check.sh ;;
    *) echo "unknown suite '$suite'"; failed=$((failed + 1)) ;;
    esac
done
# Every mock a suite started must have been stopped: an orphan is a mock whose
# state directory is gone (read from /proc: procps may not be installed).
orphans=0
for cmdline in /proc/[0-9]*/cmdline; do
    args=$(tr '\0' ' ' 2>/dev/null <"$cmdline") || continue
    case $args in
    *mock_cms.py\ --state-dir\ /tmp/cmsrec-*)
        dir=${args#*--state-dir }
        dir=${dir%% *}
        pid=${cmdline#/proc/}
        pid=${pid%/cmdline}
        # Seen from the mock's own root: one in a chroot or container is not ours.
        if [ ! -d "/proc/$pid/root$dir" ]; then
            kill "$pid" 2>/dev/null
            orphans=$((orphans + 1))
        fi ;;
    esac
done
if [ "$orphans" -ne 0 ]; then
    echo "not ok - $orphans mock CMS server(s) left running after their tests (now stopped)"
    failed=$((failed + 1))
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
