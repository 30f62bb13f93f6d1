#!/usr/bin/env bash
# Run every GPU check in benchmarks/gpu/ one after the other, each writing its figures to
# $OUT/<script>.json and its output to $OUT/<script>.log. Exit status: 0 when every check passed,
# else the number of checks that failed (each check's own status is in its log and JSON).
#
#   OUT=/tmp/gpu-checks bash benchmarks/gpu/run_all.sh
#
# A check is any benchmarks/gpu/*.py that takes --out FILE.json. GPU_CHECK_TIMEOUT (seconds,
# default 540) bounds each one from outside, beyond the script's own time guard.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${OUT:?set OUT to the directory the figures are written to}"
mkdir -p "$OUT"
limit="${GPU_CHECK_TIMEOUT:-540}"
failed=0
for script in "$here"/*.py; do
    [ -e "$script" ] || continue
    name="$(basename "$script" .py)"
    echo "== $name"
    start=$(date +%s)
    timeout --signal=INT --kill-after=30 "$limit" python "$script" --out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $(( $(date +%s) - start )) s"
    if [ "$rc" -ne 0 ]; then
        failed=$((failed + 1))
    fi
done
echo "== $failed check(s) failed; figures in $OUT"
exit "$failed"
