#!/usr/bin/env bash
# Builds the real SPIRE server and agent that test/spire runs, and caches them
# outside the repository keyed by version. Built only when missing; concurrent
# callers wait on a lock.
#
# Inputs: only the Go module proxy. `go install ...@v1.13.3` is refused (the
# proxy lists no versions for the cmd packages), so the binaries are built in a
# throwaway module that requires SPIRE as a tool dependency
# (see ../shared/reference/spire-sds.md). cgo is needed for sqlite3.
#
# Prints the directory holding spire-server and spire-agent.
set -euo pipefail

SPIRE_VERSION="${SPIRE_VERSION:-1.13.3}"
CACHE_ROOT="${SDS_INJECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sds-injector}"
BIN_DIR="$CACHE_ROOT/spire-v${SPIRE_VERSION}"

have_all() { [ -x "$BIN_DIR/spire-server" ] && [ -x "$BIN_DIR/spire-agent" ]; }
if have_all; then echo "$BIN_DIR"; exit 0; fi

command -v gcc >/dev/null || { echo "building SPIRE needs cgo (sqlite3): gcc is not installed (apt-get install gcc)" >&2; exit 1; }

mkdir -p "$BIN_DIR"
exec 9>"$BIN_DIR/.lock"
flock 9
if have_all; then echo "$BIN_DIR"; exit 0; fi

work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=1

start=$(date +%s)
cd "$work"
go mod init sds-injector.local/spire-build >&2
for cmd in spire-server spire-agent; do
  go get -tool "github.com/spiffe/spire/cmd/$cmd@v${SPIRE_VERSION}" >&2
done
for cmd in spire-server spire-agent; do
  echo "building $cmd (SPIRE v${SPIRE_VERSION}; first time takes ~15 min)" >&2
  nice -n 10 go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/$cmd.tmp" "github.com/spiffe/spire/cmd/$cmd" >&2
  mv "$BIN_DIR/$cmd.tmp" "$BIN_DIR/$cmd"
done
echo "SPIRE v${SPIRE_VERSION} built in $(( $(date +%s) - start ))s" >&2
echo "$BIN_DIR"
