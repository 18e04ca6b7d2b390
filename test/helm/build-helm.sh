#!/usr/bin/env bash
# Builds the helm CLI from the Go module proxy and caches it outside the
# repository, keyed by version, so that rendering the chart (make manifests,
# the install tests) needs nothing downloaded from anywhere but the module
# proxy. The build runs in a throw-away module, so it never touches the
# project's go.mod. The first build takes a few minutes.
#
# Usage: build-helm.sh
# Prints the path of the helm binary.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-3.22.0}"
CACHE_ROOT="${SDS_INJECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sds-injector}"
BIN_DIR="$CACHE_ROOT/bin/helm-v${HELM_VERSION}"
HELM="$BIN_DIR/helm"

if [ -x "$HELM" ]; then echo "$HELM"; exit 0; fi

mkdir -p "$BIN_DIR"
# One build at a time per cache: a second caller waits for the first.
exec 9>"$BIN_DIR/.lock"
flock 9
if [ -x "$HELM" ]; then echo "$HELM"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building helm v${HELM_VERSION} from the Go module proxy (first time takes a few minutes)" >&2
(
  cd "$work"
  export GOFLAGS= GOWORK=off GOBIN="$work/bin" CGO_ENABLED=0
  # As Helm's own Makefile does, stamp the version and the default
  # Kubernetes version `helm template` assumes (derived from the client-go
  # Helm is built with; unstamped it would be v1.20).
  gomod=$(go mod download -json "helm.sh/helm/v3@v${HELM_VERSION}" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  kminor=$(sed -n 's#^\s*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod" | head -1)
  [ -n "$kminor" ] || { echo "cannot find the client-go version in $gomod" >&2; exit 1; }
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v${HELM_VERSION}"
  for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags="$ldflags -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$kminor"
  done
  # `go install pkg@version` builds in the module's own context (its go.mod,
  # its pinned dependencies), outside any workspace or our module.
  go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@v${HELM_VERSION}" >&2
)
mv "$work/bin/helm" "$HELM.tmp"
mv "$HELM.tmp" "$HELM"
echo "$HELM"
