package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// runCPU measures what one review costs the server: its CPU time (user +
// system, all threads, from /proc/<pid>/stat) and its heap allocations
// (go_memstats_mallocs_total from its own metrics endpoint) divided by the
// number of reviews, over HTTPS with TLS 1.3 and HTTP/1.1 keep-alive as the
// API server calls a webhook. The load is a closed loop (each client sends
// its next review when the answer arrives), so the server is never idle
// and never queues more than -clients requests. Phases:
//
//   - inject: the pod of Gloo Edge's chart Deployment, -clients connections;
//   - skip: the plain application pod (not a gateway), -clients connections;
//
// Both reviews are as a real kube-apiserver sent them (managedFields, the
// token volume, defaults; see runCapture), from testdata.
//   - latency: the Gloo pod again with -latency-clients connections, for
//     the latency percentiles of a server that is not saturated.
//
// The load generator runs on the same machine: its CPU is not counted in
// the server's, but it competes for the cores, which shows in throughput
// and latency, not in CPU per review.
func runCPU() error {
	l, err := startLocal("sds-injector-cpu-", true)
	if err != nil {
		return err
	}
	defer l.stop()
	srv, pool, port, metricsPort := l.srv, l.pool, l.port, l.metricsPort
	_, idle := srv.rss()

	injectBody, err := capturedReview(capturedGloo)
	if err != nil {
		return err
	}
	skipBody, err := capturedReview(capturedPlain)
	if err != nil {
		return err
	}
	anonPeak := srv.watchAnon()
	url := fmt.Sprintf("https://127.0.0.1:%d/inject", port)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	isPatch := func(b []byte) bool { return bytes.Contains(b, []byte(`"patchType":"JSONPatch"`)) }
	isSkip := func(b []byte) bool {
		return bytes.Contains(b, []byte(`"allowed":true`)) && !bytes.Contains(b, []byte(`"patch"`))
	}

	// Warm up: connections, caches, the heap at its working size.
	if _, err := closedLoop(url, injectBody, pool, *clients, 2000, isPatch); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	if _, err := closedLoop(url, skipBody, pool, *clients, 2000, isSkip); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}

	inject, err := measurePhase(srv, metricsURL, func() (phase, error) {
		return closedLoop(url, injectBody, pool, *clients, *reviews, isPatch)
	})
	if err != nil {
		return fmt.Errorf("inject phase: %w", err)
	}
	skip, err := measurePhase(srv, metricsURL, func() (phase, error) {
		return closedLoop(url, skipBody, pool, *clients, *reviews, isSkip)
	})
	if err != nil {
		return fmt.Errorf("skip phase: %w", err)
	}
	lat, err := closedLoop(url, injectBody, pool, *latConns, *reviews/4, isPatch)
	if err != nil {
		return fmt.Errorf("latency phase: %w", err)
	}
	_, rssPeak := srv.rss() // VmHWM: the peak since the server started
	anon := anonPeak()
	mem := map[string]float64{}
	for _, name := range []string{"go_memstats_heap_inuse_bytes", "go_memstats_heap_sys_bytes", "go_memstats_heap_released_bytes", "go_memstats_stack_inuse_bytes", "go_memstats_next_gc_bytes"} {
		if mem[name], err = scrapeCounter(metricsURL, name); err != nil {
			return err
		}
	}

	name := *label
	if name == "" {
		name = l.bin
	}
	if *markdown {
		fmt.Printf("| %s | %.1f µs | %.1f µs | %.0f | %.0f | %.0f/s | %s | %s | %.1f MiB (idle %.1f; anonymous peak %.1f) |\n",
			name, inject.cpuPerReview, skip.cpuPerReview, inject.allocsPerReview, skip.allocsPerReview, inject.throughput,
			lat.p(0.5), lat.p(0.99), rssPeak, idle, anon)
		return nil
	}
	fmt.Printf("server CPU per review over HTTPS (TLS 1.3, HTTP/1.1 keep-alive, closed loop), %s\n", name)
	fmt.Printf("  inject (Gloo chart pod), %d clients: %.1f µs CPU and %.0f allocations per review, %.0f reviews/s, p50 %s p99 %s\n",
		*clients, inject.cpuPerReview, inject.allocsPerReview, inject.throughput, inject.p(0.5), inject.p(0.99))
	fmt.Printf("  skip (plain app), %d clients: %.1f µs CPU and %.0f allocations per review, %.0f reviews/s\n",
		*clients, skip.cpuPerReview, skip.allocsPerReview, skip.throughput)
	fmt.Printf("  latency, %d clients: p50 %s p99 %s max %s (%.0f reviews/s)\n", *latConns, lat.p(0.5), lat.p(0.99), lat.p(1), lat.throughput)
	fmt.Printf("  server RSS peak %.1f MiB (idle %.1f MiB; anonymous memory peak %.1f MiB, the rest is the binary's pages); after the run: heap in use %.1f MiB, heap from the OS %.1f MiB (%.1f released), stacks %.1f MiB, next GC at %.1f MiB\n",
		rssPeak, idle, anon, mem["go_memstats_heap_inuse_bytes"]/(1<<20), mem["go_memstats_heap_sys_bytes"]/(1<<20), mem["go_memstats_heap_released_bytes"]/(1<<20),
		mem["go_memstats_stack_inuse_bytes"]/(1<<20), mem["go_memstats_next_gc_bytes"]/(1<<20))
	return nil
}

// phase is one closed-loop run's client-side view, completed with the
// server's CPU and allocations by measurePhase.
type phase struct {
	n                             int
	elapsed                       time.Duration
	latencies                     []time.Duration
	throughput                    float64
	cpuPerReview, allocsPerReview float64
}

func (p phase) p(q float64) time.Duration { return pct(p.latencies, q) }

func measurePhase(srv *server, metricsURL string, run func() (phase, error)) (phase, error) {
	cpu0, err := srv.cpuTime()
	if err != nil {
		return phase{}, err
	}
	m0, err := scrapeCounter(metricsURL, "go_memstats_mallocs_total")
	if err != nil {
		return phase{}, err
	}
	ph, err := run()
	if err != nil {
		return ph, err
	}
	cpu1, err := srv.cpuTime()
	if err != nil {
		return ph, err
	}
	m1, err := scrapeCounter(metricsURL, "go_memstats_mallocs_total")
	if err != nil {
		return ph, err
	}
	ph.cpuPerReview = float64((cpu1 - cpu0).Microseconds()) / float64(ph.n)
	ph.allocsPerReview = (m1 - m0) / float64(ph.n)
	return ph, nil
}

// closedLoop sends n copies of body over conns keep-alive connections,
// each connection sending its next review when the previous answer is
// read, and checks every answer with ok.
func closedLoop(url string, body []byte, pool *x509.CertPool, conns, n int, ok func([]byte) bool) (phase, error) {
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13},
		MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns,
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 like the API server
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 30 * time.Second, Transport: tr}
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	lat := make([]time.Duration, n)
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t := time.Now()
				err := post(c, url, body, ok)
				lat[i] = time.Since(t)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("review %d: %w", i, err)
					}
					mu.Unlock()
					next.Store(int64(n))
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return phase{}, firstErr
	}
	return phase{n: n, elapsed: elapsed, latencies: lat, throughput: float64(n) / elapsed.Seconds()}, nil
}

func post(c *http.Client, url string, body []byte, ok func([]byte) bool) error {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !ok(out) {
		return fmt.Errorf("unexpected answer (HTTP %d): %.300s", resp.StatusCode, out)
	}
	return nil
}

// cpuTime is the server's user + system CPU time so far, all threads.
func (s *server) cpuTime() (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields count from the ')'.
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc/pid/stat: %q", raw)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unexpected /proc/pid/stat: %q", raw)
	}
	// USER_HZ is 100 on every Linux ABI Go supports (sysconf(_SC_CLK_TCK)).
	return time.Duration(utime+stime) * (time.Second / 100), nil
}

func scrapeCounter(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") {
			return strconv.ParseFloat(strings.TrimSpace(line[len(name):]), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no %s", url, name)
}

// capturedReview reads a review recorded by runCapture, compacted as the
// apiserver sends it.
func capturedReview(file string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(repoRoot(), capturedDir, file))
	if err != nil {
		return nil, fmt.Errorf("%w (re-record with: go run ./test/load capture)", err)
	}
	var b bytes.Buffer
	if err := json.Compact(&b, data); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return b.Bytes(), nil
}

// watchAnon samples the server's anonymous resident memory (RssAnon: heap,
// stacks, runtime; not the executable's file pages, which the kernel maps
// around every page the process touches and can drop under pressure) every
// 50 ms; the returned function stops sampling and gives the peak in MiB.
func (s *server) watchAnon() func() float64 {
	done, out := make(chan struct{}), make(chan float64, 1)
	read := func() float64 {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
		if err != nil {
			return 0
		}
		for _, line := range strings.Split(string(raw), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "RssAnon:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb / 1024
			}
		}
		return 0
	}
	go func() {
		peak := read()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				out <- max(peak, read())
				return
			case <-t.C:
				peak = max(peak, read())
			}
		}
	}()
	return func() float64 { close(done); return <-out }
}
