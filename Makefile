# pe's tasks. On a fresh machine: `make demo` shows pe at work, `make test`
# installs what the tests need and runs them. The tests that need root (loop
# mounts of EROFS images) run as root here and skip themselves otherwise.

GO       ?= go
FUZZTIME ?= 30s
DEMO_IMAGE ?= /tmp/pe-demo.erofs
# The OCI image layout make demo builds and runs.
DEMO_OCI ?= /tmp/pe-demo-oci
# sudo only when not already root.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: all build deps deps-vm deps-web deps-s3 kernel web test test-web demo demo-erofs serve bench bench-image bench-run bench-serve bench-snapshot bench-lazy bench-fleet fuzz clean

all: build

## build: compile the pe command into bin/pe and its guest init (static) into bin/pe-init
build:
	$(GO) build -o bin/pe ./cmd/pe
	CGO_ENABLED=0 $(GO) build -ldflags='-s -w' -o bin/pe-init ./guest/cmd/pe-init

## deps: install what the tests need when missing (erofs-utils, QEMU, busybox-static, the NBD clients qemu-utils and libnbd-bin, HAProxy (the fleet test), versitygw, the guest kernel, chromium, the page's npm packages), download Go modules
deps: deps-vm deps-web deps-s3 kernel
	command -v mkfs.erofs >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y erofs-utils)
	dpkg -s busybox-static >/dev/null 2>&1 || ($(SUDO) apt-get update && $(SUDO) apt-get install -y busybox-static)
	command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y qemu-utils)
	command -v nbdinfo >/dev/null && command -v nbdcopy >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y libnbd-bin)
	command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || ($(SUDO) apt-get update && $(SUDO) apt-get install -y haproxy)
	$(GO) mod download

## deps-vm: install QEMU when missing
deps-vm:
	command -v qemu-system-x86_64 >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y qemu-system-x86)

## deps-s3: install versitygw when missing: the S3 server (it checks SigV4 signatures) that blockstore/s3's tests start
deps-s3:
	command -v versitygw >/dev/null || GOBIN=/usr/local/bin $(GO) install github.com/versity/versitygw/cmd/versitygw@v1.8.0

## deps-web: install Debian's chromium (browser tests) and the page's npm packages (never a downloaded browser)
deps-web:
	test -x /usr/bin/chromium || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)
	command -v npm >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y nodejs npm)
	cd web && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund

## web: rebuild the page (web/ → server/static, committed so building pe needs no Node.js)
web:
	cd web && npm run build

## kernel: install the guest kernel (Debian's cloud kernel) into pe's data dir
kernel:
	scripts/get-kernel.sh

## test: vet and run every test (the browser test runs inside go test ./server)
test: deps test-web
	$(GO) vet ./...
	$(GO) test -timeout 25m ./...

## test-web: the page's checks: committed bundle up to date, types, unit tests
test-web:
	cd web && npm run check && npm run typecheck && npm run test:unit

## demo: install QEMU and the guest kernel, build a busybox image (an OCI layout) and run programs from it in VMs
demo: deps-vm kernel build
	GO=$(GO) scripts/demo.sh $(DEMO_OCI)

## serve: make demo's image, then pe serve on 127.0.0.1:8080 with it as the preset
serve: demo
	bin/pe serve

## demo-erofs: build an EROFS image from a small tree and look inside it with pe's own reader
demo-erofs: build
	@set -e; \
	tree=$$(mktemp -d /tmp/pe-demo-tree.XXXXXX); \
	trap 'rm -rf "$$tree"' EXIT; \
	chmod 755 "$$tree"; mkdir -p "$$tree/etc" "$$tree/bin"; \
	printf 'Hello from an EROFS image built by pe.\n' >"$$tree/hello.txt"; \
	ln -s hello.txt "$$tree/greeting"; \
	echo "+ bin/pe image build-erofs $$tree -o $(DEMO_IMAGE)"; \
	bin/pe image build-erofs "$$tree" -o $(DEMO_IMAGE); \
	echo "+ bin/pe image files $(DEMO_IMAGE)"; \
	bin/pe image files $(DEMO_IMAGE); \
	echo "+ bin/pe image cat $(DEMO_IMAGE) greeting"; \
	bin/pe image cat $(DEMO_IMAGE) greeting

## bench: pe image build-erofs against mkfs.erofs (TREE=dir to choose the tree)
bench:
	scripts/bench-erofs.sh $(TREE)

## bench-image: pe's image conversion against tar -x + mkfs.erofs on a ~230 MB image built from Debian packages
bench-image:
	scripts/bench-image.sh

## bench-run: pe run IMAGE true against a bare QEMU boot of the same kernel (the floor)
bench-run: deps build
	scripts/bench-run.sh

## bench-serve: trivial runs through pe serve's HTTP API against the engine called directly, at concurrency 1, 2 and 8
bench-serve: deps build
	$(GO) run ./scripts/mkdemo -busybox $$(command -v busybox) -o $(DEMO_OCI) >/dev/null
	$(GO) run ./scripts/benchserve -image oci:$(DEMO_OCI):demo -n $${N:-8} -c $${C:-1,2,8}

## bench-snapshot: pe run --snapshot DIR true against a cold pe run IMAGE true, and memory per VM
bench-snapshot: deps build
	scripts/bench-snapshot.sh

## bench-lazy: issue 16's figures: gcc -c hello.c from a ~1.5 GB image in a versitygw bucket behind a 30 ms, 125 MB/s proxy, local vs download-whole vs lazy (cold, traced, warm); BIG=1 checks a 5 GB image
bench-lazy: deps build
	scripts/bench-lazy.sh

## bench-fleet: issue 17's figures: echo runs through deploy/haproxy.cfg with 1 and 3 workers against straight to one worker, and the time a killed worker takes to leave the pool
bench-fleet: deps
	scripts/bench-fleet.sh

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
	rm -rf bin $(DEMO_IMAGE) $(DEMO_OCI)
