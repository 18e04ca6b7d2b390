// Package sds serves the agent's workload certificate and trust bundle to
// Envoy over the Secret Discovery Service (envoy.service.secret.v3), state of
// the world, on a Unix socket and optionally on loopback TCP.
package sds

import (
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sds-injector/sds-injector/internal/agentcontract"
)

// Resource names served. Envoy (and Istio's bootstrap) asks for Default and
// RootCA; Gloo Edge's Istio integration asks for the Gloo names, which are
// aliases of the same two secrets.
const (
	Default               = agentcontract.SecretCertificate
	RootCA                = agentcontract.SecretRootCA
	GlooCertificate       = agentcontract.SecretGlooCertificate
	GlooValidationContext = agentcontract.SecretGlooRootCA
)

// kind is what a resource name resolves to.
type kind int

const (
	kindUnknown kind = iota
	kindCert
	kindRoot
)

// CertificateNames are the names under which the workload certificate is
// served; RootNames those of the trust bundle.
func CertificateNames() []string { return []string{Default, GlooCertificate} }
func RootNames() []string        { return []string{RootCA, GlooValidationContext} }

func kindOf(name string) kind {
	switch name {
	case Default, GlooCertificate:
		return kindCert
	case RootCA, GlooValidationContext:
		return kindRoot
	}
	return kindUnknown
}

// Certificate is a workload key pair as served under Default.
type Certificate struct {
	ChainPEM []byte // leaf first, as issued by the CA
	KeyPEM   []byte
	NotAfter time.Time // the chain's earliest expiry
}

// Store holds the secrets being served. Every change bumps a generation per
// kind and wakes the streams; a certificate stops being served at its
// NotAfter even if nobody replaces it.
type Store struct {
	now func() time.Time

	mu      sync.Mutex
	cert    *Certificate
	certGen uint64
	roots   []byte
	rootGen uint64
	changed chan struct{} // closed and replaced on every change
	expiry  *time.Timer
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{now: time.Now, changed: make(chan struct{})}
}

// notifyLocked wakes the waiters; the caller holds s.mu.
func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// SetCertificate replaces the served certificate. It is withdrawn at
// c.NotAfter unless replaced before.
func (s *Store) SetCertificate(c Certificate) { s.Update(&c, nil) }

// SetRoots replaces the trust bundle (PEM).
func (s *Store) SetRoots(pem []byte) { s.Update(nil, pem) }

// Update replaces the certificate (if cert is not nil) and the trust bundle
// (if roots is not nil and differs) in one change, so that a stream
// subscribed to both receives them in one response.
func (s *Store) Update(cert *Certificate, roots []byte) {
	s.mu.Lock()
	changed := false
	if cert != nil {
		c := *cert
		s.cert = &c
		s.certGen++
		gen := s.certGen
		if s.expiry != nil {
			s.expiry.Stop()
		}
		s.expiry = time.AfterFunc(c.NotAfter.Sub(s.now()), func() { s.expire(gen) })
		changed = true
	}
	if roots != nil && string(roots) != string(s.roots) {
		s.roots = append([]byte(nil), roots...)
		s.rootGen++
		changed = true
	}
	if !changed {
		s.mu.Unlock()
		return
	}
	s.notifyLocked()
	s.mu.Unlock()
}

// expire withdraws the certificate of generation gen if it is still current.
func (s *Store) expire(gen uint64) {
	s.mu.Lock()
	if s.certGen != gen || s.cert == nil {
		s.mu.Unlock()
		return
	}
	s.cert = nil
	s.certGen++
	s.notifyLocked()
	s.mu.Unlock()
}

// Close stops the expiry timer.
func (s *Store) Close() {
	s.mu.Lock()
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.mu.Unlock()
}

// Certificate returns the certificate being served, if a valid one is held.
func (s *Store) Certificate() (Certificate, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cert == nil || !s.now().Before(s.cert.NotAfter) {
		return Certificate{}, false
	}
	return *s.cert, true
}

// snapshot is a consistent view of the store.
type snapshot struct {
	cert    *Certificate // nil when none or expired
	certGen uint64
	roots   []byte
	rootGen uint64
	changed <-chan struct{}
}

func (s *Store) snapshot() snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	cert := s.cert
	// Never serve an expired certificate, even in the instant before the
	// expiry timer fires.
	if cert != nil && !s.now().Before(cert.NotAfter) {
		cert = nil
	}
	return snapshot{cert: cert, certGen: s.certGen, roots: s.roots, rootGen: s.rootGen, changed: s.changed}
}

// gen is the generation of the content behind name, and whether it can be
// served now.
func (sn snapshot) gen(name string) (uint64, bool) {
	switch kindOf(name) {
	case kindCert:
		return sn.certGen, sn.cert != nil
	case kindRoot:
		return sn.rootGen, len(sn.roots) > 0
	}
	return 0, false
}

// secret builds the Envoy secret named name; ok is false if it is not
// available.
func (sn snapshot) secret(name string) (*tlsv3.Secret, bool) {
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	switch kindOf(name) {
	case kindCert:
		if sn.cert == nil {
			return nil, false
		}
		return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(sn.cert.ChainPEM),
			PrivateKey:       inline(sn.cert.KeyPEM),
		}}}, true
	case kindRoot:
		if len(sn.roots) == 0 {
			return nil, false
		}
		return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(sn.roots),
		}}}, true
	}
	return nil, false
}
