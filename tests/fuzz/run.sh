#!/bin/sh
# run.sh [-t SECONDS] [BUILD_DIR] — bounded run of the fuzzers: the qcow2
# harnesses, fuzz-qmp (the QMP framing, parser and argument checks) and
# fuzz-inject-rules (the inject filter's rules and their query round trip).
#
# Sets up BUILD_DIR (default build-fuzz-clang) with clang if it does not
# exist, builds the harnesses, generates the qcow2 seed corpus with qemu-img
# (make-seeds.sh; fuzz-qmp's seeds are tests/fuzz/qmp-seeds with the
# dictionary qmp.dict; fuzz-inject-rules' are tests/fuzz/inject-seeds), then
# runs each harness for SECONDS (default 60) with -max_total_time.  The corpus grows in BUILD_DIR/fuzz/corpus-<harness>
# between runs; a crash leaves its input in BUILD_DIR/fuzz/artifacts and the
# script exits 1 (reproduce with: BUILD_DIR/tests/fuzz/<harness> <input>;
# FUZZ_TRACE=1 prints the write harness's requests).
set -eu
secs=60
if [ "${1:-}" = "-t" ]; then secs=$2; shift 2; fi
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$src/build-fuzz-clang}
case $build in /*) ;; *) build=$src/$build ;; esac

if [ ! -f "$build/build.ninja" ]; then
    CC=clang meson setup "$build" "$src" >/dev/null
fi
harnesses="fuzz-qcow2-open fuzz-qcow2-write fuzz-qmp fuzz-inject-rules"
# shellcheck disable=SC2046
ninja -C "$build" -j2 $(for h in $harnesses; do echo "tests/fuzz/$h"; done) >/dev/null

work=$build/fuzz
rm -rf "$work/seeds"
mkdir -p "$work/artifacts"
"$src/tests/fuzz/make-seeds.sh" "$work/seeds"

status=0
for h in $harnesses; do
    corpus=$work/corpus-$h
    seeds=$work/seeds extra=
    case $h in
    fuzz-qmp) seeds=$src/tests/fuzz/qmp-seeds extra=-dict=$src/tests/fuzz/qmp.dict ;;
    fuzz-inject-rules) seeds=$src/tests/fuzz/inject-seeds ;;
    esac
    mkdir -p "$corpus"
    log=$work/$h.log
    # -rss_limit_mb: a fuzzed header may ask for big (bounded) tables
    if "$build/tests/fuzz/$h" -max_total_time="$secs" -rss_limit_mb=2048 \
            -timeout=20 -print_final_stats=1 \
            -artifact_prefix="$work/artifacts/$h-" ${extra:+"$extra"} "$corpus" "$seeds" \
            >"$log" 2>&1; then
        echo "$h: ok ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" \
            | grep -o '[0-9]*$') runs, $(ls "$corpus" | wc -l) corpus inputs)"
    else
        echo "$h: FAILED, see $log and $work/artifacts/"
        grep -m5 -E 'ERROR|SUMMARY|outside|refused at open' "$log" || true
        status=1
    fi
done
exit $status
