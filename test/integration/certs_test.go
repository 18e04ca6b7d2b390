package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/certs"
	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/server"

	"github.com/sds-injector/sds-injector/test/harness"
)

type certsHarness struct {
	mgr     *certs.Manager
	metrics *certs.Metrics
	dir     string
	cancel  context.CancelFunc
	done    chan error
}

// startCerts runs a self-managed certificate manager as `serve
// --cert-mode=self-managed` does, with a serving certificate for the
// address the API server calls in these tests (127.0.0.1).
func startCerts(t *testing.T, ns, secret string, webhookConfigs []string, dir string) *certsHarness {
	t.Helper()
	c, err := client.NewWithWatch(cp.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := certs.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := certs.New(c, certs.Config{
		Namespace:             ns,
		SecretName:            secret,
		DNSNames:              certs.ServiceDNSNames("sds-injector", ns, "cluster.local"),
		IPs:                   []net.IP{net.ParseIP(cp.WebhookInstallOptions.LocalServingHost)},
		WebhookConfigurations: webhookConfigs,
		CertDir:               dir,
		PropagationDelay:      time.Second,
		Resync:                2 * time.Second,
	}, logr.Discard(), m)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &certsHarness{mgr: mgr, metrics: m, dir: dir, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- mgr.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-h.done })
	return h
}

func (h *certsHarness) waitReady(t *testing.T) {
	t.Helper()
	harness.Eventually(t, 60*time.Second, "self-managed certificates to become ready", func(context.Context) (bool, error) {
		return h.mgr.Ready() == nil, nil
	})
}

func startWebhookOnDir(t *testing.T, dir string) *webhookServer {
	t.Helper()
	settings := inject.DefaultConfig().MustResolve()
	w := cp.WebhookInstallOptions
	srv, err := server.New(server.Options{Settings: settings, Host: w.LocalServingHost, Port: w.LocalServingPort, CertDir: dir,
		MetricsAddr: "0", HealthAddr: "127.0.0.1:0", DrainDelay: -1, Logger: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ws := &webhookServer{cancel: cancel, done: make(chan error, 1), srv: srv}
	go func() { ws.done <- srv.Start(ctx) }()
	t.Cleanup(ws.stop)
	harness.WaitReady(t, 30*time.Second, "http://"+srv.HealthAddr()+"/readyz")
	return ws
}

// servedCert is the certificate the webhook presents right now.
func servedCert(t *testing.T) *x509.Certificate {
	t.Helper()
	w := cp.WebhookInstallOptions
	conn, err := tls.Dial("tcp", net.JoinHostPort(w.LocalServingHost, strconv.Itoa(w.LocalServingPort)), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // reading, not trusting
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func getMWC(t *testing.T, name string) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := cp.Client.Get(context.Background(), types.NamespacedName{Name: name}, &mwc); err != nil {
		t.Fatal(err)
	}
	return &mwc
}

func getSecret(t *testing.T, ns, name string) *corev1.Secret {
	t.Helper()
	var s corev1.Secret
	if err := cp.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func bundleSize(t *testing.T, pemData []byte) int {
	t.Helper()
	n := 0
	for {
		var b *pem.Block
		b, pemData = pem.Decode(pemData)
		if b == nil {
			return n
		}
		n++
	}
}

// TestSelfManagedCertificates: bootstrap from nothing, the API server
// trusts the result (a pod is injected through it), and an overwritten
// caBundle is repaired.
func TestSelfManagedCertificates(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	mwc := installMode(t, ModeNamespace)
	injectorNS := namespace(t, nil)
	h := startCerts(t, injectorNS, "sds-injector-tls", []string{mwc.Name, "not-installed-mode"}, t.TempDir())
	h.waitReady(t)

	secret := getSecret(t, injectorNS, "sds-injector-tls")
	if n := bundleSize(t, secret.Data[certs.KeyCABundle]); n != 1 {
		t.Fatalf("bootstrap bundle holds %d CAs, want 1", n)
	}
	stored := getMWC(t, mwc.Name)
	if !bytes.Equal(stored.Webhooks[0].ClientConfig.CABundle, secret.Data[certs.KeyCABundle]) {
		t.Fatal("caBundle was not set to the injector's CA bundle")
	}
	onDisk, err := os.ReadFile(filepath.Join(h.dir, "tls.crt"))
	if err != nil || !bytes.Equal(onDisk, secret.Data[certs.KeyTLSCert]) {
		t.Fatalf("tls.crt on disk does not match the Secret: %v", err)
	}

	startWebhookOnDir(t, h.dir)
	enabled := namespace(t, map[string]string{nsLabel: "enabled"})
	assertInjected(t, create(t, glooPod(t, enabled, "via-self-managed", nil, nil)))

	t.Run("an overwritten caBundle is repaired", func(t *testing.T) {
		tampered := getMWC(t, mwc.Name)
		tampered.Webhooks[0].ClientConfig.CABundle = cp.WebhookInstallOptions.LocalServingCAData
		if err := cp.Client.Update(context.Background(), tampered); err != nil {
			t.Fatal(err)
		}
		harness.Eventually(t, 30*time.Second, "the caBundle to be repaired", func(context.Context) (bool, error) {
			return bytes.Equal(getMWC(t, mwc.Name).Webhooks[0].ClientConfig.CABundle, secret.Data[certs.KeyCABundle]), nil
		})
		if n := testutil.CollectAndCount(h.metrics.RepairsCollector()); n == 0 {
			t.Error("no caBundle repair was counted")
		}
		// The apiserver reloads the repaired caBundle asynchronously.
		waitInjectedDryRun(t, "the apiserver to trust the repaired caBundle", glooPod(t, enabled, "after-repair", nil, nil))
		assertInjected(t, create(t, glooPod(t, enabled, "after-repair", nil, nil)))
	})
}

// TestTwoReplicasAgree: two replicas bootstrapping the same Secret at once
// end with one CA and the same serving certificate.
func TestTwoReplicasAgree(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	mwc := installMode(t, ModeNamespace)
	ns := namespace(t, nil)
	a := startCerts(t, ns, "shared-tls", []string{mwc.Name}, t.TempDir())
	b := startCerts(t, ns, "shared-tls", []string{mwc.Name}, t.TempDir())
	a.waitReady(t)
	b.waitReady(t)
	secret := getSecret(t, ns, "shared-tls")
	if n := bundleSize(t, secret.Data[certs.KeyCABundle]); n != 1 {
		t.Errorf("the replicas produced %d CAs, want 1", n)
	}
	ca, _ := os.ReadFile(filepath.Join(a.dir, "tls.crt"))
	cb, _ := os.ReadFile(filepath.Join(b.dir, "tls.crt"))
	if !bytes.Equal(ca, cb) || !bytes.Equal(ca, secret.Data[certs.KeyTLSCert]) {
		t.Error("the replicas serve different certificates")
	}
}

// TestRotationUnderLoad rotates the serving certificate and then the CA
// while admission requests flow through the API server to a fail-closed
// webhook: not one may fail.
func TestRotationUnderLoad(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	mwc := installMode(t, ModePerGateway)
	injectorNS := namespace(t, nil)
	h := startCerts(t, injectorNS, "sds-injector-tls", []string{mwc.Name}, t.TempDir())
	h.waitReady(t)
	startWebhookOnDir(t, h.dir)
	ns := namespace(t, nil)
	waitInjectedDryRun(t, "the apiserver to inject through the self-managed certificate", glooPod(t, ns, "first", map[string]string{labelInject: "true"}, nil))

	load := startAdmissionLoad(t, ns, 2)
	before := servedCert(t)
	h.mgr.Rotate(certs.KindServing)
	harness.Eventually(t, 60*time.Second, "the new serving certificate to be served", func(context.Context) (bool, error) {
		c := servedCert(t)
		return !c.Equal(before), nil
	})
	afterServing := servedCert(t)
	if afterServing.CheckSignatureFrom(mustCA(t, injectorNS)) != nil {
		t.Error("a serving rotation must keep the CA")
	}
	h.mgr.Rotate(certs.KindCA)
	harness.Eventually(t, 60*time.Second, "a certificate from the new CA to be served", func(context.Context) (bool, error) {
		c := servedCert(t)
		return c.CheckSignatureFrom(afterServing) != nil && c.CheckSignatureFrom(mustCA(t, injectorNS)) == nil && !c.Equal(afterServing), nil
	})
	if n := bundleSize(t, getSecret(t, injectorNS, "sds-injector-tls").Data[certs.KeyCABundle]); n != 2 {
		t.Errorf("after a CA roll the bundle should trust old and new CA, has %d", n)
	}
	// Keep the stream going on the new CA before judging it.
	load.waitMore(t, 20, "after the CA roll")
	load.stop(t, "during rotation", 20)
}

func mustCA(t *testing.T, ns string) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(getSecret(t, ns, "sds-injector-tls").Data[certs.KeyCACert])
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
