#!/usr/bin/env bash
# Builds the real cert-manager controller and cainjector that the install
# suite runs against the local apiserver, and caches them outside the
# repository keyed by version. Built only when missing; concurrent callers
# wait on a lock.
#
# Inputs (nothing else is downloaded, and only from the Go module proxy):
#   - the github.com/cert-manager/cert-manager@v${CERT_MANAGER_VERSION} module
#     (library code, CRDs in deploy/crds) from the module proxy;
#   - cmd/controller and cmd/cainjector, nested main modules the proxy does not
#     serve, from a snapshot of the public repository kept in
#     ${SDS_INJECTOR_THIRD_PARTY:-<repo>/../shared/third-party}/cert-manager/
#     (see ../shared/reference/real-cert-manager.md).
# Workarounds (documented in that reference):
#   - each main package is built with the replace of the library dropped and
#     v${CERT_MANAGER_VERSION} required instead;
#   - github.com/Venafi/vcert/v5, which the proxy refuses, is cut out: the
#     controller builds against a local copy of the library in which the
#     Venafi issuer is not linked (its two controller names stay as strings,
#     and controllers without a constructor are skipped).
#
# Exit status 3 means the third-party sources are missing (the message says
# which file); the tests report that instead of skipping silently.
#
# Prints the directory holding cm-controller, cainjector and crds/.
set -euo pipefail

CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-1.21.2}"
CMD_BRANCH="${CERT_MANAGER_CMD_BRANCH:-release-1.21}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
THIRD_PARTY="${SDS_INJECTOR_THIRD_PARTY:-$repo/../shared/third-party}"
CMD_TARBALL="${CERT_MANAGER_CMD_TARBALL:-$THIRD_PARTY/cert-manager/cert-manager-cmd-${CMD_BRANCH}.tar.gz}"
CACHE_ROOT="${SDS_INJECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sds-injector}"
BIN_DIR="$CACHE_ROOT/cert-manager-v${CERT_MANAGER_VERSION}"

have_all() {
  [ -x "$BIN_DIR/cm-controller" ] && [ -x "$BIN_DIR/cainjector" ] && [ -f "$BIN_DIR/crds/.complete" ]
}
if have_all; then echo "$BIN_DIR"; exit 0; fi

if [ ! -f "$CMD_TARBALL" ]; then
  echo "cert-manager v${CERT_MANAGER_VERSION} is not built and its sources are missing: $CMD_TARBALL" >&2
  echo "(cmd/controller and cmd/cainjector of cert-manager/cert-manager branch ${CMD_BRANCH}; set SDS_INJECTOR_THIRD_PARTY or CERT_MANAGER_CMD_TARBALL)" >&2
  exit 3
fi

mkdir -p "$BIN_DIR"
exec 9>"$BIN_DIR/.lock"
flock 9
if have_all; then echo "$BIN_DIR"; exit 0; fi

work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

lib=github.com/cert-manager/cert-manager
echo "fetching $lib@v${CERT_MANAGER_VERSION} from the module proxy" >&2
libdir=$(cd "$work" && go mod download -json "$lib@v${CERT_MANAGER_VERSION}" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
[ -d "$libdir/deploy/crds" ] || { echo "module $lib@v${CERT_MANAGER_VERSION} has no deploy/crds" >&2; exit 1; }

tar -xzf "$CMD_TARBALL" -C "$work"
[ -d "$work/cmd/controller" ] && [ -d "$work/cmd/cainjector" ] || { echo "$CMD_TARBALL has no cmd/controller, cmd/cainjector" >&2; exit 1; }

# The library without the Venafi issuer, for the controller only.
cp -r "$libdir" "$work/lib"
chmod -R u+w "$work/lib"
defaults="$work/lib/internal/apis/config/controller/v1alpha1/defaults.go"
sed -i \
  -e '/pkg\/controller\/certificaterequests\/venafi"/d' \
  -e '/pkg\/controller\/certificatesigningrequests\/venafi"/d' \
  -e 's/crvenaficontroller\.CRControllerName/"certificaterequests-issuer-venafi"/' \
  -e 's/csrvenaficontroller\.CSRControllerName/"certificatesigningrequests-issuer-venafi"/' \
  "$defaults"
(cd "$work/lib" && go mod edit -droprequire github.com/Venafi/vcert/v5)
sed -i '/pkg\/issuer\/venafi"/d' "$work/cmd/controller/app/start.go"
if grep -q '/venafi"' "$defaults" "$work/cmd/controller/app/start.go"; then
  echo "the Venafi workaround no longer applies to these sources" >&2; exit 1
fi

build() { # <cmd dir> <output name> [replacement dir]
  local dir="$work/cmd/$1" out="$2" repl="${3:-}"
  (
    cd "$dir"
    go mod edit -dropreplace "$lib" -require "$lib@v${CERT_MANAGER_VERSION}"
    if [ -n "$repl" ]; then
      go mod edit -replace "$lib=$repl" -droprequire github.com/Venafi/vcert/v5
    fi
    echo "building $out (cert-manager v${CERT_MANAGER_VERSION}; first time takes minutes)" >&2
    nice -n 10 go build -trimpath -ldflags "-s -w -X $lib/pkg/util.AppVersion=v${CERT_MANAGER_VERSION}" -o "$BIN_DIR/$out.tmp" . >&2
    mv "$BIN_DIR/$out.tmp" "$BIN_DIR/$out"
  )
}
build cainjector cainjector
build controller cm-controller "$work/lib"

rm -rf "$BIN_DIR/crds"
mkdir -p "$BIN_DIR/crds"
cp "$libdir"/deploy/crds/*.yaml "$BIN_DIR/crds/"
chmod u+w "$BIN_DIR"/crds/*.yaml
touch "$BIN_DIR/crds/.complete"
echo "$BIN_DIR"
