#!/usr/bin/env bash
# Builds a real Consul binary from the Go module proxy, once, and caches it.
# Prints the path of the binary on stdout; progress goes to stderr.
#
# Why from source: the machines that run our tests reach only the Go module
# proxy and Debian's packages, so no release binary can be downloaded.
# v1.14.11 is the newest Consul whose module builds from the proxy once the
# replace directives that point at the repository's own folders are dropped.
set -euo pipefail

CONSUL_VERSION="${CONSUL_VERSION:-v1.14.11}"
CACHE_DIR="${MESHLET_CACHE:-/var/cache/meshlet}"
OUT="$CACHE_DIR/consul-$CONSUL_VERSION/consul"

if [[ -x "$OUT" ]] && "$OUT" version >/dev/null 2>&1; then
	echo "$OUT"
	exit 0
fi

command -v go >/dev/null || { echo "consul.sh: go is not installed" >&2; exit 1; }
mkdir -p "$(dirname "$OUT")"
# One build at a time: concurrent callers (parallel test packages, several
# checkouts on one machine) wait for the first and then use its binary.
exec 9>"$OUT.lock"
flock 9
if [[ -x "$OUT" ]] && "$OUT" version >/dev/null 2>&1; then
	echo "$OUT"
	exit 0
fi
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

echo "consul.sh: downloading github.com/hashicorp/consul@$CONSUL_VERSION" >&2
src="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "github.com/hashicorp/consul@$CONSUL_VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$src" ]] || { echo "consul.sh: module download gave no directory" >&2; exit 1; }

cp -r "$src" "$work/consul"
chmod -R u+w "$work/consul"
cd "$work/consul"
go mod edit \
	-dropreplace github.com/hashicorp/consul/api \
	-dropreplace github.com/hashicorp/consul/sdk \
	-dropreplace github.com/hashicorp/consul/proto-public

echo "consul.sh: building (about 3 minutes on two cores)" >&2
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$OUT.tmp.$$" .
mv "$OUT.tmp.$$" "$OUT"
"$OUT" version >&2
echo "$OUT"
