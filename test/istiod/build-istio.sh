#!/usr/bin/env bash
# Builds Istio's pilot-discovery (istiod) and pilot-agent from the Go module
# proxy and caches them outside the repository, keyed by version. Prints the
# directory holding them. Used by the tests that run a real istiod.
set -euo pipefail

ISTIO_VERSION="${ISTIO_MODULE_VERSION:-v0.0.0-20260827124520-eed52ebb66ad}"
CACHE_ROOT="${SDS_INJECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sds-injector}"
BIN_DIR="$CACHE_ROOT/istio/$ISTIO_VERSION"

have() { [ -x "$BIN_DIR/pilot-discovery" ] && [ -x "$BIN_DIR/pilot-agent" ]; }
if have; then echo "$BIN_DIR"; exit 0; fi
mkdir -p "$BIN_DIR"
exec 9>"$BIN_DIR/.lock"
flock 9
if have; then echo "$BIN_DIR"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
cd "$work"
go mod init sds-injector.local/istiobuild >/dev/null 2>&1
echo "building pilot-discovery and pilot-agent from istio.io/istio@$ISTIO_VERSION (first time takes about 10 minutes)" >&2
go get "istio.io/istio@$ISTIO_VERSION" >&2
for b in pilot-discovery pilot-agent; do
  go build -trimpath -o "$BIN_DIR/$b.tmp" "istio.io/istio/pilot/cmd/$b" >&2
  mv "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"
done
echo "$BIN_DIR"
