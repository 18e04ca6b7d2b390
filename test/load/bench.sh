#!/usr/bin/env bash
# make bench: Go benchmarks (engine, patch, full handler) and the two load
# runs, written as Markdown to docs/performance-latest.md with the machine,
# the commands and min/median/max over several runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${BENCH_OUT:-docs/performance-latest.md}
count=${BENCH_COUNT:-5}
runs=${LOAD_RUNS:-3}
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

{
  echo "# Performance results ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(go version | cut -d' ' -f3), load average at start $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "## Go benchmarks"
  echo
  echo "\`go test -run '^\$' -bench . -benchmem -count $count ./webhook/inject ./webhook/server\`"
  echo
  echo "| benchmark | ns/op min | median | max | B/op | allocs/op |"
  echo "|---|---|---|---|---|---|"
} > "$out"

go test -run '^$' -bench . -benchmem -count "$count" ./webhook/inject ./webhook/server | tee "$tmp" >&2
awk '/^Benchmark/ {
  name=$1; sub(/-[0-9]+$/, "", name)
  for (i=3; i<=NF; i++) { if ($(i+1)=="ns/op") ns=$i; if ($(i+1)=="B/op") b=$i; if ($(i+1)=="allocs/op") a=$i }
  vals[name]=vals[name] " " ns; bytes[name]=b; allocs[name]=a; if (!(name in seen)) { order[++n]=name; seen[name]=1 }
}
END {
  for (k=1; k<=n; k++) {
    name=order[k]; m=split(substr(vals[name],2), v, " ")
    for (i=1;i<=m;i++) for (j=i+1;j<=m;j++) if (v[j]+0 < v[i]+0) { t=v[i]; v[i]=v[j]; v[j]=t }
    printf "| %s | %d | %d | %d | %s | %s |\n", name, v[1], v[int((m+1)/2)], v[m], bytes[name], allocs[name]
  }
}' "$tmp" >> "$out"

{
  echo
  echo "## Load: sds-injector serve over HTTPS"
  echo
  echo "\`go run ./test/load -markdown -rate 5000 -duration 10s https\` (vegeta, 64 keep-alive HTTP/1.1 connections, load generator on the same machine), $runs runs"
  echo
  echo "| run | offered | throughput | p50 | p99 | max | errors | server RSS peak | ready after start |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >> "$out"
for i in $(seq "$runs"); do go run ./test/load -markdown -rate 5000 -duration 10s https >> "$out"; done

{
  echo
  echo "## Load: pods created through kube-apiserver"
  echo
  echo "\`go run ./test/load -markdown -pod-rate 50 -duration 20s apiserver\` (real sds-injector binary, namespace-mode webhook; latencies first without, then with the webhook)"
  echo
  echo "| run | rate | apiserver webhook duration | create p50 without → with | create p99 without → with | errors | server RSS peak |"
  echo "|---|---|---|---|---|---|---|"
} >> "$out"
go run ./test/load -markdown -pod-rate 50 -duration 20s apiserver 2>/dev/null | grep '^|' >> "$out"
echo "wrote $out" >&2
