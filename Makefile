# pgharbor — see README.md. `make demo` runs the main job, `make test` the tests.
SHELL   := /bin/bash
GO      ?= go
BIN     := bin/pgharbor
PKGS    := ./...
# Tests start real PostgreSQL clusters and storage servers: two packages at a time suit the
# 2-core machines this runs on. -count=1: internal/e2e builds the binary itself, which the
# test cache cannot see.
TESTFLAGS ?= -p 2 -count=1 -timeout 20m
# cloud.google.com/go/storage links its gRPC client's DirectPath support (gRPC xDS with the
# Envoy protos, RLS) unless built with disable_grpc_modules. pgharbor talks to GCS over the
# JSON API, so every build and test here leaves them out: their initialisers cost every
# pgharbor process memory (bench/backup/README.md). Building by hand: go build -tags
# disable_grpc_modules ./cmd/pgharbor.
export GOFLAGS += -tags=disable_grpc_modules

.PHONY: all build setup test test-short demo bench lint fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/pgharbor

setup:
	bash scripts/setup.sh

# The summary prints a line per package with its counts, every failed test's output, and a
# closing "N passed, N failed, N skipped" line (so an all-skipped package is seen).
test: setup
	$(GO) vet $(PKGS)
	# A build without cgo has the pure-Go zstd encoder only: it must build and seal.
	CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/pgharbor
	CGO_ENABLED=0 $(GO) test -count=1 -run 'DataSealer|Encoder' ./storage/codec/
	# The build leaves gRPC DirectPath out (GOFLAGS above).
	if $(GO) list -deps ./cmd/pgharbor | grep -q 'google.golang.org/grpc/xds'; then echo "gRPC xDS is linked into pgharbor" >&2; exit 1; fi
	set -o pipefail; $(GO) test -json $(TESTFLAGS) $(PKGS) | $(GO) run ./internal/testsummary

test-short:
	$(GO) test -short $(PKGS)

demo: setup build
	bash scripts/demo.sh

bench: setup build
	bash bench/run.sh

lint:
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

# Every fuzzer (func FuzzX in any *_test.go) runs for FUZZTIME; a failing input is saved under
# the package's testdata/fuzz/FuzzX/, where `go test` then runs it as a regression test (as it
# runs every seed there on each `make test`).
FUZZTIME ?= 30s
fuzz:
	@failed=""; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' . | sort); do \
		dir=$$(dirname $$f); \
		for fz in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' $$f | cut -d' ' -f2); do \
			echo "== $$fz in $$dir for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$fz\$$" -fuzztime $(FUZZTIME) $$dir || failed="$$failed $$dir:$$fz"; \
		done; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed"; exit 1; fi; echo "fuzz: every fuzzer passed"

clean:
	rm -rf bin bench/results
