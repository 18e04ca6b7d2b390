package certs

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Keys of the Secret that holds the injector's PKI.
const (
	KeyCACert   = "ca.crt"
	KeyCAKey    = "ca.key"
	KeyCABundle = "ca-bundle.crt"
	KeyTLSCert  = corev1.TLSCertKey
	KeyTLSKey   = corev1.TLSPrivateKeyKey

	// annotationTrustedSince records when the current CA entered the
	// bundle; a serving certificate from a new CA is only used once the API
	// server has had time to load the new caBundle.
	annotationTrustedSince = "sds-injector.io/ca-trusted-since"
)

// Config of the self-managed certificates.
type Config struct {
	// Namespace and SecretName locate the shared Secret.
	Namespace  string
	SecretName string
	// DNSNames and IPs go into the serving certificate (the Service's names:
	// <svc>, <svc>.<ns>, <svc>.<ns>.svc, <svc>.<ns>.svc.<cluster domain>).
	DNSNames []string
	IPs      []net.IP
	// WebhookConfigurations are the names of the injector's own
	// MutatingWebhookConfigurations; only these are patched. Missing ones
	// are skipped (a user may install a single mode).
	WebhookConfigurations []string
	// CertDir receives tls.crt and tls.key for the webhook server.
	CertDir string

	CAValidity      time.Duration // default 3 years
	ServingValidity time.Duration // default 90 days
	// RenewFraction is the final part of a certificate's lifetime in which
	// it is renewed (default 1/3: a 90-day certificate is renewed after 60).
	RenewFraction float64
	// PropagationDelay is how long a new CA must be in every caBundle
	// before a serving certificate it signed is used (default 30s; the API
	// server's webhook configuration informer usually takes milliseconds).
	PropagationDelay time.Duration
	// Resync is the interval of the reconcile loop on top of watches
	// (default 30s).
	Resync time.Duration
	// MaxBundle caps how many CAs the bundle keeps (default 3); the CA of
	// the certificate being served is never dropped.
	MaxBundle int

	Now func() time.Time
}

func (c *Config) defaults() error {
	if c.Namespace == "" || c.SecretName == "" {
		return errors.New("certs: namespace and secret name are required")
	}
	if c.CertDir == "" {
		return errors.New("certs: no certificate directory")
	}
	if len(c.DNSNames) == 0 && len(c.IPs) == 0 {
		return errors.New("certs: the serving certificate needs at least one DNS name or IP")
	}
	if c.CAValidity == 0 {
		c.CAValidity = 3 * 365 * 24 * time.Hour
	}
	if c.ServingValidity == 0 {
		c.ServingValidity = 90 * 24 * time.Hour
	}
	if c.RenewFraction == 0 {
		c.RenewFraction = 1.0 / 3
	}
	if c.RenewFraction <= 0 || c.RenewFraction >= 1 {
		return fmt.Errorf("certs: renew fraction %v must be between 0 and 1", c.RenewFraction)
	}
	if c.PropagationDelay == 0 {
		c.PropagationDelay = 30 * time.Second
	}
	if c.Resync == 0 {
		c.Resync = 30 * time.Second
	}
	if c.MaxBundle == 0 {
		c.MaxBundle = 3
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// ServiceDNSNames returns the names a Service is reached by.
func ServiceDNSNames(service, namespace, clusterDomain string) []string {
	return []string{
		service,
		service + "." + namespace,
		service + "." + namespace + ".svc",
		service + "." + namespace + ".svc." + clusterDomain,
	}
}

// Kind of certificate for Rotate.
type Kind string

const (
	KindServing Kind = "serving"
	KindCA      Kind = "ca"
)

// Manager runs the reconcile loop. Every replica runs one; they agree
// through the Secret's resourceVersion (optimistic concurrency).
type Manager struct {
	cfg     Config
	client  client.WithWatch
	log     logr.Logger
	metrics *Metrics
	trigger chan struct{}

	mu          sync.Mutex
	force       map[Kind]bool
	written     []byte // tls.crt last written to CertDir
	readyErr    error
	filesReady  chan struct{}
	filesClosed bool
}

// New validates cfg and returns a manager. c needs get/create/update on the
// Secret and get/update/watch on the named webhook configurations.
func New(c client.WithWatch, cfg Config, log logr.Logger, m *Metrics) (*Manager, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	return &Manager{
		cfg: cfg, client: c, log: log, metrics: m,
		trigger:    make(chan struct{}, 1),
		force:      map[Kind]bool{},
		readyErr:   errors.New("certificates not reconciled yet"),
		filesReady: make(chan struct{}),
	}, nil
}

// FilesReady is closed once tls.crt and tls.key exist in CertDir, so the
// webhook server (which needs them to start) can be started after it.
func (m *Manager) FilesReady() <-chan struct{} { return m.filesReady }

// Ready is a readiness check: nil once the serving certificate is on disk
// and every existing webhook configuration trusts its CA.
func (m *Manager) Ready() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.readyErr
}

// Rotate renews the given certificate at the next reconcile, as if it had
// entered its renewal window, and triggers that reconcile.
func (m *Manager) Rotate(kind Kind) {
	m.mu.Lock()
	m.force[kind] = true
	m.mu.Unlock()
	m.poke()
}

func (m *Manager) poke() {
	select {
	case m.trigger <- struct{}{}:
	default:
	}
}

// Start reconciles until ctx ends: at start, on every change to the Secret
// or a webhook configuration, and every Resync.
func (m *Manager) Start(ctx context.Context) error {
	go m.watch(ctx, &corev1.SecretList{}, client.InNamespace(m.cfg.Namespace), client.MatchingFields{"metadata.name": m.cfg.SecretName})
	for _, name := range m.cfg.WebhookConfigurations {
		go m.watch(ctx, &admissionregistrationv1.MutatingWebhookConfigurationList{}, client.MatchingFields{"metadata.name": name})
	}
	backoff := 100 * time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-m.trigger:
		}
		next := m.cfg.Resync
		requeue, err := m.reconcile(ctx)
		switch {
		case err != nil:
			m.log.Error(err, "reconciling webhook certificates; retrying", "in", backoff)
			m.setReady(err)
			next, backoff = backoff, min(2*backoff, m.cfg.Resync)
		case requeue > 0:
			next, backoff = min(requeue, m.cfg.Resync), 100*time.Millisecond
		default:
			backoff = 100 * time.Millisecond
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// watch pokes the loop on every event for the listed objects; watches that
// end are restarted, and the Resync covers any gap.
func (m *Manager) watch(ctx context.Context, list client.ObjectList, opts ...client.ListOption) {
	for ctx.Err() == nil {
		w, err := m.client.Watch(ctx, list, opts...)
		if err == nil {
			for range w.ResultChan() {
				m.poke()
			}
			w.Stop()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (m *Manager) setReady(err error) {
	m.mu.Lock()
	m.readyErr = err
	m.mu.Unlock()
}

func (m *Manager) takeForce() map[Kind]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.force
	m.force = map[Kind]bool{}
	return f
}

// state is the decoded Secret.
type state struct {
	ca           *keyPair
	serving      *keyPair
	bundle       []*x509.Certificate
	trustedSince time.Time
}

func (m *Manager) bootstrap(now time.Time) (*state, error) {
	ca, err := newCA(now, m.cfg.CAValidity)
	if err != nil {
		return nil, err
	}
	serving, err := issueServing(ca, now, m.cfg.ServingValidity, m.cfg.DNSNames, m.cfg.IPs)
	if err != nil {
		return nil, err
	}
	return &state{ca: ca, serving: serving, bundle: []*x509.Certificate{ca.cert}, trustedSince: now}, nil
}

func decode(s *corev1.Secret) (*state, error) {
	ca, err := parseKeyPair(s.Data[KeyCACert], s.Data[KeyCAKey])
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	serving, err := parseKeyPair(s.Data[KeyTLSCert], s.Data[KeyTLSKey])
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	bundle, err := parseBundle(s.Data[KeyCABundle])
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	since, _ := time.Parse(time.RFC3339, s.Annotations[annotationTrustedSince])
	return &state{ca: ca, serving: serving, bundle: bundle, trustedSince: since}, nil
}

func (st *state) encode(s *corev1.Secret) {
	s.Type = corev1.SecretTypeTLS
	s.Data = map[string][]byte{
		KeyCACert: st.ca.certPEM, KeyCAKey: st.ca.keyPEM,
		KeyTLSCert: st.serving.certPEM, KeyTLSKey: st.serving.keyPEM,
		KeyCABundle: encodeBundle(st.bundle),
	}
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[annotationTrustedSince] = st.trustedSince.UTC().Format(time.RFC3339)
}

// reconcile runs one pass. It returns how soon to run again when something
// is pending (e.g. a new CA still propagating).
func (m *Manager) reconcile(ctx context.Context) (time.Duration, error) {
	now := m.cfg.Now()
	key := types.NamespacedName{Namespace: m.cfg.Namespace, Name: m.cfg.SecretName}
	var secret corev1.Secret
	err := m.client.Get(ctx, key, &secret)
	if apierrors.IsNotFound(err) {
		st, err := m.bootstrap(now)
		if err != nil {
			return 0, err
		}
		secret = corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name,
			Labels: map[string]string{"app.kubernetes.io/name": "sds-injector", "app.kubernetes.io/component": "webhook-certificates"}}}
		st.encode(&secret)
		if err := m.client.Create(ctx, &secret); err != nil {
			if apierrors.IsAlreadyExists(err) {
				return time.Millisecond, nil // another replica won; adopt its Secret
			}
			return 0, fmt.Errorf("creating Secret %s: %w", key, err)
		}
		m.log.Info("created webhook CA and serving certificate", "secret", key, "ca", describe(st.ca.cert), "serving", describe(st.serving.cert))
		m.metrics.rotated(KindCA)
		m.metrics.rotated(KindServing)
		return time.Millisecond, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading Secret %s: %w", key, err)
	}
	st, err := decode(&secret)
	if err != nil {
		// Unusable content is replaced rather than served; the webhooks'
		// caBundle follows in this same pass.
		m.log.Error(err, "the certificate Secret is unusable; replacing its contents", "secret", key)
		if st, err = m.bootstrap(now); err != nil {
			return 0, err
		}
		return m.update(ctx, &secret, st, "replaced unusable contents")
	}

	force := m.takeForce()
	// 1. The CA: renewed in its renewal window; the old one stays trusted
	// until it expires.
	if force[KindCA] || renewalDue(st.ca.cert, now, m.cfg.RenewFraction) {
		ca, err := newCA(now, m.cfg.CAValidity)
		if err != nil {
			return 0, err
		}
		st.ca, st.trustedSince = ca, now
		st.bundle = append([]*x509.Certificate{ca.cert}, st.bundle...)
		m.pruneBundle(st, now)
		m.metrics.rotated(KindCA)
		// A serving certificate from the old CA no longer verifies against
		// the current one, so it is replaced once the new CA has propagated.
		m.log.Info("rolling the webhook CA; both CAs stay trusted", "new", describe(ca.cert))
		return m.update(ctx, &secret, st, "new CA")
	}
	if m.pruneBundle(st, now) {
		return m.update(ctx, &secret, st, "pruned expired CAs")
	}

	// 2. Every webhook configuration trusts the bundle.
	trusted, err := m.syncWebhooks(ctx, encodeBundle(st.bundle), st.ca.cert)
	if err != nil {
		return 0, err
	}

	// 3. The serving certificate: renewed in its window, reissued when the
	// names change, and moved to a new CA once that CA is trusted.
	wantNew := force[KindServing] || renewalDue(st.serving.cert, now, m.cfg.RenewFraction) ||
		!slices.Equal(st.serving.cert.DNSNames, m.cfg.DNSNames) || !sameIPs(st.serving.cert.IPAddresses, m.cfg.IPs)
	if !verifies(st.serving.cert, []*x509.Certificate{st.ca.cert}, now) {
		wantNew = true
	}
	if wantNew {
		wait := st.trustedSince.Add(m.cfg.PropagationDelay).Sub(now)
		newCA := st.serving.cert.CheckSignatureFrom(st.ca.cert) != nil
		switch {
		case newCA && !trusted:
			return time.Second, m.writeAndReady(st, errors.New("waiting for every webhook configuration to trust the new CA"))
		case newCA && wait > 0:
			return wait, m.writeAndReady(st, nil)
		}
		serving, err := issueServing(st.ca, now, m.cfg.ServingValidity, m.cfg.DNSNames, m.cfg.IPs)
		if err != nil {
			return 0, err
		}
		st.serving = serving
		m.metrics.rotated(KindServing)
		m.log.Info("issued a new serving certificate", "serving", describe(serving.cert))
		return m.update(ctx, &secret, st, "new serving certificate")
	}

	var readyErr error
	if !trusted {
		readyErr = errors.New("not every webhook configuration trusts the serving certificate's CA yet")
	}
	if err := m.writeAndReady(st, readyErr); err != nil {
		return 0, err
	}
	// Come back when the next renewal window opens.
	return min(time.Until(renewAt(st.serving.cert, m.cfg.RenewFraction)), time.Until(renewAt(st.ca.cert, m.cfg.RenewFraction))), nil
}

func renewAt(c *x509.Certificate, fraction float64) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotAfter.Add(-time.Duration(float64(life) * fraction))
}

func (m *Manager) update(ctx context.Context, secret *corev1.Secret, st *state, why string) (time.Duration, error) {
	st.encode(secret)
	if err := m.client.Update(ctx, secret); err != nil {
		if apierrors.IsConflict(err) {
			// Another replica changed it first; start over from its version.
			return time.Millisecond, nil
		}
		return 0, fmt.Errorf("updating Secret %s/%s (%s): %w", secret.Namespace, secret.Name, why, err)
	}
	return time.Millisecond, nil
}

// pruneBundle drops expired CAs and caps the bundle, never dropping the
// current CA or the one that signed the certificate being served.
func (m *Manager) pruneBundle(st *state, now time.Time) bool {
	var keep []*x509.Certificate
	for _, c := range st.bundle {
		essential := c.Equal(st.ca.cert) || st.serving.cert.CheckSignatureFrom(c) == nil
		if slices.ContainsFunc(keep, c.Equal) {
			continue
		}
		if essential || (now.Before(c.NotAfter) && len(keep) < m.cfg.MaxBundle) {
			keep = append(keep, c)
		}
	}
	changed := len(keep) != len(st.bundle)
	st.bundle = keep
	return changed
}

// syncWebhooks writes the bundle into every webhook of the injector's
// configurations that lacks it, and reports whether all of them trust ca.
func (m *Manager) syncWebhooks(ctx context.Context, bundle []byte, ca *x509.Certificate) (bool, error) {
	trusted := true
	for _, name := range m.cfg.WebhookConfigurations {
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		if err := m.client.Get(ctx, types.NamespacedName{Name: name}, &mwc); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return false, fmt.Errorf("reading MutatingWebhookConfiguration %s: %w", name, err)
		}
		changed := false
		for i := range mwc.Webhooks {
			if !bytes.Equal(mwc.Webhooks[i].ClientConfig.CABundle, bundle) {
				mwc.Webhooks[i].ClientConfig.CABundle = bundle
				changed = true
			}
		}
		if changed {
			if err := m.client.Update(ctx, &mwc); err != nil {
				if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
					trusted = false
					m.poke()
					continue
				}
				return false, fmt.Errorf("updating caBundle of %s: %w", name, err)
			}
			m.metrics.repaired(name)
			m.log.Info("updated caBundle", "webhookConfiguration", name)
		}
		for _, w := range mwc.Webhooks {
			trusted = trusted && bundleContains(w.ClientConfig.CABundle, ca)
		}
	}
	return trusted, nil
}

// writeAndReady writes the serving pair to CertDir when it changed and
// records readiness.
func (m *Manager) writeAndReady(st *state, notReady error) error {
	m.mu.Lock()
	same := bytes.Equal(m.written, st.serving.certPEM)
	m.mu.Unlock()
	if !same {
		if err := writeFileAtomic(filepath.Join(m.cfg.CertDir, KeyTLSKey), st.serving.keyPEM, 0o600); err != nil {
			return err
		}
		if err := writeFileAtomic(filepath.Join(m.cfg.CertDir, KeyTLSCert), st.serving.certPEM, 0o644); err != nil {
			return err
		}
		m.log.Info("serving certificate written", "dir", m.cfg.CertDir, "serving", describe(st.serving.cert))
		m.mu.Lock()
		m.written = st.serving.certPEM
		if !m.filesClosed {
			close(m.filesReady)
			m.filesClosed = true
		}
		m.mu.Unlock()
	}
	m.metrics.expiry(st.serving.cert.NotAfter)
	m.setReady(notReady)
	return nil
}

// writeFileAtomic replaces path so readers see the old or the new content,
// never a partial file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func sameIPs(a, b []net.IP) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}
