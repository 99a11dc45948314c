# custody — the index of habits. Every target is a one-liner you can guess.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN       := bin
TOOLS     := $(CURDIR)/bin/tools
LDFLAGS   := -s -w -X main.version=$(VERSION)
BINARIES  := ./agent/cmd/custody-agent ./collector/cmd/custody-collector ./collector/cmd/custodyctl

# Pinned tool versions: generated code and lint results depend on them.
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION        := v0.8.2
export PATH := $(TOOLS):$(PATH)

.PHONY: all build test test-deps test-go check-proto lint proto breaking bench demo e2e fuzz tools clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $(BINARIES)

# test: unit, integration and end-to-end tests with the race detector, plus
# the check that generated code is fresh. CUSTODY_REQUIRE_ALL=1 (set by CI)
# turns every "missing prerequisite" skip into a failure.
test: check-proto check-bpf test-deps test-go

# test-deps installs what the tests start themselves and can get without root
# (versitygw for the S3 suite; idempotent). CI's .ci/run also runs every
# scripts/*/ci-deps.sh as root (qemu, a kernel, lime.ko for make test-vm).
test-deps:
	bash scripts/s3/ci-deps.sh

test-go:
	$(GO) test -race -count=1 -timeout 20m ./...

e2e: build
	$(GO) test -count=1 -v -run 'TestE2E' ./scripts/e2e/

# test-vm: boot Debian's kernel under qemu with the real agent inside and
# capture physical memory from /proc/kcore and LiME (make test runs it too).
# Needs scripts/vm/ci-deps.sh run once as root.
.PHONY: test-vm
test-vm:
	$(GO) test -count=1 -v -timeout 15m -run 'TestVM' ./scripts/vm/

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./scripts/bench/

# fuzz: run every fuzz target for FUZZTIME each (the seed corpora run in make test).
FUZZTIME ?= 20s
fuzz:
	scripts/fuzz.sh $(FUZZTIME)

demo: build
	scripts/demo.sh

lint: tools
	$(GO) vet ./...
	staticcheck ./...
	buf lint
	@$(MAKE) --no-print-directory breaking

# breaking: compare the API with main's. Skipped on main's very first commit.
breaking: tools
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
		buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: no API on main yet"; fi

proto: tools
	buf generate

# check-proto regenerates into a scratch copy and fails if the committed
# code differs: generated code must never be edited by hand or left stale.
check-proto: tools
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	cp -r buf.yaml buf.gen.yaml proto $$tmp/ && \
	(cd $$tmp && buf lint && buf generate) && \
	diff -r proto $$tmp/proto >/dev/null || { echo "generated code in proto/ is stale: run 'make proto'"; diff -r proto $$tmp/proto | head -20; exit 1; }
	@echo "proto: lint clean, generated code fresh"

# bpf: rebuild the BPF programs the agent embeds (agent/procbpf/bpf/*.c ->
# agent/procbpf/*.bpf.o). The objects are committed, so building the agent
# never needs clang; check-bpf (part of make test) fails if one is stale.
# Needs clang-14 and libbpf-dev (scripts/bpf/ci-deps.sh). The source path
# is mapped to "." so the object does not depend on where the tree is.
BPF_CLANG ?= clang-14
BPF_STRIP ?= llvm-strip-14
BPF_DIR   := agent/procbpf
BPF_SRCS  := $(wildcard $(BPF_DIR)/bpf/*.bpf.c)
.PHONY: bpf check-bpf
bpf:
	@for src in $(BPF_SRCS); do \
		obj=$$(basename $$src .c).o; \
		(cd $(BPF_DIR) && $(BPF_CLANG) -O2 -g -target bpfel -fdebug-prefix-map=$(CURDIR)/$(BPF_DIR)=. \
			-I/usr/include/$$(gcc -print-multiarch) -c bpf/$$(basename $$src) -o $$obj && $(BPF_STRIP) -g $$obj) || exit 1; \
		echo "bpf: $(BPF_DIR)/$$obj"; \
	done

check-bpf:
	@if ! command -v $(BPF_CLANG) >/dev/null || [ ! -f /usr/include/bpf/bpf_helpers.h ]; then \
		if [ "$$CUSTODY_REQUIRE_ALL" = 1 ]; then echo "check-bpf: $(BPF_CLANG) or libbpf-dev missing (scripts/bpf/ci-deps.sh)"; exit 1; fi; \
		echo "check-bpf: skipped, $(BPF_CLANG) or libbpf-dev missing (scripts/bpf/ci-deps.sh installs them)"; exit 0; \
	fi; \
	tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	mkdir -p $$tmp/$(BPF_DIR) && cp -r $(BPF_DIR)/bpf $$tmp/$(BPF_DIR)/ && \
	$(MAKE) --no-print-directory -C $$tmp -f $(CURDIR)/Makefile bpf CURDIR=$$tmp >/dev/null && \
	for src in $(BPF_SRCS); do \
		obj=$$(basename $$src .c).o; \
		cmp -s $$tmp/$(BPF_DIR)/$$obj $(BPF_DIR)/$$obj || { echo "$(BPF_DIR)/$$obj is stale: run 'make bpf'"; exit 1; }; \
	done; \
	echo "bpf: objects fresh"

tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc $(TOOLS)/staticcheck

$(TOOLS)/buf:
	GOBIN=$(TOOLS) CGO_ENABLED=0 $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) CGO_ENABLED=0 $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) CGO_ENABLED=0 $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) CGO_ENABLED=0 $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

clean:
	rm -rf $(BIN)
