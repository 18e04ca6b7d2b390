package certs

import (
	"context"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

// These unit tests use controller-runtime's fake client for the Secret
// logic under a controlled clock; the behaviour against a real API server
// (trust, repair, replicas, rotation under load) is in test/integration.

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTestManager(t *testing.T, c client.WithWatch, clk *clock) *Manager {
	t.Helper()
	m, err := New(c, Config{
		Namespace: "ns", SecretName: "tls", DNSNames: []string{"svc.ns.svc"}, IPs: []net.IP{net.ParseIP("127.0.0.1")},
		CertDir: t.TempDir(), CAValidity: 300 * time.Hour, ServingValidity: 30 * time.Hour,
		PropagationDelay: time.Minute, Now: clk.now,
	}, logr.Discard(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func settle(t *testing.T, m *Manager) {
	t.Helper()
	for i := 0; i < 10; i++ {
		requeue, err := m.reconcile(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if requeue != time.Millisecond {
			return
		}
	}
	t.Fatal("reconcile did not settle")
}

func loadState(t *testing.T, c client.Client) *state {
	t.Helper()
	var s corev1.Secret
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: "ns", Name: "tls"}, &s); err != nil {
		t.Fatal(err)
	}
	st, err := decode(&s)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestBootstrapAndRenewal(t *testing.T) {
	c := fake.NewClientBuilder().Build()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := newTestManager(t, c, clk)
	settle(t, m)
	first := loadState(t, c)
	if m.Ready() != nil {
		t.Fatalf("with no webhook configurations installed the manager is ready once files exist: %v", m.Ready())
	}
	if !first.serving.cert.NotAfter.Equal(clk.t.Add(30*time.Hour).Truncate(time.Second)) || first.serving.cert.NotBefore.After(clk.t) {
		t.Errorf("serving validity %s..%s", first.serving.cert.NotBefore, first.serving.cert.NotAfter)
	}
	if first.serving.cert.PublicKeyAlgorithm != x509.ECDSA || first.ca.cert.PublicKeyAlgorithm != x509.ECDSA {
		t.Error("keys must be ECDSA P-256")
	}

	// Before the renewal window (last third): nothing changes.
	clk.t = clk.t.Add(15 * time.Hour)
	settle(t, m)
	if !loadState(t, c).serving.cert.Equal(first.serving.cert) {
		t.Fatal("serving certificate renewed too early")
	}
	// Inside it: renewed, same CA.
	clk.t = clk.t.Add(6 * time.Hour)
	settle(t, m)
	second := loadState(t, c)
	if second.serving.cert.Equal(first.serving.cert) || !second.ca.cert.Equal(first.ca.cert) {
		t.Fatal("want a new serving certificate from the same CA")
	}
}

func TestCARollKeepsOldCATrustedAndWaitsForPropagation(t *testing.T) {
	c := fake.NewClientBuilder().Build()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := newTestManager(t, c, clk)
	settle(t, m)
	// Roll the CA well before the old one expires.
	clk.t = clk.t.Add(100 * time.Hour)
	settle(t, m)
	old := loadState(t, c)

	m.force[KindCA] = true
	settle(t, m)
	rolled := loadState(t, c)
	if rolled.ca.cert.Equal(old.ca.cert) || len(rolled.bundle) != 2 {
		t.Fatalf("want a new CA with both CAs in the bundle, got %d", len(rolled.bundle))
	}
	if !rolled.serving.cert.Equal(old.serving.cert) || m.Ready() != nil {
		t.Fatal("the serving certificate must not move to the new CA before it has propagated")
	}
	clk.t = clk.t.Add(2 * time.Minute)
	settle(t, m)
	moved := loadState(t, c)
	if moved.serving.cert.CheckSignatureFrom(moved.ca.cert) != nil {
		t.Fatal("after the propagation delay the serving certificate comes from the new CA")
	}
	if len(moved.bundle) != 2 {
		t.Fatal("the old CA stays trusted until it expires")
	}
	// Once the old CA expires it leaves the bundle.
	clk.t = old.ca.cert.NotAfter.Add(time.Hour)
	settle(t, m)
	for _, b := range loadState(t, c).bundle {
		if b.Equal(old.ca.cert) {
			t.Fatal("an expired CA must leave the bundle")
		}
	}
}

func TestUnusableSecretIsReplaced(t *testing.T) {
	bad := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "tls"}, Data: map[string][]byte{KeyCACert: []byte("garbage")}}
	c := fake.NewClientBuilder().WithObjects(bad).Build()
	m := newTestManager(t, c, &clock{t: time.Now()})
	settle(t, m)
	st := loadState(t, c)
	if !verifies(st.serving.cert, st.bundle, time.Now()) {
		t.Fatal("replacement does not verify")
	}
}

func TestPruneNeverDropsTheServingCA(t *testing.T) {
	now := time.Now()
	var cas []*keyPair
	for i := 0; i < 5; i++ {
		ca, err := newCA(now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cas = append(cas, ca)
	}
	serving, err := issueServing(cas[4], now, time.Hour, []string{"x"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := &state{ca: cas[0], serving: serving}
	for _, c := range cas {
		st.bundle = append(st.bundle, c.cert)
	}
	m := &Manager{cfg: Config{MaxBundle: 2}}
	m.pruneBundle(st, now)
	has := func(c *x509.Certificate) bool {
		for _, b := range st.bundle {
			if b.Equal(c) {
				return true
			}
		}
		return false
	}
	if !has(cas[0].cert) || !has(cas[4].cert) || len(st.bundle) > 3 {
		t.Fatalf("bundle of %d must keep the current CA and the serving certificate's CA", len(st.bundle))
	}
}

func TestConfigValidation(t *testing.T) {
	if _, err := New(nil, Config{Namespace: "ns", SecretName: "s", CertDir: "/tmp"}, logr.Discard(), nil); err == nil {
		t.Error("a serving certificate without names must be refused")
	}
	if _, err := New(nil, Config{Namespace: "ns", SecretName: "s", CertDir: "/tmp", DNSNames: []string{"a"}, RenewFraction: 2}, logr.Discard(), nil); err == nil {
		t.Error("renew fraction 2 must be refused")
	}
}

func TestLogsCarryNoKeys(t *testing.T) {
	var logs strings.Builder
	log := funcr.New(func(prefix, args string) { logs.WriteString(prefix + args + "\n") }, funcr.Options{Verbosity: 10})
	c := fake.NewClientBuilder().Build()
	clk := &clock{t: time.Now()}
	m := newTestManager(t, c, clk)
	m.log = log
	settle(t, m)
	m.force[KindCA] = true
	settle(t, m)
	if logs.Len() == 0 {
		t.Fatal("nothing was logged; the test would prove nothing")
	}
	st := loadState(t, c)
	for _, secret := range [][]byte{st.ca.keyPEM, st.serving.keyPEM} {
		body := strings.Split(string(secret), "\n")[1]
		if strings.Contains(logs.String(), body) || strings.Contains(logs.String(), "PRIVATE KEY") {
			t.Fatalf("logs contain key material:\n%s", logs.String())
		}
	}
}
