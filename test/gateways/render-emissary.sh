#!/usr/bin/env bash
# Re-renders testdata/emissary/crds.yaml (Emissary-ingress's TLSContext and
# Mapping CRDs) from a git snapshot of github.com/emissary-ingress/emissary:
# Emissary's module is not on the Go module proxy and CI cannot reach
# GitHub, so the rendered CRDs are committed (testdata/emissary/README.md).
#
# Usage: render-emissary.sh <path to an emissary-ingress/emissary git dir> [tag]
#   e.g. render-emissary.sh /work/.mirror/emissary-ingress+emissary/repo v4.1.0
#
# The CRD chart (charts/emissary-crds) is rendered with its default values
# (enableLegacyVersions: false: v3alpha1 is the stored version and no
# conversion webhook is needed) by the repository's helm (test/helm/build-helm.sh).
set -euo pipefail

repo="${1:?usage: render-emissary.sh <emissary-ingress/emissary git dir> [tag]}"
tag="${2:-v4.1.0}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/testdata/emissary"

commit="$(git --git-dir="$repo" rev-parse "$tag^{commit}")"
helm="$(bash "$root/test/helm/build-helm.sh" | tail -1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/chart"
git --git-dir="$repo" archive "$tag:charts/emissary-crds" | tar -x -C "$work/chart"
mkdir -p "$out"
{
  printf '# Rendered from github.com/emissary-ingress/emissary %s (commit %s), chart charts/emissary-crds,\n' "$tag" "$commit"
  printf '# default values. Do not edit: re-render with test/gateways/render-emissary.sh.\n'
  "$helm" template emissary-crds "$work/chart" --namespace emissary \
    --show-only templates/tlscontexts.yaml --show-only templates/mappings.yaml
} >"$out/crds.yaml"
printf 'repository github.com/emissary-ingress/emissary\ntag %s\ncommit %s\nhelm %s\n' "$tag" "$commit" "$("$helm" version --short)" >"$out/PROVENANCE"
echo "rendered Emissary $tag ($commit) CRDs into $out"
