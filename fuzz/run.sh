#!/bin/sh
# Runs the libFuzzer harnesses built in build/fuzz (make fuzz-build); with no
# NAME, every fuzz/fuzz_NAME.c.
#
#   sh fuzz/run.sh [NAME...]          each for FUZZ_SECONDS (default 60), from
#                                     the seeds in fuzz/corpus/NAME; new inputs
#                                     go to build/fuzz/corpus-NAME, a crash to
#                                     build/fuzz/NAME-crash-*; a summary line each
#   sh fuzz/run.sh --smoke [NAME...]  TAP for the test suite: the seeds (regress-*
#                                     included), then FUZZ_RUNS (default 50000)
#                                     mutations or 10 s, whichever ends first;
#                                     nothing is written to the repository
set -u
cd "$(dirname "$0")/.." || exit 2
smoke=0
if [ "${1:-}" = --smoke ]; then
    smoke=1
    shift
fi
if [ $# -eq 0 ]; then
    for f in fuzz/fuzz_*.c; do
        f=${f#fuzz/fuzz_}
        set -- "$@" "${f%.c}"
    done
fi

# -max_len: room for every seed, and past the limits the code checks
# (5 fields of 256 bytes; CMS_SNIFF_MAX 1024 blanks; small archives).
max_len() {
    case $1 in
    request) echo 1400 ;;
    classify) echo 4096 ;;
    url) echo 600 ;;
    trace) echo 2048 ;;
    zip) echo 8192 ;;
    *) echo 4096 ;;
    esac
}

# "cov: C ft: F corp: N/SIZE exec/s: E" of libFuzzer's last status line.
stats() {
    grep -E '^#[0-9]+[[:space:]]+(DONE|INITED|NEW|REDUCE|pulse)' "$1" | tail -n 1 |
        sed -n 's/.*\(cov: [0-9]* ft: [0-9]* corp: [0-9]*\/[0-9a-zA-Z]*\).*exec\/s: \([0-9]*\).*/\1 exec\/s: \2/p'
}

# The lines that say what went wrong, for a failed run.
crash_lines() {
    grep -E 'check failed|ERROR|runtime error|SUMMARY|Test unit written|^    #[0-9]+ ' "$1" |
        grep -v 'fuzzer::\|libc\.so\|libc_start\|_start (' | head -n 20
}

# A harness's dictionary, fuzz/NAME.dict, when it has one.
dict() {
    [ -f "fuzz/$1.dict" ] && echo "-dict=fuzz/$1.dict"
}

n=0 failed=0
for name in "$@"; do
    n=$((n + 1))
    bin=build/fuzz/fuzz_$name
    if [ ! -x "$bin" ]; then
        [ $smoke = 1 ] && echo "not ok $n - fuzz_$name is not built (make fuzz-build)" ||
            echo "fuzz_$name is not built (make fuzz-build)"
        failed=$((failed + 1))
        continue
    fi
    log=build/fuzz/$name.log
    if [ $smoke = 1 ]; then
        out=$(mktemp -d /tmp/cmsrec-fuzz-smoke.XXXXXX)
        "$bin" -runs="${FUZZ_RUNS:-50000}" -max_total_time=10 -timeout=10 $(dict "$name") \
            -max_len="$(max_len "$name")" -artifact_prefix="build/fuzz/$name-" \
            "$out" "fuzz/corpus/$name" >"$log" 2>&1
        rc=$?
        rm -rf "$out"
        seeds=$(ls "fuzz/corpus/$name" | wc -l | tr -d ' ')
        runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log")
        if [ $rc -eq 0 ]; then
            echo "ok $n - fuzz_$name: $seeds seeds and ${runs:-?} runs without a finding"
            echo "# fuzz_$name: $(stats "$log")"
        else
            echo "not ok $n - fuzz_$name: a finding (exit $rc); log: $log"
            crash_lines "$log" | sed 's/^/# /'
            failed=$((failed + 1))
        fi
        continue
    fi
    mkdir -p "build/fuzz/corpus-$name"
    echo "== fuzz_$name for ${FUZZ_SECONDS:-60} s (log: $log)"
    "$bin" -max_total_time="${FUZZ_SECONDS:-60}" -timeout=25 $(dict "$name") \
        -max_len="$(max_len "$name")" \
        -print_final_stats=1 -artifact_prefix="build/fuzz/$name-" \
        "build/fuzz/corpus-$name" "fuzz/corpus/$name" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log")
    if [ $rc -eq 0 ]; then
        echo "fuzz_$name: ${runs:-?}, $(stats "$log")"
    else
        echo "fuzz_$name: a finding (exit $rc)"
        crash_lines "$log"
        failed=$((failed + 1))
    fi
done
[ $smoke = 1 ] && echo "1..$n"
[ $failed -eq 0 ]
