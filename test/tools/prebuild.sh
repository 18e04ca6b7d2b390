#!/usr/bin/env bash
# Builds, ahead of need, the third-party binaries make test's suites run:
# helm, the Kubernetes control plane and kubelet, cert-manager, the node
# extras, istiod/pilot-agent and SPIRE. Each comes from its own build script
# (cached outside the repository, keyed by version, built only when missing,
# one build at a time per cache behind a lock), so this adds no second way to
# build anything: it only starts those scripts early.
#
# Why: on a machine whose caches are cold, these builds take about 40 minutes
# of a 2-core machine. Started by the suite that first needs them they run
# while that suite waits, one after another, and the lint and unit phases
# before them leave cores idle (module downloads, single-threaded links,
# tests waiting on conditions). Started at the beginning of make test, at the
# lowest CPU priority, they use that idle time, and a suite that needs a
# binary still being built waits on the build script's lock as before.
#
# Usage:
#   prebuild.sh                 build everything now, in the order make test
#                               needs it; prints one line per build
#   prebuild.sh --beside CMD..  run CMD with the builds going on beside it
#                               (lowest CPU priority, log in
#                               _output/prebuild.log); when CMD ends the
#                               builds still running are stopped, their
#                               lines printed, and CMD's status returned
#
# A build that fails here is only reported: the suite that needs the binary
# runs the same script again and fails with its error.
set -uo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = --beside ]; then
  shift
  [ $# -gt 0 ] || { echo "usage: $0 --beside CMD [ARGS...]" >&2; exit 2; }
  mkdir -p _output
  log=_output/prebuild.log
  # Its own session, so that stopping it stops the go builds under it.
  setsid bash "$0" >"$log" 2>&1 </dev/null &
  pid=$!
  stop() {
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
      echo "prebuild: stopped (the command ended first)" >>"$log"
    fi
  }
  trap 'stop; exit 130' INT TERM
  rc=0
  "$@" || rc=$?
  stop
  echo "prebuild (log: $log):"
  grep '^prebuild:' "$log" | sed 's/^/  /'
  exit "$rc"
fi

start_all=$(date +%s)
# step <name> <script> [args]: runs one build script; its output goes to the
# log (stderr), its status and duration to one "prebuild:" line.
step() {
  local name=$1 start rc
  shift
  start=$(date +%s)
  echo "=== $name: $*" >&2
  "$@" >&2
  rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "prebuild: $name ready in $(( $(date +%s) - start ))s"
  else
    echo "prebuild: $name FAILED (exit $rc) after $(( $(date +%s) - start ))s; the suite that needs it builds it again and reports why"
  fi
}

# helm first and at normal priority: a unit test (internal/cmd/release)
# needs it while the unit phase keeps both cores busy, and a lowest-priority
# build that a test waits for would starve.
step helm test/helm/build-helm.sh
renice -n 19 $$ >/dev/null
# Then in the order the suites (go test -p 1 ./test/..., alphabetical) need
# them: test/certmanager needs the control plane and cert-manager,
# test/chartinstall and test/chartnode the kubelet and the node extras,
# test/chartnode istiod, test/spire and test/spirenode SPIRE.
step kubernetes test/controlplane/build-binaries.sh --with-kubelet
step cert-manager test/certmanager/build-cert-manager.sh
step node-extras test/node/build-node-extras.sh
step istio test/istiod/build-istio.sh
step spire test/spire/build-spire.sh
echo "prebuild: all done in $(( $(date +%s) - start_all ))s"
