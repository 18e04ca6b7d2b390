// Command load measures sds-injector under load, two ways:
//
//	go run ./test/load https     # the real `sds-injector serve` over HTTPS with keep-alive (vegeta)
//	go run ./test/load apiserver # pods created through a local kube-apiserver + etcd
//	go run ./test/load cpu       # server CPU time per review over HTTPS (closed loop), inject and skip
//	go run ./test/load capture   # re-record the reviews cpu sends, from a real kube-apiserver
//
// It prints throughput, latency percentiles, errors and the server's
// resident memory, and with -markdown a table for docs/performance.md.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/load/measure"
	"github.com/sds-injector/sds-injector/webhook/inject"

	"github.com/sds-injector/sds-injector/test/harness"
)

var (
	rate     = flag.Int("rate", 5000, "https: requests per second (0 = as fast as possible)")
	duration = flag.Duration("duration", 10*time.Second, "length of each run")
	podRate  = flag.Int("pod-rate", 50, "apiserver: pod creations per second")
	markdown = flag.Bool("markdown", false, "print results as a Markdown table row")
	workers  = flag.Uint64("workers", 64, "https: vegeta workers (connections)")
	binPath  = flag.String("bin", "", "a prebuilt sds-injector binary to measure (default: build ./cmd/sds-injector)")
	reviews  = flag.Int("reviews", 20000, "cpu: reviews per measured phase")
	clients  = flag.Int("clients", 32, "cpu: concurrent keep-alive connections of the throughput phase")
	latConns = flag.Int("latency-clients", 4, "cpu: concurrent connections of the latency phase")
	label    = flag.String("label", "", "cpu: a name for the binary in the Markdown row")
	floor    = flag.Bool("floor", false, "cpu: measure the floor instead (controller-runtime's webhook server answering a fixed review; see floor.go)")
)

func main() {
	flag.Parse()
	mode := flag.Arg(0)
	var err error
	switch mode {
	case "https":
		err = runHTTPS()
	case "apiserver":
		err = runAPIServer()
	case "cpu":
		err = runCPU()
	case "capture":
		err = runCapture()
	case "serve": // the floor server, started by -floor cpu
		err = runFloorServer(flag.Args()[1:])
	default:
		err = fmt.Errorf("usage: load [flags] https|apiserver|cpu|capture")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

func repoRoot() string {
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

// buildBinary is this tool itself with -floor, -bin if set, else
// sds-injector built from this tree once per content (test/harness) as
// the release image builds it (static, stripped, -tags nocheck).
func buildBinary() (string, error) {
	if *floor {
		return selfBinary()
	}
	if *binPath != "" {
		return *binPath, nil
	}
	return harness.Build(context.Background(), harness.Injector, harness.BuildOptions{
		Env: harness.Static.Env, Flags: append([]string{"-tags=nocheck"}, harness.Static.Flags...)})
}

// server is a running `sds-injector serve` process.
type server struct {
	cmd        *exec.Cmd
	readyAfter time.Duration
	// releasePort frees the health port's reservation.
	releasePort func()
}

func startServer(bin, host string, port int, certDir string) (*server, error) {
	return startServerWith(bin, host, port, certDir, "0")
}

// startServerWith starts the server with its metrics on metricsAddr ("0":
// off).
func startServerWith(bin, host string, port int, certDir, metricsAddr string) (*server, error) {
	health, release, err := harness.ReservePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "--host", host, "--port", strconv.Itoa(port), "--cert-dir", certDir,
		"--metrics-bind-address", metricsAddr, "--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", health), "--zap-log-level", "error")
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		release()
		return nil, err
	}
	for time.Since(start) < 30*time.Second {
		if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", health)); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return &server{cmd: cmd, readyAfter: time.Since(start), releasePort: release}, nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	release()
	return nil, fmt.Errorf("server not ready after 30s")
}

func (s *server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	_ = s.cmd.Wait()
	s.releasePort()
}

// rss reads the process's current and peak resident set size in MiB.
func (s *server) rss() (cur, peak float64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 {
			kb, _ := strconv.ParseFloat(fields[1], 64)
			switch fields[0] {
			case "VmRSS:":
				cur = kb / 1024
			case "VmHWM:":
				peak = kb / 1024
			}
		}
	}
	return cur, peak
}

// local is the binary under test serving on loopback with a self-signed
// certificate (pool trusts it) from a work directory of its own.
type local struct {
	bin               string
	srv               *server
	pool              *x509.CertPool
	port, metricsPort int // metricsPort 0: metrics off
	cleanup           []func()
}

// startLocal builds (or finds) the binary, writes the certificate into a
// new work directory named prefix*, reserves the ports and starts the
// server; stop undoes it all.
func startLocal(prefix string, metrics bool) (_ *local, retErr error) {
	l := &local{}
	defer func() {
		if retErr != nil {
			l.stop()
		}
	}()
	work, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	l.cleanup = append(l.cleanup, func() { _ = os.RemoveAll(work) })
	if l.bin, err = buildBinary(); err != nil {
		return nil, err
	}
	if l.pool, err = selfSigned(work); err != nil {
		return nil, err
	}
	ports, release, err := harness.ReservePorts("127.0.0.1", 2)
	if err != nil {
		return nil, err
	}
	l.cleanup = append(l.cleanup, release)
	l.port = ports[0]
	metricsAddr := "0"
	if metrics {
		l.metricsPort = ports[1]
		metricsAddr = fmt.Sprintf("127.0.0.1:%d", l.metricsPort)
	}
	if l.srv, err = startServerWith(l.bin, "127.0.0.1", l.port, work, metricsAddr); err != nil {
		return nil, err
	}
	l.cleanup = append(l.cleanup, l.srv.stop)
	return l, nil
}

func (l *local) stop() {
	for i := len(l.cleanup) - 1; i >= 0; i-- {
		l.cleanup[i]()
	}
}

func selfSigned(dir string) (*x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "load"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return nil, err
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return pool, nil
}

func examplePod(name string) (*corev1.Pod, error) { return measure.ExamplePod(repoRoot(), name) }

func reviewBody(pod *corev1.Pod, uid string) ([]byte, error) {
	raw, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	ar := admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: types.UID("00000000-0000-4000-8000-" + uid), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Namespace: pod.Namespace, Operation: admissionv1.Create}}
	ar.Request.Object.Raw = raw
	return json.Marshal(&ar)
}

func runHTTPS() error {
	l, err := startLocal("sds-injector-load-", false)
	if err != nil {
		return err
	}
	defer l.stop()
	srv, pool, port := l.srv, l.pool, l.port
	_, idlePeak := srv.rss()

	pod, err := examplePod("gloo-gateway-proxy.yaml")
	if err != nil {
		return err
	}
	body, err := reviewBody(pod, "000000000001")
	if err != nil {
		return err
	}
	target := vegeta.Target{Method: http.MethodPost, URL: fmt.Sprintf("https://127.0.0.1:%d/inject", port), Body: body,
		Header: http.Header{"Content-Type": []string{"application/json"}}}
	// One client for the warm-up and the measured run, so the measured run
	// uses warm keep-alive connections, as the API server does.
	httpClient := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: int(*workers), MaxConnsPerHost: int(*workers),
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 like the API server
	}}
	newAttacker := func() *vegeta.Attacker {
		return vegeta.NewAttacker(vegeta.Client(httpClient), vegeta.Workers(*workers), vegeta.MaxWorkers(*workers))
	}
	pacer := vegeta.Pacer(vegeta.ConstantPacer{Freq: *rate, Per: time.Second})
	if *rate == 0 {
		pacer = vegeta.ConstantPacer{}
	}
	// Warm up connections and caches, then measure.
	for range newAttacker().Attack(vegeta.NewStaticTargeter(target), vegeta.ConstantPacer{Freq: 500, Per: time.Second}, time.Second, "warmup") {
	}
	var m vegeta.Metrics
	bad := 0
	var peak float64
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(200 * time.Millisecond):
				_, p := srv.rss()
				mu.Lock()
				peak = math.Max(peak, p)
				mu.Unlock()
			}
		}
	}()
	for res := range newAttacker().Attack(vegeta.NewStaticTargeter(target), pacer, *duration, "load") {
		m.Add(res)
		if res.Code == http.StatusOK && !strings.Contains(string(res.Body), `"patchType":"JSONPatch"`) {
			bad++
		}
	}
	close(done)
	m.Close()
	_, finalPeak := srv.rss()
	peak = math.Max(peak, finalPeak)
	errs := len(m.Errors) + bad
	if *markdown {
		fmt.Printf("| HTTPS | %d/s | %.0f/s | %s | %s | %s | %d | %.1f MiB (idle %.1f) | %s |\n",
			*rate, m.Throughput, m.Latencies.P50.Round(time.Microsecond), m.Latencies.P99.Round(time.Microsecond), m.Latencies.Max.Round(time.Microsecond),
			errs, peak, idlePeak, srv.readyAfter.Round(time.Millisecond))
		return nil
	}
	fmt.Printf("sds-injector serve over HTTPS (keep-alive, HTTP/1.1, %d connections), Gloo gateway review, %s at %d/s\n", *workers, *duration, *rate)
	fmt.Printf("  requests %d, throughput %.0f/s, success %.4f, wrong answers %d\n", m.Requests, m.Throughput, m.Success, bad)
	fmt.Printf("  latency p50 %s p90 %s p99 %s max %s\n", m.Latencies.P50, m.Latencies.P90, m.Latencies.P99, m.Latencies.Max)
	fmt.Printf("  server RSS peak %.1f MiB (idle %.1f MiB); ready %s after start\n", peak, idlePeak, srv.readyAfter)
	if errs > 0 {
		return fmt.Errorf("%d errors: %v", errs, m.Errors)
	}
	return nil
}

func runAPIServer() error {
	ctx := context.Background()
	bin, err := buildBinary()
	if err != nil {
		return err
	}
	cp, err := controlplane.Start(ctx, controlplane.Options{WebhookInstallOptions: envtest.WebhookInstallOptions{}})
	if err != nil {
		return err
	}
	defer func() { _ = cp.Stop() }()
	w := cp.WebhookInstallOptions
	srv, err := startServer(bin, w.LocalServingHost, w.LocalServingPort, w.LocalServingCertDir)
	if err != nil {
		return err
	}
	defer srv.stop()
	cfg := *cp.Config
	cfg.QPS, cfg.Burst = 1000, 1000
	c, err := client.New(&cfg, client.Options{})
	if err != nil {
		return err
	}
	ns := "load"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{inject.NamespaceLabel: "enabled"}}}); err != nil {
		return err
	}
	if err := c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "gateway-proxy", Namespace: ns}}); err != nil {
		return err
	}
	pod, err := examplePod("gloo-gateway-proxy.yaml")
	if err != nil {
		return err
	}
	create := func(prefix string) ([]time.Duration, int, error) {
		run := measure.Paced(ctx, *podRate, *duration, func(ctx context.Context, i int) error {
			p := pod.DeepCopy()
			p.Namespace, p.Name = ns, fmt.Sprintf("%s-%d", prefix, i)
			return c.Create(ctx, p)
		})
		return run.Latencies, len(run.Errors), nil
	}
	// Without the webhook first, then with it, at the same rate.
	base, baseErrs, _ := create("plain")
	mwc, err := cp.InstallMutatingWebhookFile(ctx, filepath.Join(repoRoot(), "deploy", "webhook", "namespace-mode.yaml"))
	if err != nil {
		return err
	}
	// The apiserver loads webhook configurations asynchronously.
	if err := cp.WaitShippedWebhooks(ctx, mwc, true, nil); err != nil {
		return err
	}
	before, err := scrapeHistogram(cp, mwc.Webhooks[0].Name)
	if err != nil {
		return err
	}
	with, withErrs, _ := create("injected")
	after, err := scrapeHistogram(cp, mwc.Webhooks[0].Name)
	if err != nil {
		return err
	}
	_, peak := srv.rss()
	h := after.Minus(before)
	if *markdown {
		fmt.Printf("| apiserver | %d pods/s | webhook p99 %s (%.1f%% ≤ 5 ms, %d calls) | create p50 %s → %s | create p99 %s → %s (×%.2f) | %d | %.1f MiB |\n",
			*podRate, h.QuantileUpper(0.99), 100*h.FractionBelow(0.005), int(h.Count), pct(base, 0.5), pct(with, 0.5), pct(base, 0.99), pct(with, 0.99),
			float64(pct(with, 0.99))/float64(pct(base, 0.99)), baseErrs+withErrs, peak)
		return nil
	}
	fmt.Printf("pods created through kube-apiserver at %d/s for %s each (namespace-mode webhook, real sds-injector binary)\n", *podRate, *duration)
	fmt.Printf("  apiserver_admission_webhook_admission_duration_seconds{name=%q}: %d calls, %.1f%% in the ≤5 ms bucket, p99 ≤ %s\n",
		mwc.Webhooks[0].Name, int(h.Count), 100*h.FractionBelow(0.005), h.QuantileUpper(0.99))
	fmt.Printf("  pod creation latency without webhook: p50 %s p99 %s (%d ok, %d errors)\n", pct(base, 0.5), pct(base, 0.99), len(base), baseErrs)
	fmt.Printf("  pod creation latency with webhook:    p50 %s p99 %s (%d ok, %d errors); p99 ratio %.2f\n",
		pct(with, 0.5), pct(with, 0.99), len(with), withErrs, float64(pct(with, 0.99))/float64(pct(base, 0.99)))
	fmt.Printf("  server RSS peak %.1f MiB\n", peak)
	return nil
}

func pct(d []time.Duration, q float64) time.Duration { return measure.Percentile(d, q) }

// scrapeHistogram is the apiserver's admission latency histogram of the
// webhook named webhook (mutating calls of every operation and outcome).
func scrapeHistogram(cp *controlplane.ControlPlane, webhook string) (measure.Histogram, error) {
	families, err := cp.APIServerMetrics(context.Background())
	if err != nil {
		return measure.Histogram{}, err
	}
	return measure.HistogramOf(families, "apiserver_admission_webhook_admission_duration_seconds",
		map[string]string{"name": webhook, "type": "admit"}), nil
}
