#!/usr/bin/env bash
# Installs what meshlet's tests, demo and benchmarks need on a fresh Debian
# machine (as root): iptables, iproute2, curl and setpriv, the load tools and
# proxies the benchmark harness compares with (wrk, nginx, haproxy, dnsperf,
# unbound, taskset), the DNS tests' clients (dig, python3) and the Prometheus server that scrapes meshlet in the
# metrics test, from Debian's packages, and a Consul binary built by
# scripts/consul.sh. Safe to run again; apt-get runs only when something is
# missing, and the packages' services are never started (the benchmarks run
# their own copies inside lab namespaces).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

need=()
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v setpriv >/dev/null || need+=(util-linux)
command -v getent >/dev/null || need+=(libc-bin)
command -v taskset >/dev/null || need+=(util-linux)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v unbound >/dev/null || need+=(unbound)
command -v prometheus >/dev/null || need+=(prometheus)
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
	echo "deps.sh: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	# No package's service may start (nginx on :80, unbound on :53 of the
	# root namespace): a policy-rc.d that says no, unless one exists.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -qq >&2
	if ! out="$(apt-get install -y -qq --no-install-recommends "${need[@]}" 2>&1)"; then
		echo "$out" >&2
		exit 1
	fi
fi
command -v go >/dev/null || { echo "deps.sh: Go is required (https://go.dev/dl)" >&2; exit 1; }
"$here/consul.sh" >/dev/null
