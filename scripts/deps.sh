#!/usr/bin/env bash
# Installs what meshlet's tests and demo need on a fresh Debian machine
# (as root): iptables, iproute2, curl and setpriv from Debian's packages, and
# a Consul binary built by scripts/consul.sh. Safe to run again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

need=()
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v setpriv >/dev/null || need+=(util-linux)
command -v getent >/dev/null || need+=(libc-bin)
if ((${#need[@]})); then
	echo "deps.sh: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
command -v go >/dev/null || { echo "deps.sh: Go is required (https://go.dev/dl)" >&2; exit 1; }
"$here/consul.sh" >/dev/null
