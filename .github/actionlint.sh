#!/usr/bin/env bash
# Lints the GitHub workflows with actionlint, built from the Go module proxy
# and cached outside the repository keyed by version (like the helm and
# control-plane builds). `make lint` (and so `make test`) runs it.
# actionlint also runs shellcheck on every `run:` script when shellcheck is
# on PATH; run as root with apt-get (CI), this script installs it when missing,
# otherwise it says that the scripts were not shellchecked.
#
# Usage: .github/actionlint.sh [actionlint flags...]
set -euo pipefail

ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-1.7.12}"
CACHE_ROOT="${SDS_INJECTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sds-injector}"
BIN_DIR="$CACHE_ROOT/bin/actionlint-v${ACTIONLINT_VERSION}"
ACTIONLINT="$BIN_DIR/actionlint"

if [ ! -x "$ACTIONLINT" ]; then
  mkdir -p "$BIN_DIR"
  exec 9>"$BIN_DIR/.lock"
  flock 9
  if [ ! -x "$ACTIONLINT" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "building actionlint v${ACTIONLINT_VERSION} from the Go module proxy" >&2
    (
      cd "$work"
      export GOFLAGS= GOWORK=off GOBIN="$work/bin" CGO_ENABLED=0
      go install -trimpath -ldflags "-s -w -X github.com/rhysd/actionlint.version=v${ACTIONLINT_VERSION}" \
        "github.com/rhysd/actionlint/cmd/actionlint@v${ACTIONLINT_VERSION}" >&2
    )
    mv "$work/bin/actionlint" "$ACTIONLINT.tmp"
    mv "$ACTIONLINT.tmp" "$ACTIONLINT"
  fi
fi

cd "$(dirname "$0")/.."
# shellcheck makes actionlint check the run: scripts; install it when
# missing where that is possible (root with apt-get, as on CI).
if ! command -v shellcheck >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "shellcheck missing: installing it with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends shellcheck >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends shellcheck >&2; }
fi
if command -v shellcheck >/dev/null 2>&1; then
  echo "actionlint v${ACTIONLINT_VERSION} (run: scripts checked with $(shellcheck --version | sed -n 's/^version: /shellcheck /p'))" >&2
else
  echo "actionlint v${ACTIONLINT_VERSION} (shellcheck not on PATH: run: scripts are not shellchecked; apt-get install shellcheck)" >&2
fi
exec "$ACTIONLINT" -no-color "$@"
