#!/bin/sh
# run-lint.sh SRCROOT — checks that the thread-safety annotations still bite.
#
# Every tests/lint/fail-*.c must be REFUSED by
# `clang -fsyntax-only -Wthread-safety -Werror`, and refused for a
# thread-safety reason (a syntax error does not count); every ok-*.c must
# compile.  Prints one line per case and "N passed, M failed"; exits
# non-zero on any failure.
set -u
root=${1:?usage: run-lint.sh SRCROOT}
clang=${CLANG:-clang}
dir="$root/tests/lint"
cflags="-fsyntax-only -Wthread-safety -Werror -std=gnu11 -D_GNU_SOURCE -I$root/src -I$root"
cflags="$cflags $(pkg-config --cflags jansson fuse3 2>/dev/null)"
pass=0
fail=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

for f in "$dir"/fail-*.c; do
    name=$(basename "$f" .c)
    if $clang $cflags "$f" >"$log" 2>&1; then
        echo "FAIL $name: compiled, but must be refused"
        fail=$((fail + 1))
    elif grep -q 'thread-safety' "$log"; then
        why=$(grep -m1 'error:' "$log" | sed 's/.*error: //')
        echo "PASS $name: refused ($why)"
        pass=$((pass + 1))
    else
        echo "FAIL $name: refused for another reason:"
        sed 's/^/    /' "$log"
        fail=$((fail + 1))
    fi
done
for f in "$dir"/ok-*.c; do
    name=$(basename "$f" .c)
    if $clang $cflags "$f" >"$log" 2>&1; then
        echo "PASS $name: compiles"
        pass=$((pass + 1))
    else
        echo "FAIL $name: must compile:"
        sed 's/^/    /' "$log"
        fail=$((fail + 1))
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
