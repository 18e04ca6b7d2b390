#!/usr/bin/env bash
# Builds kube-proxy, kube-scheduler and a version-stamped kube-apiserver
# from the Go module proxy (k8s.io/kubernetes, the same release as the node's
# kubelet and control plane) and caches them outside the repository keyed by
# version. Nothing is downloaded from anywhere but the module proxy. The
# chart-on-a-node suite (test/chartnode) runs them: the scheduler places the
# chart's Deployment pods, kube-proxy makes Service ClusterIPs work inside the
# node's network namespace, and the API server reports its real version
# (test/controlplane's build leaves it at v0.0.0-master, which the chart's
# kubeVersion: >=1.30.0-0 refuses at helm install).
#
# Usage: build-node-extras.sh    Prints the directory holding the binaries.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.37.2}"
CACHE_ROOT="${SDS_INJECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sds-injector}"
DIR="$CACHE_ROOT/kube-node-extras-v${KUBE_VERSION}"
BINS=(kube-proxy kube-scheduler kube-apiserver)
have() { for b in "${BINS[@]}"; do [ -x "$DIR/$b" ] || return 1; done; }

if have; then echo "$DIR"; exit 0; fi
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9
if have; then echo "$DIR"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
cd "$work"
go mod init sds-injector.local/kubenodeextras >/dev/null 2>&1
# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them
# with local paths; from the proxy each is pointed at its release tag.
modfile=$(go mod download -json "k8s.io/kubernetes@v${KUBE_VERSION}" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
go mod edit -require="k8s.io/kubernetes@v${KUBE_VERSION}"
for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9./-]*\) => ./staging/.*#\1#p' "$modfile"); do
  go mod edit -replace="$m=$m@v0.${KUBE_VERSION#1.}"
done
v=k8s.io/component-base/version
ldflags="-X $v.gitVersion=v${KUBE_VERSION} -X $v.gitMajor=${KUBE_VERSION%%.*} -X $v.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
for b in "${BINS[@]}"; do
  [ -x "$DIR/$b" ] && continue
  pkg=k8s.io/kubernetes/cmd/$b
  echo "building $b v${KUBE_VERSION} (first time takes minutes)" >&2
  go get "$pkg@v${KUBE_VERSION}" >&2 2>/dev/null || true
  go build -trimpath -ldflags "$ldflags" -o "$DIR/$b.tmp" "$pkg" >&2
  mv "$DIR/$b.tmp" "$DIR/$b"
done
echo "$DIR"
