# sds-injector developer tasks. `make test` is what CI runs (.ci/run).
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
# make test's fuzz runs are bounded by a count of executions, not by time:
# with a duration, Go 1.26's fuzz coordinator can report "context deadline
# exceeded" as a failure when the deadline hits a busy worker
# (golang/go#75804, fixed in Go 1.27). A count has no deadline to race.
FUZZTIME  ?= 20000x
# New interesting inputs are minimised too; a short budget keeps the run
# fuzzing rather than shrinking.
FUZZMINIMIZE ?= 2s
PKGS      := ./...
GOTESTSUM ?= $(GO) run gotest.tools/gotestsum@v1.13.0 --format standard-quiet

.PHONY: all build test unit lint fmt fuzz fuzz-smoke fuzz-corpus bench bench-node golden controlplane node demo clean

all: test build

## build: the sds-injector and sds-agent binaries in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/sds-injector ./cmd/sds-injector
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/sds-agent ./cmd/sds-agent

## test: lint, every test with the race detector (integration tests build the
## local control plane binaries on first use), then a short fuzz run.
## test/tools/prebuild.sh starts the third-party builds the suites need
## (cached; helm, Kubernetes, cert-manager, istiod, SPIRE) beside the lint and
## unit phases at the lowest CPU priority, so that a cold machine builds them
## in the time those phases leave idle; its log is _output/prebuild.log
test:
	test/tools/prebuild.sh --beside $(MAKE) --no-print-directory lint unit fuzz-smoke test-summary

# Unit packages run in parallel; the suites under test/ each start a real
# control plane (and istiod, helm builds) and run one at a time so that
# their timing-sensitive checks do not starve each other on small machines.
# gotestsum (a maintained go test runner) prints go test's usual output and,
# at the end of each run, every skipped test with its reason: no skip is
# silent.
# Then test/tools/skipcheck fails the run if any test skipped that is not
# listed, with its reason, in test/skips.txt.
TESTJSON ?= _output/test-json
unit:
	@mkdir -p $(TESTJSON)
	$(GOTESTSUM) --jsonfile $(TESTJSON)/unit.json -- -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v '/test/')
	$(GOTESTSUM) --jsonfile $(TESTJSON)/suites.json -- -race -count=1 -p 1 -timeout 60m ./test/...
	$(GO) run ./test/tools/skipcheck -allow test/skips.txt $(TESTJSON)/unit.json $(TESTJSON)/suites.json $(TESTJSON)/envoygateway.json

# golangci-lint, pinned, built from the Go module proxy and cached
# (test/tools/go-tool.sh); its configuration is .golangci.yml.
GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT ?= $(shell test/tools/go-tool.sh golangci-lint github.com/golangci/golangci-lint/v2/cmd/golangci-lint $(GOLANGCI_LINT_VERSION))

## lint: gofmt, go vet and golangci-lint (.golangci.yml) must be clean
lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GOLANGCI_LINT) run $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

## fuzz-smoke: each fuzz target for FUZZTIME executions (bounded; part of make test)
fuzz-smoke:
	$(GO) test ./webhook/inject -run '^$$' -fuzz '^FuzzInject$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./webhook/inject -run '^$$' -fuzz '^FuzzUninject$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./webhook/kubeinject -run '^$$' -fuzz '^FuzzProcess$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./webhook/server -run '^$$' -fuzz '^FuzzPodDecoding$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./webhook/server -run '^$$' -fuzz '^FuzzReview$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)

## fuzz-corpus: copy the inputs fuzzing found interesting (Go keeps them in
## $(go env GOCACHE)/fuzz) into testdata/fuzz, where every go test runs them
## as seeds; commit the new files
fuzz-corpus:
	@cache=$$($(GO) env GOCACHE)/fuzz/$$($(GO) list -m); \
	for d in $$cache/webhook/*/Fuzz*; do \
	  [ -d "$$d" ] || continue; pkg=$$(basename $$(dirname $$d)); t=$$(basename $$d); \
	  mkdir -p webhook/$$pkg/testdata/fuzz/$$t && cp -n $$d/* webhook/$$pkg/testdata/fuzz/$$t/; \
	  echo "webhook/$$pkg $$t: $$(ls webhook/$$pkg/testdata/fuzz/$$t | wc -l) inputs"; \
	done

## fuzz: longer fuzzing on demand, e.g. make fuzz FUZZTIME=10m
fuzz: FUZZTIME = 5m
fuzz: fuzz-smoke

## bench: this tree and BENCH_BASE (default HEAD~1) side by side, interleaved:
## Go benchmarks (benchstat), server CPU per review over HTTPS, HTTPS load,
## and pods through kube-apiserver; writes docs/performance-latest.md
## (recorded figures: docs/performance.md)
bench:
	test/load/bench.sh

## bench-node: the apiserver's view of the webhook on a real node (root;
## about 12 minutes): the chart installed as pods (test/chartinstall), then
## Gloo gateway pods created through kube-apiserver at NODE_RATES per second
## for NODE_DURATION each, with and without the webhook, interleaved, for
## NODE_ROUNDS rounds (BenchmarkPodCreation in test/nodeload); prints a
## Markdown report and writes it to NODE_OUT (recorded figures:
## docs/performance.md)
NODE_RATES    ?= 50,200
NODE_DURATION ?= 20s
NODE_ROUNDS   ?= 5
NODE_OUT      ?= _output/bench-node.md
bench-node:
	test/controlplane/build-binaries.sh --with-kubelet >/dev/null
	@mkdir -p $(dir $(NODE_OUT))
	$(GO) test -count=1 -timeout 40m -run '^$$' -bench '^BenchmarkPodCreation$$' -benchtime $(NODE_ROUNDS)x ./test/nodeload/ \
	  -args -nodeload.rates=$(NODE_RATES) -nodeload.duration=$(NODE_DURATION) -nodeload.out=$(abspath $(NODE_OUT))

## golden: rewrite golden files after an intended output change
golden:
	$(GO) test ./webhook/inject -run TestGolden -update

## controlplane: build (or find cached) kube-apiserver, etcd, kube-controller-manager, kubectl
controlplane:
	test/controlplane/build-binaries.sh --with-controller-manager

## node: the real-node suites alone (root: kubelet + containerd + runc in a
## private network namespace; the node harness smoke test, the flavor proof,
## the chart installed as pods and the spire flavor with a real SPIRE)
node:
	test/controlplane/build-binaries.sh --with-kubelet >/dev/null
	$(GO) test -race -count=1 -p 1 -timeout 40m -v ./test/node/ ./test/flavors/ ./test/chartnode/ ./test/spirenode/

## demo: local control plane + sds-injector serve + an injected Gloo pod and an untouched app pod
demo:
	$(GO) run ./test/demo

clean:
	rm -rf bin/ _output/

.PHONY: helm manifests

## helm: build (or find cached) the helm CLI from the Go module proxy; prints its path
helm:
	@test/helm/build-helm.sh

## manifests: render deploy/manifests and deploy/webhook from the Helm chart
## (the install tests fail when they drift from the chart)
manifests:
	test/helm/render-manifests.sh deploy

.PHONY: spire

## spire: build (or find cached) SPIRE v1.13.3 spire-server and spire-agent
## that test/spire runs (cgo; ~20 min cold); prints their directory
spire:
	@test/spire/build-spire.sh

.PHONY: cert-manager

## cert-manager: build (or find cached) the real cert-manager v1.21.2 controller
## and cainjector the install suite runs (needs ../shared/third-party/cert-manager)
cert-manager:
	@test/certmanager/build-cert-manager.sh

## istio-releases: the flavor proof against released Istio versions, built from
## their release trees (slow: a build of 2-12 min per version, then ~2 min;
## not part of make test), e.g.
##   make istio-releases ISTIO_RELEASES="../shared/third-party/istio/istio-1.30.3.tar.gz"
## Default: every istio-*.tar.gz in ISTIO_RELEASES_DIR. See docs/compatibility.md.
ISTIO_RELEASES_DIR ?= ../shared/third-party/istio
ISTIO_RELEASES     ?= $(sort $(wildcard $(ISTIO_RELEASES_DIR)/istio-*.tar.gz))
.PHONY: istio-releases test-summary
istio-releases:
	@if [ -z "$(strip $(ISTIO_RELEASES))" ]; then \
	  echo "istio-releases: no release given: set ISTIO_RELEASES=\"<istio-X.Y.Z.tar.gz or source dir> ...\" (none found in $(ISTIO_RELEASES_DIR))"; exit 2; fi
	test/istio-releases/run.sh $(ISTIO_RELEASES)

# make test ends by saying what it did not run.
test-summary:
	@echo "make test: the released-Istio matrix was NOT run (too slow for make test; results: docs/compatibility.md)."
	@echo "  run it with: make istio-releases [ISTIO_RELEASES=\"<istio-X.Y.Z.tar.gz or unpacked tree> ...\"]$(if $(ISTIO_RELEASES), (found: $(notdir $(ISTIO_RELEASES))), (no istio-*.tar.gz in $(ISTIO_RELEASES_DIR)))"

.PHONY: images release-dry-run actionlint
IMAGE_TAG       ?= $(VERSION)
IMAGE_REGISTRY  ?= ghcr.io/sds-injector
IMAGE_PLATFORMS ?= linux/amd64,linux/arm64

## images: the sds-injector and sds-agent images for IMAGE_PLATFORMS, built
## without Docker or a registry, reproducibly (internal/imagebuild), into
## _output/images: <name>/ OCI layouts (crane push, skopeo copy) and <name>.tar
## (ctr -n k8s.io images import, kind load image-archive), tagged IMAGE_TAG
images:
	$(GO) run ./internal/cmd/build-images -o _output/images -version '$(VERSION)' -tag '$(IMAGE_TAG)' -registry '$(IMAGE_REGISTRY)' -platforms '$(IMAGE_PLATFORMS)'

## release-dry-run: every artifact a release publishes, in _output/release,
## nothing pushed: images (OCI layouts + tars), CLI binaries, SHA256SUMS, the
## packaged chart. RELEASE_VERSION defaults to the chart's appVersion and must
## match it (RELEASING.md)
RELEASE_VERSION ?=
release-dry-run:
	$(GO) run ./internal/cmd/release -o _output/release $(if $(RELEASE_VERSION),-version '$(RELEASE_VERSION)')

## actionlint: lint .github/workflows (actionlint built from the Go module proxy, cached); part of lint
actionlint:
	@.github/actionlint.sh
lint: actionlint

# Envoy Gateway's own translator on the guide's Envoy Gateway recipe, in its
# own Go module (test/envoygateway) so the product does not depend on Envoy
# Gateway. Part of make test (unit).
.PHONY: envoygateway
unit: envoygateway
envoygateway:
	cd test/envoygateway && $(GO) vet ./... && $(GOLANGCI_LINT) run --config ../../.golangci.yml ./...
	@mkdir -p $(TESTJSON)
	cd test/envoygateway && $(GOTESTSUM) --jsonfile $(CURDIR)/$(TESTJSON)/envoygateway.json -- -race -count=1 -timeout 20m ./...
