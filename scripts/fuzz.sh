#!/usr/bin/env bash
# Runs every fuzz target of the module, one after the other, each for
# FUZZTIME (a duration such as 30s, or a count of executions such as
# 10000000x) and at most CAP of wall time, and prints one line per target
# with its last progress report. A failure leaves its input in the
# package's testdata/fuzz/<target>/, and the script exits non-zero.
#
#   scripts/fuzz.sh                      # 20s each: a smoke
#   FUZZTIME=10000000x CAP=30m scripts/fuzz.sh 'FuzzRequestHead|FuzzChunkedBody'
#
# The optional argument is a regular expression over target names. The
# generated corpus stays in $(go env GOCACHE)/fuzz/, so runs add up.
set -u
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-20s}
CAP=${CAP:-10m}
PATTERN=${1:-.}
status=0
while IFS=: read -r file _ decl; do
	target=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"$decl")
	grep -Eq "$PATTERN" <<<"$target" || continue
	pkg=./$(dirname "${file#./}")/
	log=$(mktemp)
	start=$(date +%s)
	# SIGINT at CAP ends fuzzing cleanly, as the -fuzztime limit would.
	timeout -s INT -k 30s "$CAP" nice -n 15 go test -run '^$' -fuzz "^${target}\$" \
		-fuzztime "$FUZZTIME" -parallel 1 "$pkg" >"$log" 2>&1
	rc=$?
	last=$(grep 'execs:' "$log" | tail -n 1)
	if grep -q -- '--- FAIL' "$log"; then
		status=1
		echo "FAIL $pkg $target ($(($(date +%s) - start))s): $last"
		sed -n '/--- FAIL/,$p' "$log"
	else
		echo "ok   $pkg $target ($(($(date +%s) - start))s, rc $rc): $last"
	fi
	rm -f "$log"
done < <(grep -rn --include='*_test.go' '^func Fuzz' . | sort)
exit $status
