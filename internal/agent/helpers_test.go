package agent

import (
	"context"
	"crypto/x509"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sds-injector/sds-injector/internal/agent/ca"
	"github.com/sds-injector/sds-injector/internal/agent/fakeca"
	"github.com/sds-injector/sds-injector/internal/agent/sds"
	"github.com/sds-injector/sds-injector/test/harness"
)

const (
	testNS      = "gw"
	testSA      = "gateway"
	testCluster = "Kubernetes"
	testID      = "spiffe://cluster.local/ns/gw/sa/gateway"
	// wait bounds every wait in these tests; generous because the machine
	// is shared with other test runs.
	wait = 60 * time.Second
)

// testEnv is a fake CA, the agent's input files, and a running agent.
type testEnv struct {
	t     *testing.T
	CA    *fakeca.CA
	Dir   string
	Cfg   Config
	Agent *Agent

	cancel context.CancelFunc
	done   chan error
	logs   *syncLog
}

// newEnv prepares a CA and files; mutate adjusts the configuration before
// the agent starts (call start).
func newEnv(t *testing.T) *testEnv {
	t.Helper()
	c, err := fakeca.New("cluster.local", testCluster)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	// A short directory: Unix socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "sdsa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	e := &testEnv{t: t, CA: c, Dir: dir}
	e.WriteToken(fakeca.Token(testNS, testSA, time.Now().Add(time.Hour)))
	e.WriteRoot(c.RootPEM())

	env := map[string]string{
		"CA_ADDR":               c.Addr(),
		"POD_NAMESPACE":         testNS,
		"SERVICE_ACCOUNT":       testSA,
		"POD_NAME":              "gw-0",
		"ISTIO_META_CLUSTER_ID": testCluster,
		"TOKEN_PATH":            filepath.Join(dir, "token"),
		"ROOT_CERT_PATH":        filepath.Join(dir, "root-cert.pem"),
		"SDS_SOCKET_PATH":       filepath.Join(dir, "uds", "socket"),
		"CA_BACKOFF_INITIAL":    "50ms",
		"CA_BACKOFF_MAX":        "200ms",
		"WATCH_INTERVAL":        "100ms",
		"LOG_LEVEL":             "debug",
	}
	cfg, err := Load(flag.NewFlagSet("test", flag.ContinueOnError), nil, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	e.Cfg = cfg
	return e
}

// WriteToken replaces the token file atomically, as the kubelet does.
func (e *testEnv) WriteToken(tok string) { e.writeAtomic("token", []byte(tok)) }

// WriteRoot replaces the root certificate file atomically.
func (e *testEnv) WriteRoot(pem []byte) { e.writeAtomic("root-cert.pem", pem) }

func (e *testEnv) writeAtomic(name string, data []byte) {
	e.t.Helper()
	tmp := filepath.Join(e.Dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(e.Dir, name)); err != nil {
		e.t.Fatal(err)
	}
}

// start runs the agent until the test ends.
func (e *testEnv) start() *Agent {
	e.t.Helper()
	if err := e.Cfg.Validate(); err != nil {
		e.t.Fatal(err)
	}
	e.logs = &syncLog{t: e.t}
	a := New(e.Cfg, slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx, cancel := context.WithCancel(context.Background())
	e.Agent, e.cancel, e.done = a, cancel, make(chan error, 1)
	go func() { e.done <- a.Run(ctx) }()
	e.t.Cleanup(func() { e.stop() })
	select {
	case <-a.Started():
	case err := <-e.done:
		e.t.Fatalf("agent exited: %v", err)
	case <-time.After(wait):
		e.t.Fatal("agent did not start")
	}
	return a
}

// stop cancels the agent and waits for it (idempotent).
func (e *testEnv) stop() error {
	if e.cancel == nil {
		return nil
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.done:
		e.logs.close()
		return err
	case <-time.After(wait):
		e.t.Error("agent did not stop")
		return nil
	}
}

// eventually is harness.Eventually for a condition without errors.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	harness.Eventually(t, wait, what, func(context.Context) (bool, error) { return cond(), nil })
}

// syncLog sends the agent's log lines to the test log until closed.
type syncLog struct {
	t      *testing.T
	mu     sync.Mutex
	closed bool
	lines  []string
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimSpace(string(p)))
	if !l.closed {
		l.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func (l *syncLog) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}

func (l *syncLog) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

var _ io.Writer = (*syncLog)(nil)

// sdsClient is an Envoy-like SDS client (the project's one, sds.Stream)
// that fails the test on errors.
type sdsClient struct {
	t *testing.T
	s *sds.Stream
}

// dialSDS connects to target ("unix:///path" or "host:port") and subscribes to names.
func dialSDS(t *testing.T, target string, names ...string) *sdsClient {
	t.Helper()
	s, err := sds.Subscribe(context.Background(), target, &corev3.Node{Id: "router~10.0.0.1~gw-0.gw~gw.svc.cluster.local"}, names...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return &sdsClient{t: t, s: s}
}

func unixTarget(path string) string { return "unix://" + path }

// next returns the next response's secrets by name, ACKing it.
func (c *sdsClient) next() (*sds.Response, map[string]*tlsv3.Secret) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	r, err := c.s.Next(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	return r, r.Secrets
}

// until reads responses until all names have been seen, merging them.
func (c *sdsClient) until(names ...string) map[string]*tlsv3.Secret {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	all, err := c.s.Until(ctx, names...)
	if err != nil {
		c.t.Fatal(err)
	}
	return all
}

// quiet asserts that no response arrives for d.
func (c *sdsClient) quiet(d time.Duration) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if r, err := c.s.Next(ctx); err == nil {
		c.t.Fatalf("unexpected response version %s", r.Version)
	} else if ctx.Err() == nil {
		c.t.Fatalf("stream failed while waiting for quiet: %v", err)
	}
}

// checkCert checks a "default"-type secret: valid key pair, the workload
// identity, and a chain to one of roots. It returns the leaf.
func checkCert(t *testing.T, sec *tlsv3.Secret, roots []byte) *x509.Certificate {
	t.Helper()
	leaf, err := sds.CheckCertificate(sec, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != testID {
		t.Fatalf("identity %v, want %s", leaf.URIs, testID)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots) {
		t.Fatal("no roots")
	}
	chain, err := ca.ParsePEMCerts(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("chain does not verify: %v", err)
	}
	return leaf
}

func rootsOf(sec *tlsv3.Secret) []byte {
	return sec.GetValidationContext().GetTrustedCa().GetInlineBytes()
}

func (c *sdsClient) close() { c.s.Close() }
