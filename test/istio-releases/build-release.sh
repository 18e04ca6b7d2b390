#!/usr/bin/env bash
# build-release.sh <release tarball or unpacked source dir>
#
# Unpacks (if given a tarball) and builds one Istio release's pilot-discovery
# and pilot-agent, cached by version under
#   ${SDS_INJECTOR_CACHE:-$HOME/.cache/sds-injector}/istio-release/<version>/
# with the unpacked tree in src/ (tarballs only; a source dir is used in
# place). Built only when missing; concurrent callers wait on a flock.
# Prints three lines on stdout: the version, the binary dir, the source dir.
set -euo pipefail

arg="${1:?usage: build-release.sh <istio-X.Y.Z.tar.gz | unpacked source dir>}"
CACHE_ROOT="${SDS_INJECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sds-injector}"

if [ -d "$arg" ]; then
  src=$(cd "$arg" && pwd)
  version=$(basename "$src"); version=${version#istio-}
  # The tree's own name is authoritative only when it looks like a version.
  if ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]]; then
    echo "build-release.sh: cannot tell the release of $src from its name (want istio-X.Y.Z)" >&2
    exit 2
  fi
elif [ -f "$arg" ]; then
  base=$(basename "$arg"); version=${base#istio-}; version=${version%.tar.gz}
  if ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]]; then
    echo "build-release.sh: cannot tell the release of $arg from its name (want istio-X.Y.Z.tar.gz)" >&2
    exit 2
  fi
  src=""
else
  echo "build-release.sh: $arg: no such file or directory" >&2
  exit 2
fi

dir="$CACHE_ROOT/istio-release/$version"
[ -n "$src" ] || src="$dir/src/istio-$version"
have() { [ -x "$dir/bin/pilot-discovery" ] && [ -x "$dir/bin/pilot-agent" ] && [ -f "$src/go.mod" ]; }
report() { printf '%s\n%s\n%s\n' "$version" "$dir/bin" "$src"; }
if have; then report; exit 0; fi
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if have; then report; exit 0; fi

if [ ! -f "$src/go.mod" ]; then
  echo "unpacking $arg into $dir/src" >&2
  rm -rf "$dir/src.tmp"; mkdir -p "$dir/src.tmp"
  tar -xzf "$arg" -C "$dir/src.tmp"
  [ -f "$dir/src.tmp/istio-$version/go.mod" ] || { echo "build-release.sh: $arg does not unpack into istio-$version/" >&2; exit 2; }
  # The tarballs are read-only at the source; the build writes go.sum.
  chmod -R u+w "$dir/src.tmp"
  rm -rf "$dir/src"; mv "$dir/src.tmp" "$dir/src"
fi

export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
echo "building pilot-discovery and pilot-agent of Istio $version in $src (2-12 min on 2 cores)" >&2
rm -rf "$dir/bin.tmp"; mkdir -p "$dir/bin.tmp"
started=$(date +%s)
(cd "$src" && go build -trimpath -o "$dir/bin.tmp/" ./pilot/cmd/pilot-discovery ./pilot/cmd/pilot-agent) >&2
rm -rf "$dir/bin"; mv "$dir/bin.tmp" "$dir/bin"
echo "built Istio $version in $(( $(date +%s) - started ))s" >&2
report
