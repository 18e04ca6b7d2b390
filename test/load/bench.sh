#!/usr/bin/env bash
# make bench: this tree and a base commit (BENCH_BASE, default HEAD~1)
# measured side by side in one run, interleaved, so that the machine's
# drift hits both alike:
#   - Go benchmarks of the engine and the webhook (benchstat: median, the
#     spread, and whether a difference is significant);
#   - the server's CPU time and allocations per review over HTTPS (the real
#     binary, built as released; go run ./test/load cpu), min/median/max;
#   - the HTTPS load at 5,000 reviews/s (throughput, latency, RSS);
#   - pods created through a local kube-apiserver with and without the
#     webhook (this tree only).
# Written as Markdown to docs/performance-latest.md with the machine and
# the commands.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${BENCH_OUT:-docs/performance-latest.md}
base=${BENCH_BASE:-HEAD~1}
count=${BENCH_COUNT:-5}  # rounds of Go benchmarks and of the cpu mode
runs=${LOAD_RUNS:-3}     # rounds of the 5,000/s HTTPS load
benchtime=${BENCH_TIME:-1s}
benchstat="go run golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da"

work=$(mktemp -d)
cleanup() {
  git worktree remove --force "$work/base" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

baseRev=$(git rev-parse --short "$base")
headRev="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo "+changes")"
git worktree add --detach "$work/base" "$base" >/dev/null 2>&1

# Both trees built the same way: binaries as released, test binaries of
# the two packages whose benchmarks are compared.
for side in base head; do
  src=.
  [ "$side" = base ] && src="$work/base"
  mkdir -p "$work/$side"
  # As the release image builds it (internal/imagebuild): -tags nocheck
  # (a tree without that tag ignores it).
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -tags nocheck -ldflags '-s -w' -o "$work/$side/sds-injector" ./cmd/sds-injector)
  for pkg in inject server; do
    (cd "$src" && go test -c -o "$work/$side/$pkg.test" "./webhook/$pkg")
  done
done
go build -o "$work/load" ./test/load

{
  echo "# Performance results ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(go version | cut -d' ' -f3), load average at start $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "Compared: **base** = \`$baseRev\` (BENCH_BASE=$base), **head** = \`$headRev\`, measured in this run, interleaved."
  echo
  echo "## Go benchmarks"
  echo
  echo "$count rounds, each \`<pkg>.test -test.run '^\$' -test.bench . -test.benchmem -test.count 1\` of webhook/inject and webhook/server, base then head; compared with benchstat (median ± 95 % confidence interval; p-value; ~ = no significant difference). A benchmark only head has is listed without a base figure."
  echo
  echo '```'
} > "$out"

for side in base head; do : > "$work/$side.bench"; done
for i in $(seq "$count"); do
  for side in base head; do
    for pkg in inject server; do
      dir="webhook/$pkg"
      [ "$side" = base ] && dir="$work/base/webhook/$pkg"
      (cd "$dir" && "$work/$side/$pkg.test" -test.run '^$' -test.bench . -test.benchmem -test.benchtime "$benchtime" -test.count 1 2>/dev/null | grep -E '^(Benchmark|goos|goarch|pkg|cpu)') >> "$work/$side.bench"
    done
  done
  echo "bench: Go benchmarks round $i/$count done" >&2
done
$benchstat base="$work/base.bench" head="$work/head.bench" >> "$out" 2>/dev/null || $benchstat "$work/base.bench" "$work/head.bench" >> "$out"
echo '```' >> "$out"

{
  echo
  echo "## Server CPU per review over HTTPS"
  echo
  echo "\`go run ./test/load -markdown -bin <binary> cpu\`: the release-built binary serving TLS 1.3 / HTTP/1.1 keep-alive on loopback; reviews as kube-apiserver sent them (webhook/server/testdata/apiserver-reviews: Gloo Edge's chart pod, a plain app); closed loop, 32 connections for CPU and throughput, 4 for latency; CPU = the server process's user+system time (/proc/<pid>/stat) / reviews; allocations = go_memstats_mallocs_total / reviews (the whole server: TLS, net/http, handler). The load generator shares the machine. $count rounds, base and head alternating, then **floor**: controller-runtime's webhook server with sds-injector's TLS settings answering every review with a fixed answer of the real one's size (\`load -floor cpu\`, test/load/floor.go) — what TLS, net/http and controller-runtime cost without decoding, engine or encoding."
  echo
  echo "| binary | inject: CPU/review | skip: CPU/review | inject: allocs/review | skip: allocs/review | inject throughput (32 conns) | p50 (4 conns) | p99 (4 conns) | RSS peak |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >> "$out"
: > "$work/cpu.rows"
for i in $(seq "$count"); do
  for side in base head; do
    "$work/load" -markdown -bin "$work/$side/sds-injector" -label "$side" cpu | tee -a "$work/cpu.rows" >> "$out"
  done
  "$work/load" -markdown -floor -label floor cpu | tee -a "$work/cpu.rows" >> "$out"
  echo "bench: cpu round $i/$count done" >&2
done
{
  echo
  echo "Summary (min / median / max over the $count rounds):"
  echo
  echo "| binary | inject: CPU/review (µs) | skip: CPU/review (µs) | inject: allocs/review | skip: allocs/review | RSS peak (MiB) | anonymous memory peak (MiB) |"
  echo "|---|---|---|---|---|---|---|"
} >> "$out"
for side in base head floor; do
  awk -F'|' -v side="$side" '
    function num(s) { gsub(/[^0-9.]/, "", s); return s + 0 }
    function stats(arr, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
      return sprintf("%.1f / %.1f / %.1f", arr[1], arr[int((n + 1) / 2)], arr[n])
    }
    { gsub(/ /, "", $2) }
    $2 == side {
      n++; a[n] = num($3); b[n] = num($4); c[n] = num($5); d[n] = num($6); split($10, r, "MiB"); e[n] = num(r[1])
      f[n] = match($10, /anonymous peak [0-9.]+/) ? num(substr($10, RSTART, RLENGTH)) : 0
    }
    END { if (n) printf "| %s | %s | %s | %s | %s | %s | %s |\n", side, stats(a, n), stats(b, n), stats(c, n), stats(d, n), stats(e, n), stats(f, n) }
  ' "$work/cpu.rows" >> "$out"
done

{
  echo
  echo "## Load: sds-injector serve over HTTPS at 5,000 reviews/s"
  echo
  echo "\`go run ./test/load -markdown -bin <binary> -rate 5000 -duration 10s https\` (vegeta, 64 keep-alive HTTP/1.1 connections, the docs/examples Gloo pod, load generator on the same machine), $runs rounds, base and head alternating"
  echo
  echo "| binary | run | offered | throughput | p50 | p99 | max | errors | server RSS peak | ready after start |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} >> "$out"
for i in $(seq "$runs"); do
  for side in base head; do
    row=$("$work/load" -markdown -bin "$work/$side/sds-injector" -rate 5000 -duration 10s https)
    echo "| $side $row" >> "$out"
  done
done

{
  echo
  echo "## Load: pods created through kube-apiserver (head)"
  echo
  echo "\`go run ./test/load -markdown -bin <head> -pod-rate 50 -duration 20s apiserver\` (namespace-mode webhook; latencies first without, then with the webhook)"
  echo
  echo "| run | rate | apiserver webhook duration | create p50 without → with | create p99 without → with | errors | server RSS peak |"
  echo "|---|---|---|---|---|---|---|"
} >> "$out"
"$work/load" -markdown -bin "$work/head/sds-injector" -pod-rate 50 -duration 20s apiserver 2>/dev/null | grep '^|' >> "$out"
echo "wrote $out" >&2
