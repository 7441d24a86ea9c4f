#!/usr/bin/env bash
# Makes local stand-ins for the public images the Dockerfile and compose.yaml
# use, for machines whose Docker engine cannot pull (no registry): a Debian
# root from debootstrap (Debian's packages), a Go image from that root plus
# this machine's Go toolchain, and a Consul image from the Consul binary that
# scripts/consul.sh builds. Each is tagged with the name passed to the
# Dockerfile/compose.yaml through their build arguments and variables, and
# only made when missing. Prints the variables to use, as KEY=VALUE lines.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
CACHE_DIR="${MESHLET_CACHE:-/var/cache/meshlet}"
SUITE=bookworm
BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
GO_VERSION="$(go env GOVERSION | sed 's/^go//')"
GO_IMAGE="${GO_IMAGE:-golang:${GO_VERSION}-bookworm}"
CONSUL_IMAGE="${CONSUL_IMAGE:-hashicorp/consul:1.14.11}"

log() { echo "docker-standins.sh: $*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }

command -v docker >/dev/null || { log "docker is not installed"; exit 1; }
docker info >/dev/null 2>&1 || { log "the Docker engine is not running"; exit 1; }

rootfs_tar="$CACHE_DIR/rootfs-$SUITE.tar"
if [[ ! -s "$rootfs_tar" ]]; then
	command -v debootstrap >/dev/null || {
		log "installing debootstrap"
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -qq debootstrap >&2 || { apt-get update -qq >&2 && apt-get install -y -qq debootstrap >&2; }
	}
	root="$(mktemp -d "$CACHE_DIR/rootfs.XXXX")"
	trap 'rm -rf "$root"' EXIT
	log "debootstrap $SUITE (minbase) into $root"
	debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root" http://deb.debian.org/debian >"$CACHE_DIR/debootstrap.log" 2>&1 ||
		{ log "debootstrap failed, see $CACHE_DIR/debootstrap.log"; exit 1; }
	# This machine reaches the Go module proxy through an egress proxy whose
	# CA only the machine's trust store holds: give the stand-ins the same
	# extra CAs, or builds inside them cannot download modules. (Public
	# images on a connected machine need nothing of the kind.)
	if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
		cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
		chroot "$root" update-ca-certificates >/dev/null 2>&1 || { log "update-ca-certificates failed in the stand-in root"; exit 1; }
	fi
	# What a slim image leaves out: package caches and lists.
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
	tar -C "$root" -cf "$rootfs_tar.tmp" .
	mv "$rootfs_tar.tmp" "$rootfs_tar"
	rm -rf "$root"
	trap - EXIT
fi

if ! have "$BASE_IMAGE"; then
	log "importing $BASE_IMAGE"
	docker import --change 'CMD ["bash"]' "$rootfs_tar" "$BASE_IMAGE" >/dev/null
fi

if ! have "$GO_IMAGE"; then
	log "making $GO_IMAGE from $BASE_IMAGE and $(go env GOROOT)"
	ctx="$(mktemp -d)"
	cp -a "$(go env GOROOT)" "$ctx/go"
	rm -rf "$ctx/go/pkg/obj" "$ctx/go/test" "$ctx/go/api"
	cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE_IMAGE
COPY go /usr/local/go
ENV PATH=/usr/local/go/bin:/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin GOPATH=/go
WORKDIR /go
DOCKERFILE
	docker build -q -t "$GO_IMAGE" "$ctx" >/dev/null
	rm -rf "$ctx"
fi

if ! have "$CONSUL_IMAGE"; then
	consul="$("$here/consul.sh")"
	log "making $CONSUL_IMAGE from $consul"
	ctx="$(mktemp -d)"
	cp "$consul" "$ctx/consul"
	cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE_IMAGE
COPY consul /bin/consul
ENV CHECKPOINT_DISABLE=1
EXPOSE 8500 8600/udp
ENTRYPOINT ["/bin/consul"]
CMD ["agent", "-dev", "-client", "0.0.0.0"]
DOCKERFILE
	docker build -q -t "$CONSUL_IMAGE" "$ctx" >/dev/null
	rm -rf "$ctx"
fi

echo "BASE_IMAGE=$BASE_IMAGE"
echo "GO_IMAGE=$GO_IMAGE"
echo "CONSUL_IMAGE=$CONSUL_IMAGE"
