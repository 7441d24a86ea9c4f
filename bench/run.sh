#!/usr/bin/env bash
# Runs meshlet's benchmarks (see BENCHMARKS.md), as root: installs what they
# need, runs the side-by-side harness (bench/cmd/meshbench; arguments go to
# it, e.g. -runs 5, -scenarios s1,s4, -smoke), then the in-process Go
# benchmarks of the hot paths (BENCH_GO=0 skips them). Results, profiles and
# the binaries measured go to $BENCH_OUT (default bench/out/DATE).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/deps.sh
export MESHLET_CONSUL_BIN="${MESHLET_CONSUL_BIN:-$(scripts/consul.sh)}"
out="${BENCH_OUT:-$root/bench/out/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
CGO_ENABLED=0 go build -o "$bin/meshbench" ./bench/cmd/meshbench
"$bin/meshbench" -out "$out" "$@"

if [[ "${BENCH_GO:-1}" != 0 ]]; then
	# One core, as meshlet runs with GOMAXPROCS=1; each benchmark ~2 s.
	echo "## Go benchmarks of the hot paths (go test -bench, one core)" | tee "$out/gobench.txt"
	echo '```' | tee -a "$out/gobench.txt"
	pin=()
	(($(nproc) >= 2)) && pin=(taskset -c 1)
	"${pin[@]}" go test -run '^$' -bench . -benchmem -benchtime 2s -cpu 1 \
		./dns/ ./upstream/... ./vip/ ./bench/inproc/ 2>&1 | grep -E '^(Benchmark|ok|FAIL|goos|cpu)' | tee -a "$out/gobench.txt"
	echo '```' | tee -a "$out/gobench.txt"
fi
if [[ "${BENCH_CONSUL:-0}" != 0 ]]; then
	# N sidecars against a three-server Consul cluster (BENCHMARKS.md, "Consul at scale").
	go run ./bench/consulscale ${CONSULSCALE_ARGS:-} | tee "$out/consulscale.md"
fi
echo "bench: results in $out" >&2
