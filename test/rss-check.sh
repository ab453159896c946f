#!/bin/sh
# RSS growth: test/rss_workload.lua runs 2000 warm-up iterations and then
# RSS_ITERATIONS (default 20000) of mixed downloads and errors in one process
# against build/5.4/cmsrec.so; its resident set may grow by RSS_BOUND_KIB
# (default 1024) at most between the two samples. Measured on this loop:
# 30 to 150 KiB of growth over 5000 to 20000 iterations (allocator noise,
# not proportional to the count); a planted 64-byte leak per response grew it
# by 5.2 MiB. So the bound is ten times the noise and catches a leak of about
# 50 bytes an iteration. Prints TAP, the figures on a comment line.
set -u
cd "$(dirname "$0")/.." || exit 2
iterations=${RSS_ITERATIONS:-20000}
bound=${RSS_BOUND_KIB:-1024}
out=$(CMSREC_CPATH='build/5.4/?.so' lua5.4 test/rss_workload.lua "$iterations" 2000 2>&1)
rc=$?
steps=$(echo "$out" | sed -n 's/^steps //p')
mismatches=$(echo "$out" | sed -n 's/^mismatches //p')
set -- $(echo "$out" | sed -n 's/^rss //p')
if [ "$rc" -ne 0 ] || [ $# -ne 4 ]; then
    echo "not ok 1 - the RSS workload did not finish (exit $rc)"
    echo "$out" | tail -n 20 | sed 's/^/# /'
    echo "1..1"
    exit 1
fi
start=$1 end=$2 n=$3 secs=$4
if [ "${mismatches:-1}" -eq 0 ]; then
    echo "ok 1 - every step of the loop, warm-up included, ended as expected ($steps)"
else
    echo "not ok 1 - $mismatches steps of the loop did not end as expected ($steps)"
    echo "$out" | grep -v '^steps \|^rss \|^mismatches ' | head -n 5 | sed 's/^/# /'
fi
growth=$((end - start))
if [ "$growth" -le "$bound" ]; then
    echo "ok 2 - RSS grew by $growth KiB over $n iterations (at most $bound KiB)"
else
    echo "not ok 2 - RSS grew by $growth KiB over $n iterations (more than $bound KiB)"
fi
echo "# rss: start $start KiB, end $end KiB, $n iterations in $secs s (after 2000 warm-up)"
echo "1..2"
