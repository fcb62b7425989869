# pe's tasks. On a fresh machine: `make demo` shows pe at work, `make test`
# installs what the tests need and runs them. The tests that need root (loop
# mounts of EROFS images) run as root here and skip themselves otherwise.

GO       ?= go
FUZZTIME ?= 30s
DEMO_IMAGE ?= /tmp/pe-demo.erofs
# sudo only when not already root.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: all build deps test demo bench fuzz clean

all: build

## build: compile the pe command into bin/pe
build:
	$(GO) build -o bin/pe ./cmd/pe

## deps: install erofs-utils (the reference EROFS tools) when missing, download Go modules
deps:
	command -v mkfs.erofs >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y erofs-utils)
	$(GO) mod download

## test: vet and run every test
test: deps
	$(GO) vet ./...
	$(GO) test -timeout 25m ./...

## demo: build an EROFS image from a small tree and look inside it with pe's own reader
demo: build
	@set -e; \
	tree=$$(mktemp -d /tmp/pe-demo-tree.XXXXXX); \
	trap 'rm -rf "$$tree"' EXIT; \
	chmod 755 "$$tree"; mkdir -p "$$tree/etc" "$$tree/bin"; \
	printf 'Hello from an EROFS image built by pe.\n' >"$$tree/hello.txt"; \
	printf 'NAME=pe-demo\n' >"$$tree/etc/os-release"; \
	printf '#!/bin/sh\necho hi\n' >"$$tree/bin/hi"; chmod 755 "$$tree/bin/hi"; \
	ln -s hello.txt "$$tree/greeting"; \
	echo "+ bin/pe image build-erofs $$tree -o $(DEMO_IMAGE)"; \
	bin/pe image build-erofs "$$tree" -o $(DEMO_IMAGE); \
	echo "+ bin/pe image files $(DEMO_IMAGE)"; \
	bin/pe image files $(DEMO_IMAGE); \
	echo "+ bin/pe image cat $(DEMO_IMAGE) hello.txt"; \
	bin/pe image cat $(DEMO_IMAGE) hello.txt

## bench: pe image build-erofs against mkfs.erofs (TREE=dir to choose the tree)
bench:
	scripts/bench-erofs.sh $(TREE)

## fuzz: run every fuzz target for FUZZTIME each (default 30s)
fuzz:
	@set -e; \
	for dir in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		for name in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$dir"/*_test.go); do \
			echo "+ $(GO) test -run '^$$' -fuzz '^$$name$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 10s $$dir"; \
			$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 10s "$$dir"; \
		done; \
	done

## clean: remove what the build and the demo made
clean:
	rm -rf bin $(DEMO_IMAGE)
