# flowd: records how every TCP connection of interest is doing, from inside the kernel.

GO        ?= go
CLANG     ?= clang-19
BPFTOOL   ?= bpftool
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# The commit, also for builds without Go's VCS stamp (-buildvcs=false).
COMMIT    ?= $(shell c=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null || c=$$c-dirty; } && echo $$c)
LDFLAGS   := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
CONFIG    ?= configs/flowd.yaml
FLAGS     ?=
BIN       ?= flowd
TESTFLAGS ?=
BENCHFLAGS ?=
# Debian packages the tests and `make generate` need (prometheus: the server
# and promtool the metrics tests run).
TEST_PKGS := iperf3 iproute2 prometheus
GEN_PKGS  := clang-19 llvm-19 libbpf-dev bpftool

export PATH := /usr/local/go/bin:$(PATH)

.PHONY: help build generate generate-check vmlinux test test-binary test-deps apt-install bench run lint clean test-kernels

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build ./flowd and the tools in utils/ (no clang needed: the BPF object is committed)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/flowd
	$(GO) build -o /dev/null ./utils/...

generate: ## rebuild the BPF object and its Go bindings with bpf2go and clang-19
	@command -v $(CLANG) >/dev/null || $(MAKE) --no-print-directory apt-install PKGS="$(GEN_PKGS)"
	$(GO) generate ./backends/ebpf/

generate-check: ## fail when the committed BPF objects and bindings are not what a fresh build makes
	GO="$(GO)" MAKE="$(MAKE)" .ci/generate-check

vmlinux: ## regenerate bpf/vmlinux.h from the running kernel's BTF
	$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h

test-deps: ## install what the privileged tests use (as root, when missing)
	@missing=""; for p in $(TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory apt-install PKGS="$$missing"; \
		else echo "not root: not installing$$missing"; fi; \
	fi

apt-install: ## install the Debian packages in PKGS (as root)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PKGS) >/dev/null

test: test-deps test-binary ## run all tests (privileged ones too when root), iperf3 validation included
	@if [ "$$(id -u)" != 0 ]; then echo "note: not root, privileged tests will be skipped (use 'sudo make test')"; fi
	$(GO) test -count=1 -timeout 15m $(TESTFLAGS) ./...

test-binary: ## build ./test, the iperf3 validation (sudo ./test -test.v; -test.run TestIperf3/NAME -out DIR)
	$(GO) test -c -o test ./validation

bench: test-deps ## run the benchmark suite as root (~10 min on 2 CPUs): rewrites BENCHMARKS.md and bench/results.json (BENCHFLAGS=-quick: smoke run)
	$(GO) run ./bench -go $(GO) -md BENCHMARKS.md -json bench/results.json $(BENCHFLAGS)

# Only records go to standard output (make run | jq .): the build is quiet
# and reports on standard error. make -C and sub-makes print "Entering
# directory" there themselves before reading this file: -s stops that.
run: ## build and run the daemon as root with CONFIG and FLAGS: make run FLAGS='--port 443' | jq .
	@$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/flowd >&2
	@$(abspath $(BIN)) run --config $(CONFIG) $(FLAGS)

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean: ## remove build output
	rm -rf flowd test out

# ---- kernel matrix (kernels/): the privileged tests on other kernels, under qemu ----
# KERNELFLAGS go to kernels/run: -v (show the guest's console), -run REGEXP,
# -timeout 240s, -accel kvm. Kernels are cached in $FLOWD_KERNEL_CACHE
# (default .cache/kernels); console logs go to out/kernels/.
KERNELFLAGS ?=
QEMU_PKGS   := qemu-system-x86

test-kernels: ## run the privileged tests on Debian's Linux 6.1 under qemu (as root; fetches and caches the kernel)
	@command -v qemu-system-x86_64 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(QEMU_PKGS) >/dev/null; }
	$(GO) run ./kernels/run $(KERNELFLAGS)
