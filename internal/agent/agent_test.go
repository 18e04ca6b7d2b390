package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sds-injector/sds-injector/internal/agent/ca"
	"github.com/sds-injector/sds-injector/internal/agent/fakeca"
	"github.com/sds-injector/sds-injector/internal/agent/sds"
)

func TestInitialFetch(t *testing.T) {
	e := newEnv(t)
	a := e.start()
	// Envoy may connect before the certificate exists: the stream waits.
	c := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default, sds.RootCA)
	got := c.until(sds.Default, sds.RootCA)

	if !bytes.Equal(rootsOf(got[sds.RootCA]), e.CA.RootPEM()) {
		t.Errorf("ROOTCA is not the CA's root")
	}
	leaf := checkCert(t, got[sds.Default], rootsOf(got[sds.RootCA]))
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("default key is %T, want ECDSA P-256", leaf.PublicKey)
	}
	// Istio serves the whole chain, root included.
	if chain, _ := ca.ParsePEMCerts(got[sds.Default].GetTlsCertificate().GetCertificateChain().GetInlineBytes()); len(chain) != 2 {
		t.Errorf("chain has %d certificates, want leaf and root", len(chain))
	}
	if !a.Ready() {
		t.Error("not ready with a certificate")
	}

	reqs := e.CA.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d CA calls, want 1", len(reqs))
	}
	r := reqs[0]
	if r.ClusterID != testCluster || r.TTL != 24*time.Hour || len(r.CSRURIs) != 1 || r.CSRURIs[0] != testID {
		t.Errorf("CA request %+v: want ClusterID %s, TTL 24h, CSR for %s", r, testCluster, testID)
	}
	// The ACK is silent.
	c.quiet(300 * time.Millisecond)

	fi, err := os.Stat(e.Cfg.SocketPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Errorf("socket mode %v, want a socket with 0666 in a plain directory", fi.Mode())
	}
	// Binds no TCP port by default.
	if a.TCPAddr() != nil || a.MetricsAddr() != nil {
		t.Errorf("TCP listeners without opt-in: sds %v metrics %v", a.TCPAddr(), a.MetricsAddr())
	}
}

func TestRSAKey(t *testing.T) {
	e := newEnv(t)
	e.Cfg.KeyAlgorithm = ca.RSA2048
	e.start()
	got := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default, sds.RootCA).until(sds.Default, sds.RootCA)
	leaf := checkCert(t, got[sds.Default], rootsOf(got[sds.RootCA]))
	if k, ok := leaf.PublicKey.(*rsa.PublicKey); !ok || k.N.BitLen() != 2048 {
		t.Errorf("key %T, want RSA 2048", leaf.PublicKey)
	}
}

func TestRotationPushesToEveryStream(t *testing.T) {
	e := newEnv(t)
	e.Cfg.CertTTL = 3 * time.Second
	e.start()
	c1 := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default, sds.RootCA)
	c2 := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default)
	first1 := checkCert(t, c1.until(sds.Default, sds.RootCA)[sds.Default], e.CA.RootPEM())
	first2 := checkCert(t, c2.until(sds.Default)[sds.Default], e.CA.RootPEM())
	if first1.SerialNumber.Cmp(first2.SerialNumber) != 0 {
		// c2 may have connected after a renewal; it still gets the current one.
		t.Logf("streams started on different certificates")
	}
	for _, c := range []*sdsClient{c1, c2} {
		var leafSerial string
		for {
			_, got := c.next()
			sec := got[sds.Default]
			if sec == nil {
				continue
			}
			leaf := checkCert(t, sec, e.CA.RootPEM())
			if leaf.SerialNumber.Cmp(first1.SerialNumber) != 0 && leaf.SerialNumber.Cmp(first2.SerialNumber) != 0 {
				leafSerial = leaf.SerialNumber.String()
				break
			}
		}
		t.Logf("rotated to serial %s", leafSerial)
	}
	if n := e.CA.Issued(); n < 2 {
		t.Errorf("CA issued %d certificates, want a renewal", n)
	}
	// Renewal happens at half the lifetime, counted from receipt (not from
	// the backdated NotBefore, which would renew in a loop).
	if n := e.CA.Issued(); n > 20 {
		t.Errorf("CA issued %d certificates: renewing far too often", n)
	}
}

func TestCAOutageBackoffAndRecovery(t *testing.T) {
	e := newEnv(t)
	e.CA.FailWith(status.Error(codes.Unavailable, "istiod is down"))
	a := e.start()
	c := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default)
	eventually(t, "3 failed CA calls counted", func() bool {
		return metricValue(t, a, "sds_agent_ca_errors_total", "reason", "Unavailable") >= 3
	})
	if a.Ready() {
		t.Fatal("ready without a certificate")
	}
	e.CA.FailWith(nil)
	checkCert(t, c.until(sds.Default)[sds.Default], e.CA.RootPEM())
	eventually(t, "ready", a.Ready)
	if v := metricValue(t, a, "sds_agent_certificate_renewals_total", "", ""); v != 1 {
		t.Errorf("renewals %v, want 1", v)
	}
}

func TestBackoffBounds(t *testing.T) {
	a := New(Config{BackoffInitial: time.Second, BackoffMax: 30 * time.Second}, nil)
	for n := 1; n <= 12; n++ {
		want := time.Second << (n - 1)
		want = min(want, 30*time.Second)
		for range 50 {
			if d := a.backoff(n); d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %s, want in [%s, %s]", n, d, want/2, want)
			}
		}
	}
}

// While renewals fail the current certificate is served; once it expires it
// is withdrawn (never served expired); the next success is pushed.
func TestNeverServesExpired(t *testing.T) {
	e := newEnv(t)
	e.Cfg.CertTTL = 2 * time.Second
	a := e.start()
	c := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default)
	first := checkCert(t, c.until(sds.Default)[sds.Default], e.CA.RootPEM())
	e.CA.FailWith(status.Error(codes.Unavailable, "istiod is down"))

	eventually(t, "the certificate to expire and be withdrawn", func() bool { return !a.Ready() })
	if time.Now().Before(first.NotAfter) {
		// Ready() may only turn false at expiry, unless a renewal slipped
		// in before the failure started.
		if cert, ok := a.store.Certificate(); ok {
			t.Fatalf("not ready but holding a certificate valid until %s", cert.NotAfter)
		}
	}
	// A new client gets nothing while no valid certificate exists.
	conn, err := grpc.NewClient(unixTarget(e.Cfg.SocketPath), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(context.Background(),
		&discoveryv3.DiscoveryRequest{TypeUrl: sds.TypeURL, ResourceNames: []string{sds.Default}})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("FetchSecrets with an expired certificate: %v, want Unavailable", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = sds.Fetch(ctx, unixTarget(e.Cfg.SocketPath), sds.ProbeNodeID, sds.Default)
	cancel()
	if err == nil {
		t.Fatal("a stream got a certificate while none is valid")
	}

	e.CA.FailWith(nil)
	for {
		_, got := c.next()
		if sec := got[sds.Default]; sec != nil {
			leaf := checkCert(t, sec, e.CA.RootPEM())
			if leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
				break
			}
		}
	}
	eventually(t, "ready again", a.Ready)
}

func TestExpiredTokenRecovers(t *testing.T) {
	e := newEnv(t)
	e.WriteToken(fakeca.Token(testNS, testSA, time.Now().Add(-time.Minute)))
	a := e.start()
	eventually(t, "rejected CA calls", func() bool {
		return metricValue(t, a, "sds_agent_ca_errors_total", "reason", "Unauthenticated") >= 2
	})
	if a.Ready() {
		t.Fatal("ready with an expired token")
	}
	if !e.logs.contains("the token has expired") {
		t.Error("no log line saying the token expired")
	}
	// The kubelet refreshes the projected token: the next retry reads it.
	e.WriteToken(fakeca.Token(testNS, testSA, time.Now().Add(time.Hour)))
	eventually(t, "ready after the token refresh", a.Ready)
	got := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default).until(sds.Default)
	checkCert(t, got[sds.Default], e.CA.RootPEM())
}

func TestWrongClusterIDIsRejected(t *testing.T) {
	e := newEnv(t)
	e.Cfg.ClusterID = "other"
	a := e.start()
	eventually(t, "a rejected CA call", func() bool { return len(e.CA.Requests()) >= 1 })
	if r := e.CA.Requests()[0]; r.ClusterID != "other" || status.Code(r.Err) != codes.Unauthenticated {
		t.Fatalf("request %+v: the ClusterID metadata must reach the CA", r)
	}
	if a.Ready() {
		t.Fatal("ready")
	}
}

func TestIdentityFromToken(t *testing.T) {
	e := newEnv(t)
	e.Cfg.Namespace, e.Cfg.ServiceAccount = "", ""
	e.start()
	got := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default).until(sds.Default)
	checkCert(t, got[sds.Default], e.CA.RootPEM())
	if r := e.CA.Requests()[0]; len(r.CSRURIs) != 1 || r.CSRURIs[0] != testID {
		t.Errorf("CSR for %v, want %s from the token", r.CSRURIs, testID)
	}
}

func TestGlooAliases(t *testing.T) {
	e := newEnv(t)
	e.start()
	c := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.GlooCertificate, sds.GlooValidationContext)
	got := c.until(sds.GlooCertificate, sds.GlooValidationContext)
	if got[sds.GlooCertificate].Name != sds.GlooCertificate || got[sds.GlooValidationContext].Name != sds.GlooValidationContext {
		t.Errorf("secrets must carry the requested names")
	}
	checkCert(t, got[sds.GlooCertificate], rootsOf(got[sds.GlooValidationContext]))
	std := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default, sds.RootCA).until(sds.Default, sds.RootCA)
	if !bytes.Equal(std[sds.Default].GetTlsCertificate().GetPrivateKey().GetInlineBytes(),
		got[sds.GlooCertificate].GetTlsCertificate().GetPrivateKey().GetInlineBytes()) ||
		!bytes.Equal(rootsOf(std[sds.RootCA]), rootsOf(got[sds.GlooValidationContext])) {
		t.Error("the Gloo names must be aliases of default and ROOTCA")
	}
}

func TestTCPLoopbackOptIn(t *testing.T) {
	e := newEnv(t)
	e.Cfg.TCPAddr = "127.0.0.1:0"
	a := e.start()
	addr := a.TCPAddr()
	if addr == nil {
		t.Fatal("no TCP listener")
	}
	if ip := addr.(*net.TCPAddr).IP; !ip.IsLoopback() {
		t.Fatalf("listening on %v", addr)
	}
	got := dialSDS(t, addr.String(), sds.GlooCertificate, sds.GlooValidationContext).until(sds.GlooCertificate, sds.GlooValidationContext)
	checkCert(t, got[sds.GlooCertificate], rootsOf(got[sds.GlooValidationContext]))
}

func TestTCPRefusedOffLoopbackAndOnHostNetwork(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "10.1.2.3:8234", "[::]:0"} {
		if l, err := sds.ListenLoopback(addr); err == nil {
			_ = l.Close()
			t.Errorf("%s accepted", addr)
		}
	}
	e := newEnv(t)
	e.Cfg.TCPAddr = "0.0.0.0:8234"
	if err := e.Cfg.Validate(); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("SDS_TCP_ADDR on all interfaces: %v", err)
	}
	e.Cfg.TCPAddr = GlooTCPAddr
	if err := e.Cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e.Cfg.InstanceIP, e.Cfg.HostIP = "192.0.2.7", "192.0.2.7"
	if err := e.Cfg.Validate(); err == nil || !strings.Contains(err.Error(), "host network") {
		t.Fatalf("hostNetwork with SDS_TCP_ADDR: %v", err)
	}
}

func TestRootCertChange(t *testing.T) {
	e := newEnv(t)
	a := e.start()
	c := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default, sds.RootCA)
	oldRoot := e.CA.RootPEM()
	checkCert(t, c.until(sds.Default, sds.RootCA)[sds.Default], oldRoot)

	// istiod's root changes: the CA serves and signs with a new root, and
	// the kubelet updates the istio-ca-root-cert volume.
	if err := e.CA.RotateRoot(); err != nil {
		t.Fatal(err)
	}
	newRoot := e.CA.RootPEM()
	e.WriteRoot(newRoot)
	var cert, roots []byte
	for cert == nil || !bytes.Equal(roots, newRoot) {
		_, got := c.next()
		if s := got[sds.RootCA]; s != nil {
			roots = rootsOf(s)
		}
		if s := got[sds.Default]; s != nil {
			leaf := checkCert(t, s, roots)
			if leaf.CheckSignatureFrom(e.CA.Root()) == nil {
				cert = s.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
			}
		}
	}
	if v := metricValue(t, a, "sds_agent_root_cert_reloads_total", "", ""); v != 1 {
		t.Errorf("root reloads %v, want 1", v)
	}
}

func TestMetricsAndHealthOptIn(t *testing.T) {
	e := newEnv(t)
	e.Cfg.MetricsAddr = "127.0.0.1:0"
	e.CA.FailWith(status.Error(codes.Unavailable, "down"))
	a := e.start()
	base := "http://" + a.MetricsAddr().String()
	if code := httpCode(t, base+"/healthz/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("ready before a certificate: %d", code)
	}
	eventually(t, "a failed CA call", func() bool { return len(e.CA.Requests()) >= 1 })
	e.CA.FailWith(nil)
	c := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default)
	c.until(sds.Default)
	eventually(t, "ready", a.Ready)
	if code := httpCode(t, base+"/healthz/ready"); code != http.StatusOK {
		t.Errorf("ready: %d", code)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	val := func(name string) float64 {
		f := fams[name]
		if f == nil || len(f.Metric) == 0 {
			t.Fatalf("metric %s missing", name)
		}
		m := f.Metric[0]
		if m.Gauge != nil {
			return m.Gauge.GetValue()
		}
		return m.Counter.GetValue()
	}
	if val("sds_agent_ready") != 1 || val("sds_agent_sds_streams") != 1 || val("sds_agent_certificate_renewals_total") != 1 ||
		val("sds_agent_sds_pushes_total") < 1 || val("sds_agent_ca_errors_total") < 1 {
		t.Errorf("metrics: %v", fams)
	}
	if exp := val("sds_agent_certificate_expiry_timestamp_seconds"); exp < float64(time.Now().Add(23*time.Hour).Unix()) {
		t.Errorf("expiry %v", exp)
	}
	if f := fams["sds_agent_ca_errors_total"]; f.GetType() != dto.MetricType_COUNTER {
		t.Errorf("ca errors type %v", f.GetType())
	}
}

func httpCode(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// metricValue reads one sample from the agent's metrics (label "" for an
// unlabelled one); -1 if absent.
func metricValue(t *testing.T, a *Agent, name, label, value string) float64 {
	t.Helper()
	for _, f := range a.Metrics() {
		if f.Name != name {
			continue
		}
		for _, s := range f.Samples {
			if label == "" || s.Labels[label] == value {
				return s.Value
			}
		}
	}
	return -1
}

func TestGracefulShutdownWaitsForTheGateway(t *testing.T) {
	e := newEnv(t)
	e.Cfg.DrainTimeout = time.Minute
	e.start()
	c := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default)
	c.until(sds.Default)
	e.cancel() // SIGTERM
	e.cancel = nil
	select {
	case err := <-e.done:
		t.Fatalf("agent stopped while the gateway's stream was open: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	// Still serving new streams while draining.
	c2 := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default)
	checkCert(t, c2.until(sds.Default)[sds.Default], e.CA.RootPEM())
	// The gateway exits: its streams close, and so does the agent.
	c.close()
	select {
	case err := <-e.done:
		t.Fatalf("agent stopped while a stream was still open: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	c2.close()
	select {
	case err := <-e.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("agent did not stop after the streams closed")
	}
	e.logs.close()
	if _, err := os.Stat(e.Cfg.SocketPath); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestDrainTimeout(t *testing.T) {
	e := newEnv(t)
	e.Cfg.DrainTimeout = 200 * time.Millisecond
	e.start()
	c := dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default)
	c.until(sds.Default)
	if err := e.stop(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	r, err := c.s.Next(ctx)
	switch {
	case err == nil:
		t.Fatalf("response version %s after the drain timeout, want the stream closed", r.Version)
	case ctx.Err() != nil:
		t.Fatal("stream not closed")
	case status.Code(err) != codes.Unavailable:
		t.Errorf("stream ended with %v, want Unavailable", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	e := newEnv(t)
	// A socket left by a previous container run: nothing listens on it.
	if err := os.MkdirAll(filepath.Dir(e.Cfg.SocketPath), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: e.Cfg.SocketPath, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	e.start()
	checkCert(t, dialSDS(t, unixTarget(e.Cfg.SocketPath), sds.Default).until(sds.Default)[sds.Default], e.CA.RootPEM())

	// A second agent on the same live socket refuses to start.
	cfg := e.Cfg
	err = New(cfg, e.Agent.log).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second agent: %v", err)
	}
}

func TestConfigEnvAndFlags(t *testing.T) {
	env := map[string]string{"CA_ADDR": "istiod.istio-system.svc:15012", "TRUST_DOMAIN": "example.org", "CERT_TTL": "1h", "SDS_SOCKET_PATH": "/x/socket"}
	cfg, err := Load(flag.NewFlagSet("t", flag.ContinueOnError), []string{"--cert-ttl=2h", "--key-algorithm", "rsa-2048"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TrustDomain != "example.org" || cfg.CertTTL != 2*time.Hour || cfg.KeyAlgorithm != ca.RSA2048 || cfg.SocketPath != "/x/socket" {
		t.Errorf("cfg %+v", cfg)
	}
	if cfg.TCPAddr != "" || cfg.MetricsAddr != "" {
		t.Errorf("TCP listeners must be off by default: %+v", cfg)
	}
	if cfg.RenewFraction != 0.5 || cfg.TokenPath != DefaultTokenPath || cfg.RootCertPath != DefaultRootCertPath || cfg.ClusterID != "Kubernetes" {
		t.Errorf("defaults %+v", cfg)
	}
	for _, bad := range [][]string{
		{"--renew-fraction=1"}, {"--renew-jitter=0.6"}, {"--key-algorithm=dsa"}, {"--ca-addr=istiod"},
		{"--socket-mode=0644x"}, {"--socket-mode=0066"}, {"--cert-ttl=0s"}, {"--log-level=loud"}, {"extra"},
	} {
		if _, err := Load(flag.NewFlagSet("t", flag.ContinueOnError), bad, func(string) string { return "" }); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestSocketModeAuto(t *testing.T) {
	dir := t.TempDir()
	if m, err := sds.SocketMode("auto", dir); err != nil || m != 0o666 {
		t.Errorf("plain directory: %v %v, want 0666", m, err)
	}
	// An emptyDir with fsGroup is setgid and owned by the pod's fsGroup,
	// which every container of the pod is in.
	if err := os.Chown(dir, -1, os.Getegid()); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o2775|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	if m, err := sds.SocketMode("auto", dir); err != nil || m != 0o660 {
		t.Errorf("fsGroup directory: %v %v, want 0660", m, err)
	}
	if m, err := sds.SocketMode("0600", dir); err != nil || m != 0o600 {
		t.Errorf("explicit: %v %v", m, err)
	}
}
