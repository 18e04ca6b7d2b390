# sds-injector developer tasks. `make test` is what CI runs (.ci/run).
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
FUZZTIME  ?= 10s
# New interesting inputs are minimised too; a short budget keeps the run
# fuzzing rather than shrinking.
FUZZMINIMIZE ?= 2s
PKGS      := ./...

.PHONY: all build test unit lint fmt fuzz fuzz-smoke bench golden controlplane demo clean

all: lint test build

## build: the sds-injector and sds-agent binaries in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/sds-injector ./cmd/sds-injector
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/sds-agent ./cmd/sds-agent

## test: lint, every test with the race detector (integration tests build the
## local control plane binaries on first use), then a short fuzz run
test: lint unit fuzz-smoke

# Unit packages run in parallel; the suites under test/ each start a real
# control plane (and istiod, helm builds) and run one at a time so that
# their timing-sensitive checks do not starve each other on small machines.
unit:
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v '/test/')
	$(GO) test -race -count=1 -p 1 -timeout 60m ./test/...

## lint: gofmt and go vet must be clean
lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

## fuzz-smoke: each fuzz target for FUZZTIME (bounded; part of make test)
fuzz-smoke:
	$(GO) test ./webhook/inject -run '^$$' -fuzz '^FuzzInject$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./webhook/inject -run '^$$' -fuzz '^FuzzUninject$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./webhook/kubeinject -run '^$$' -fuzz '^FuzzProcess$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./webhook/server -run '^$$' -fuzz '^FuzzPodDecoding$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./webhook/server -run '^$$' -fuzz '^FuzzReview$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)

## fuzz: longer fuzzing on demand, e.g. make fuzz FUZZTIME=10m
fuzz: FUZZTIME = 5m
fuzz: fuzz-smoke

## bench: Go benchmarks and load runs (HTTPS and through kube-apiserver);
## writes docs/performance-latest.md (recorded figures: docs/performance.md)
bench:
	test/load/bench.sh

## golden: rewrite golden files after an intended output change
golden:
	$(GO) test ./webhook/inject -run TestGolden -update

## controlplane: build (or find cached) kube-apiserver, etcd, kube-controller-manager, kubectl
controlplane:
	test/controlplane/build-binaries.sh --with-controller-manager

## demo: local control plane + sds-injector serve + an injected Gloo pod and an untouched app pod
demo:
	$(GO) run ./test/demo

clean:
	rm -rf bin/

.PHONY: helm manifests

## helm: build (or find cached) the helm CLI from the Go module proxy; prints its path
helm:
	@test/helm/build-helm.sh

## manifests: render deploy/manifests and deploy/webhook from the Helm chart
## (the install tests fail when they drift from the chart)
manifests:
	test/helm/render-manifests.sh deploy

.PHONY: cert-manager

## cert-manager: build (or find cached) the real cert-manager v1.21.2 controller
## and cainjector the install suite runs (needs ../shared/third-party/cert-manager)
cert-manager:
	@test/certmanager/build-cert-manager.sh
