# dst — build, test, fuzz and benchmark. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin/dst
PKGS := ./...
# Debian packages the tests and the harness need.
DEB_PACKAGES := nbdkit qemu-utils nbd-server libnbd-bin fio xfsprogs btrfs-progs e2fsprogs fuse3 iproute2 util-linux
FUZZTIME ?= 10s
# dst torture: SCENARIO=, DURATION= (e.g. 8h), SEED= (replay), CYCLES=, OUT=
SCENARIO ?= overnight
OUT ?= out/torture
TORTURE_ARGS = --out $(OUT) $(if $(DURATION),--duration $(DURATION)) $(if $(SEED),--seed $(SEED)) $(if $(CYCLES),--cycles $(CYCLES))

.PHONY: help build test test-short bench fuzz prop demo deps vet clean torture torture-smoke nightly

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

build: ## build bin/dst
	$(GO) build -o $(BIN) ./cmd/dst

vet: ## go vet and gofmt check
	$(GO) vet $(PKGS)
	$(GO) vet -tags invariants ./storage/engine/
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed"; exit 1; }

test: vet ## the test suite (what CI runs): unit, property, interop with real peers
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	@# allocation counts are only meaningful without the race detector
	$(GO) test -count=1 -run 'Alloc' $(PKGS)
	@# the engine's expensive self-checks (bitmap unions, lock stripes, extents)
	$(GO) test -count=1 -tags invariants ./storage/engine/ ./storage/sim/

test-short: ## unit tests only, no external tools
	$(GO) test -short -count=1 $(PKGS)

bench: build ## Go benchmarks, then fio against dst, nbdkit and qemu-nbd side by side
	$(GO) test -run '^$$' -bench . -benchmem ./storage/...
	./scripts/bench-fio.sh
	./scripts/bench-serve.sh
	./scripts/bench-scrub.sh

fuzz: ## a short run of every fuzz target (FUZZTIME=10s each)
	@set -e; for pkg in $$($(GO) list ./storage/... ./torture/...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -parallel 2 $$pkg; \
	  done; done

prop: ## property and model tests (Prop|Model) of storage and torture; SEED= replays a seed, PROP_ITER= multiplies the iterations
	PROP_SEED=$(SEED) PROP_ITER=$(PROP_ITER) $(GO) test -count=1 -timeout 120m -run 'Prop|Model' -v ./storage/... ./torture/...

torture: build ## the overnight torture run (SCENARIO=overnight, DURATION=8h by default; SEED= replays)
	./$(BIN) torture --scenario $(SCENARIO) --keep-going $(TORTURE_ARGS)

torture-smoke: build ## the two-minute smoke scenario (the README's main job)
	./$(BIN) torture --scenario smoke $(TORTURE_ARGS)

nightly: build ## the CI nightly job: long property runs, PROP_ITER x 1000 simulated sequences, then linear-split, engine-crash, power-loss and mirror-failover (JUnit in OUT); every part runs, the first failure decides the exit
	@rc=0; \
	PROP_ITER=$${PROP_ITER:-20} $(GO) test -count=1 -timeout 60m -run 'Prop|Model' ./storage/... ./torture/... || rc=1; \
	$(GO) test -count=1 -timeout 60m -run 'TestSimMirror$$' ./storage/sim -args -sim.seqs=$$(( $${PROP_ITER:-20} * 1000 )) || rc=1; \
	./$(BIN) torture --scenario linear-split --duration $${NIGHTLY_SPLIT:-20m} --keep-going --out $(OUT) || rc=1; \
	./$(BIN) torture --scenario engine-crash --duration $${NIGHTLY_CRASH:-30m} --keep-going --out $(OUT) || rc=1; \
	./$(BIN) torture --scenario power-loss --duration $${NIGHTLY_POWER:-30m} --keep-going --out $(OUT) || rc=1; \
	./$(BIN) torture --scenario mirror-failover --duration $${NIGHTLY_FAILOVER:-2h} --keep-going --out $(OUT) || rc=1; \
	exit $$rc

demo: ## the main job: dst export (and serve) checked with qemu-io and nbdcopy
	./scripts/demo.sh

deps: ## install the Debian packages the tests need (as root), if missing
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "all Debian packages present"; fi

clean: ## remove build output
	rm -rf bin out
