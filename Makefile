# The two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
CONSUL = $(shell scripts/consul.sh)

.PHONY: demo test deps build unit integration bench fuzz bench-consul

demo: deps
	MESHLET_CONSUL_BIN=$(CONSUL) go run ./integration/demo $(DEMO_ARGS)

test: deps
	go vet ./...
	MESHLET_CONSUL_BIN=$(CONSUL) go test -count=1 -timeout 50m ./...

deps:
	scripts/deps.sh

# The version `meshlet version` prints: the nearest tag, or the commit.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

build:
	CGO_ENABLED=0 go build -ldflags "-X github.com/meshlet/meshlet/agent.Version=$(VERSION)" -o bin/meshlet .

unit:
	go test -count=1 $$(go list ./... | grep -v /integration)

integration: deps
	MESHLET_CONSUL_BIN=$(CONSUL) go test -count=1 -timeout 50m -v ./integration/


# Benchmarks side by side (see BENCHMARKS.md); not part of `make test`.
bench: deps
	MESHLET_CONSUL_BIN=$(CONSUL) bench/run.sh $(BENCH_ARGS)

# N simulated sidecars against a three-server Consul cluster, per query mode
# (see BENCHMARKS.md, "Consul at scale"); long, not part of `make bench`
# unless BENCH_CONSUL=1.
bench-consul: deps
	MESHLET_CONSUL_BIN=$(CONSUL) go run ./bench/consulscale $(CONSULSCALE_ARGS)

# The fuzzing campaign (see BENCHMARKS.md, Fuzzing): every target in turn,
# FUZZTIME each (default: the issue's 10 million executions) and at most CAP;
# FUZZ selects targets by a regular expression. Hours; not part of `make test`.
fuzz:
	FUZZTIME=$${FUZZTIME:-10000000x} CAP=$${CAP:-30m} scripts/fuzz.sh '$(or $(FUZZ),.)'

# The WebSocket held for minutes through changes of the instance set (the
# test of `make test` holds it 20 s).
.PHONY: test-websocket-long
test-websocket-long: deps
	MESHLET_CONSUL_BIN=$(CONSUL) MESHLET_WS_HOLD=5m go test -count=1 -timeout 15m -v -run TestWebSocketHeldWhileInstancesChange ./integration/
