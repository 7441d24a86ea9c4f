# The two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
CONSUL = $(shell scripts/consul.sh)

.PHONY: demo test deps build unit integration bench

demo: deps
	MESHLET_CONSUL_BIN=$(CONSUL) go run ./integration/demo $(DEMO_ARGS)

test: deps
	go vet ./...
	MESHLET_CONSUL_BIN=$(CONSUL) go test -count=1 -timeout 30m ./...

deps:
	scripts/deps.sh

build:
	CGO_ENABLED=0 go build -o bin/meshlet .

unit:
	go test -count=1 $$(go list ./... | grep -v /integration)

integration: deps
	MESHLET_CONSUL_BIN=$(CONSUL) go test -count=1 -timeout 30m -v ./integration/


# Benchmarks side by side (see BENCHMARKS.md); not part of `make test`.
bench: deps
	MESHLET_CONSUL_BIN=$(CONSUL) bench/run.sh $(BENCH_ARGS)
