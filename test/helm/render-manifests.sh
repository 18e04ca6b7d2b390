#!/usr/bin/env bash
# Renders the plain manifests from the Helm chart, so that the chart is the
# single source of truth:
#   <out>/manifests/<modes>-<certificates>.yaml  complete installs for kubectl apply
#   <out>/webhook/<mode>-mode.yaml               one MutatingWebhookConfiguration per mode
# `make manifests` writes them into deploy/; the install tests render them
# into a temporary directory and fail when deploy/ differs.
#
# Usage: render-manifests.sh OUTDIR   (helm comes from build-helm.sh, or $HELM)
set -euo pipefail

out="${1:?usage: render-manifests.sh OUTDIR}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
chart="$root/deploy/helm/sds-injector"
helm="${HELM:-$("$here/build-helm.sh")}"

release=sds-injector
namespace=sds-injector

# Labels that only make sense for a Helm release are dropped from plain
# manifests (kubectl users do not manage them with Helm).
strip_helm_labels() {
  grep -v -e '^ *app.kubernetes.io/managed-by: Helm$' -e '^ *helm.sh/chart: '
}

render() { # file header-values helm-args...
  local file="$1" desc="$2"
  shift 2
  {
    echo "# sds-injector: $desc"
    echo "# Generated from deploy/helm/sds-injector by \`make manifests\`; do not edit."
    echo "# Rendered with: helm template $release deploy/helm/sds-injector --namespace $namespace --set createNamespace=true $*"
    "$helm" template "$release" "$chart" --namespace "$namespace" --set createNamespace=true "$@" | strip_helm_labels
  } >"$file.tmp"
  mv "$file.tmp" "$file"
}

mkdir -p "$out/manifests" "$out/webhook"
for certs in self-managed cert-manager; do
  for modes in namespace per-gateway namespace-per-gateway cluster-wide; do
    ns=false pg=false cw=false
    case "$modes" in
      namespace) ns=true ;;
      per-gateway) pg=true ;;
      namespace-per-gateway) ns=true pg=true ;;
      cluster-wide) cw=true ;;
    esac
    render "$out/manifests/$modes-$certs.yaml" \
      "complete install, modes: ${modes//-per-gateway/ + per-gateway}, certificates: $certs" \
      --set "certificates.mode=$certs" \
      --set "modes.namespace.enabled=$ns,modes.perGateway.enabled=$pg,modes.clusterWide.enabled=$cw"
  done
done

# The bare webhook configurations (no caBundle, no cert-manager annotation).
for mode in namespace per-gateway cluster-wide; do
  file="$out/webhook/$mode-mode.yaml"
  {
    echo "# Generated from deploy/helm/sds-injector (templates/webhook-$mode.yaml) by \`make manifests\`; do not edit."
    "$helm" template "$release" "$chart" --namespace "$namespace" \
      --set modes.namespace.enabled=true,modes.perGateway.enabled=true,modes.clusterWide.enabled=true \
      --show-only "templates/webhook-$mode.yaml" |
      strip_helm_labels | grep -v -e '^---$' -e '^# Source: '
  } >"$file.tmp"
  mv "$file.tmp" "$file"
done
