#!/usr/bin/env bash
# Re-renders the Gloo Edge fixtures in testdata/gloo from a git snapshot of
# github.com/solo-io/gloo (Gloo's module is not on the Go module proxy and CI
# cannot reach GitHub, so the rendered output is committed; testdata/gloo/
# README.md says what each file is and where it came from).
#
# Usage: render-gloo.sh <path to a solo-io/gloo git directory> [tag]
#   e.g. render-gloo.sh /work/.mirror/solo-io+gloo/repo v1.22.1
#
# It extracts install/helm/gloo at the tag, makes the chart's values.yaml and
# Chart.yaml as Gloo's generator (install/helm/gloo/generate.go) does, with
# Gloo's own generate types (gloovalues/main.go.txt, built in a throw-away
# module), renders the chart with the repository's helm
# (test/helm/build-helm.sh) and the drop-in values of docs/gateway-wiring.md
# (testdata/gloo/drop-in-values.yaml, kept equal to the guide by
# TestGlooDropInValuesAreTheGuides), and writes the gateway-proxy Deployment,
# its bootstrap ConfigMap and Gloo's Upstream CRD.
set -euo pipefail

repo="${1:?usage: render-gloo.sh <solo-io/gloo git dir> [tag]}"
tag="${2:-v1.22.1}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/testdata/gloo"
version="${tag#v}"

commit="$(git --git-dir="$repo" rev-parse "$tag^{commit}")"
helm="$(bash "$root/test/helm/build-helm.sh" | tail -1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The chart subtree only (a snapshot may lack objects elsewhere in the tree).
chart="$work/chart"
mkdir -p "$chart"
git --git-dir="$repo" archive "$tag:install/helm/gloo" | tar -x -C "$chart"

gen="$work/gen"
mkdir -p "$gen/install/helm/gloo/generate"
cp "$chart"/generate/*.go "$gen/install/helm/gloo/generate/"
cp "$here/gloovalues/main.go.txt" "$gen/main.go"
k8s_api="$(git --git-dir="$repo" show "$tag:go.mod" | awk '$1=="k8s.io/api"{print $2; exit}')"
(
  cd "$gen"
  export GOFLAGS=-mod=mod GOWORK=off
  go mod init github.com/solo-io/gloo >/dev/null 2>&1
  go get "k8s.io/api@$k8s_api" sigs.k8s.io/yaml >/dev/null
  go mod tidy >/dev/null
  go run . "$chart" "$version"
)

render() { # <template> <output>
  {
    printf '# Rendered from github.com/solo-io/gloo %s (commit %s), chart install/helm/gloo,\n' "$tag" "$commit"
    printf '# template %s, values drop-in-values.yaml (see README.md). Do not edit: re-render with test/gateways/render-gloo.sh.\n' "$1"
    "$helm" template gloo "$chart" --namespace gloo-system --values "$out/drop-in-values.yaml" --show-only "$1"
  } >"$2"
}
render templates/7-gateway-proxy-deployment.yaml "$out/gateway-proxy-deployment.yaml"
render templates/9-gateway-proxy-configmap.yaml "$out/gateway-proxy-envoy-config.yaml"
mkdir -p "$out/crds"
{
  printf '# From github.com/solo-io/gloo %s (commit %s), install/helm/gloo/crds/gloo.solo.io_v1_Upstream.yaml, unchanged below.\n' "$tag" "$commit"
  cat "$chart/crds/gloo.solo.io_v1_Upstream.yaml"
} >"$out/crds/gloo.solo.io_v1_Upstream.yaml"
printf 'repository github.com/solo-io/gloo\ntag %s\ncommit %s\nhelm %s\n' "$tag" "$commit" "$("$helm" version --short)" >"$out/PROVENANCE"
echo "rendered Gloo $tag ($commit) into $out"
