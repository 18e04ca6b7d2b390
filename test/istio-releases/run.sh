#!/usr/bin/env bash
# run.sh <release tarball or unpacked source dir> [...]
#
# For each Istio release given: builds its pilot-discovery and pilot-agent
# (build-release.sh: cached by version under
# ${SDS_INJECTOR_CACHE:-$HOME/.cache/sds-injector}/istio-release/<version>/),
# then runs the flavor proof on a real node (test/flavors: kubelet, containerd
# and runc in a network namespace of its own; every flavor x gateway x
# classic/native placement, and the negative controls) against that release,
# its pilot-agent in the proxyv2 test image and the webhooks' istioVersion
# set to it. Needs root, like the suite. Prints a result table at the end.
# Exit status: 0 when every case passed or is expected-unsupported.
#
# Env: FLAVORS_RUN (go test -run pattern, default every flavor case and
# negative control), FLAVORS_TIMEOUT (default 40m), LOG_DIR (default a new
# directory under ${TMPDIR:-/tmp}).
set -uo pipefail

if [ $# -eq 0 ]; then
  echo "usage: $0 <istio-X.Y.Z.tar.gz | unpacked istio-X.Y.Z dir> [...]" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
log_dir="${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/sds-injector-istio-releases.XXXXXX")}"
mkdir -p "$log_dir"
run_pattern="${FLAVORS_RUN:-^(TestFlavorsOnRealNode|TestNegativeControlsOnRealNode)$}"
timeout="${FLAVORS_TIMEOUT:-40m}"
rows="$log_dir/results.tsv"
# Each suite runs in its own session (setsid: session id = its pid). The
# control plane, istiod and the agents run in process groups of their own,
# so an interrupted run.sh ends every process of that session by its
# session id, then the stragglers that ignore SIGTERM, instead of leaving
# orphans.
suite_pid=""
stop_suite() {
  [ -n "$suite_pid" ] || return 0
  pkill -TERM -s "$suite_pid" 2>/dev/null
  for _ in $(seq 1 30); do pgrep -s "$suite_pid" >/dev/null || return 0; sleep 1; done
  pkill -KILL -s "$suite_pid" 2>/dev/null
}
trap 'stop_suite; exit 130' INT TERM
: >"$rows"
status=0

for arg in "$@"; do
  name=$(basename "$arg"); name=${name%.tar.gz}; name=${name#istio-}
  echo "=== Istio $name: build ($arg)"
  if ! out=$("$here/build-release.sh" "$arg" 2>"$log_dir/build-$name.log"); then
    tail -20 "$log_dir/build-$name.log" >&2
    printf '%s\t-\t-\t-\tfail\t-\tbuild failed (%s)\n' "$name" "$log_dir/build-$name.log" >>"$rows"
    status=1
    continue
  fi
  { read -r version; read -r bin; read -r src; } <<<"$out"
  echo "    binaries: $bin"
  echo "    source:   $src"
  results="$log_dir/cases-$version.tsv"
  : >"$results"
  testlog="$log_dir/flavors-$version.log"
  echo "=== Istio $version: flavor proof (log: $testlog)"
  started=$(date +%s)
  gotest=(go test -count=1 -timeout "$timeout" -v -run "$run_pattern" ./test/flavors/)
  export ISTIO_BIN="$bin" ISTIO_SOURCE_DIR="$src" ISTIO_RELEASE="$version" SDS_INJECTOR_FLAVOR_RESULTS="$results"
  # Each container has its own root on the node, so the agents' absolute
  # paths (/etc/istio/proxy before 1.14) need nothing from this host.
  (cd "$repo" && exec setsid "${gotest[@]}") >"$testlog" 2>&1 &
  suite_pid=$!
  wait "$suite_pid"
  rc=$?
  suite_pid=""
  unset ISTIO_BIN ISTIO_SOURCE_DIR ISTIO_RELEASE SDS_INJECTOR_FLAVOR_RESULTS
  echo "    go test exit $rc after $(( $(date +%s) - started ))s"
  grep -E '^(--- |    --- )(FAIL|SKIP)|istiod \(Istio release|differs for Istio|^(ok|FAIL)\s' "$testlog" | head -60 | sed 's/^ */    /'
  neg_pass=$(grep -cE -- '--- PASS: TestNegativeControlsOnRealNode/[^/]+/' "$testlog")
  neg_fail=$(grep -cE -- '--- FAIL: TestNegativeControlsOnRealNode/[^/]+/' "$testlog")
  echo "    negative controls: $neg_pass passed, $neg_fail failed"
  if [ ! -s "$results" ]; then
    why=$(grep -m1 -E 'setting up the control plane and istiod|panic:|build failed' "$testlog" || echo "no case ran")
    printf '%s\t-\t-\t-\tfail\t-\t%s\n' "$version" "${why:0:200}" >>"$rows"
    status=1
    continue
  fi
  cat "$results" >>"$rows"
  if [ $rc -ne 0 ]; then
    status=1
    if ! grep -qP '\tfail\t' "$results"; then
      printf '%s\t-\t-\t-\tfail\t-\tgo test failed outside the flavor cases (negative controls?), see %s\n' "$version" "$testlog" >>"$rows"
    fi
  fi
done

if grep -qP '\t(fail|skip)\t' "$rows"; then status=1; fi
echo
echo "Results (logs in $log_dir):"
{
  printf 'version\tflavor\tgateway\tplacement\tresult\tfirst cert (ms)\tnotes\n'
  cat "$rows"
} | awk -F'\t' '{ printf "%-8s %-18s %-14s %-9s %-12s %-15s %s\n", $1, $2, $3, $4, $5, $6, $7 }'
exit $status
