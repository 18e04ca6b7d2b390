#!/usr/bin/env bash
# Builds the control-plane binaries the integration tests and `make demo` use
# (kube-apiserver, etcd, and optionally kube-controller-manager and kubectl,
# and the kubelet for the real-node suites)
# from the Go module proxy, and caches them outside the repository keyed by
# version. Nothing is downloaded from anywhere but the module proxy.
#
# Usage: build-binaries.sh [--with-controller-manager] [--with-kubelet]
# Prints the directory holding the binaries (usable as KUBEBUILDER_ASSETS).
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
CACHE_ROOT="${SDS_INJECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sds-injector}"
BIN_DIR="$CACHE_ROOT/controlplane/k8s-v${KUBE_VERSION}-etcd-v${ETCD_VERSION}"

want=(kube-apiserver etcd)
for arg in "$@"; do
  case "$arg" in
    --with-controller-manager) want+=(kube-controller-manager kubectl) ;;
    --with-kubelet) want+=(kube-controller-manager kubectl kubelet) ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

missing=()
for b in "${want[@]}"; do [ -x "$BIN_DIR/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$BIN_DIR"; exit 0; fi

mkdir -p "$BIN_DIR"
# One build at a time per cache: a second caller waits for the first.
exec 9>"$BIN_DIR/.lock"
flock 9
missing=()
for b in "${want[@]}"; do [ -x "$BIN_DIR/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$BIN_DIR"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

build_kube() {
  local dir="$work/kube"
  mkdir -p "$dir"
  (
    cd "$dir"
    go mod init sds-injector.local/kubebuild >/dev/null 2>&1
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces
    # them with local paths; from the proxy we point each at its release tag.
    modfile=$(go mod download -json "k8s.io/kubernetes@v${KUBE_VERSION}" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
    go mod edit -require="k8s.io/kubernetes@v${KUBE_VERSION}"
    for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9./-]*\) => ./staging/.*#\1#p' "$modfile"); do
      go mod edit -replace="$m=$m@v0.${KUBE_VERSION#1.}"
    done
    for b in "${missing[@]}"; do
      case "$b" in
        kube-apiserver) pkg=k8s.io/kubernetes/cmd/kube-apiserver ;;
        kube-controller-manager) pkg=k8s.io/kubernetes/cmd/kube-controller-manager ;;
        kubectl) pkg=k8s.io/kubernetes/cmd/kubectl ;;
        kubelet) pkg=k8s.io/kubernetes/cmd/kubelet ;;
        *) continue ;;
      esac
      echo "building $b v${KUBE_VERSION} (first time takes minutes)" >&2
      go get "$pkg@v${KUBE_VERSION}" >&2 2>/dev/null || true
      ldflags=""
      if [ "$b" = kubelet ]; then
        # The node reports this version to the apiserver; without it the
        # kubelet says v0.0.0-master and version-gated behaviour is wrong.
        v=k8s.io/component-base/version
        ldflags="-X $v.gitVersion=v${KUBE_VERSION} -X $v.gitMajor=${KUBE_VERSION%%.*} -X $v.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
      fi
      go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/$b.tmp" "$pkg" >&2
      mv "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"
    done
  )
}

build_etcd() {
  local dir="$work/etcd"
  mkdir -p "$dir"
  (
    cd "$dir"
    go mod init sds-injector.local/etcdbuild >/dev/null 2>&1
    echo "building etcd v${ETCD_VERSION}" >&2
    go get "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" >&2
    go build -trimpath -o "$BIN_DIR/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
    mv "$BIN_DIR/etcd.tmp" "$BIN_DIR/etcd"
  )
}

for b in "${missing[@]}"; do
  if [ "$b" = etcd ]; then build_etcd; fi
done
for b in "${missing[@]}"; do
  if [ "$b" != etcd ]; then build_kube; break; fi
done
echo "$BIN_DIR"
