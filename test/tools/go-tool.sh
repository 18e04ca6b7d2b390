#!/usr/bin/env bash
# Builds a Go command-line tool from the Go module proxy with
# `go install pkg@version` (in the tool's own module context: its go.mod,
# its pinned dependencies, never this project's go.mod) and caches it
# outside the repository, keyed by name and version. Used for the pinned
# lint tools `make lint` runs.
#
# Usage: go-tool.sh <name> <package> <version>
#   e.g. go-tool.sh golangci-lint github.com/golangci/golangci-lint/v2/cmd/golangci-lint v2.15.0
# Prints the path of the binary.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 <name> <package> <version>" >&2; exit 2; }
name=$1 pkg=$2 version=$3

CACHE_ROOT="${SDS_INJECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sds-injector}"
BIN_DIR="$CACHE_ROOT/bin/${name}-${version}"
BIN="$BIN_DIR/$name"

if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$BIN_DIR"
# One build at a time per cache: a second caller waits for the first.
exec 9>"$BIN_DIR/.lock"
flock 9
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building $name $version from the Go module proxy (first time takes a few minutes)" >&2
(
  cd "$work"
  export GOFLAGS= GOWORK=off GOBIN="$work/bin" CGO_ENABLED=0
  go install -trimpath -ldflags "-s -w" "${pkg}@${version}" >&2
)
mv "$work/bin/$(basename "$pkg")" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
