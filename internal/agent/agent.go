package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/sds-injector/sds-injector/internal/agent/ca"
	"github.com/sds-injector/sds-injector/internal/agent/sds"
)

// Agent obtains, rotates and serves one workload certificate.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	store *sds.Store
	sds   *sds.Server
	now   func() time.Time

	listening atomic.Bool
	// Set once the listeners are up; tests read the addresses.
	addrsMu     sync.Mutex
	tcpAddr     net.Addr
	metricsAddr net.Addr
	started     chan struct{}

	// Rotation state, owned by the rotation goroutine except where noted.
	mu        sync.Mutex // guards fileRoots, caRoot, identity
	fileRoots []byte     // PEM from RootCertPath
	caRoot    []byte     // PEM of the root in the last CA response
	identity  string

	renewals    atomic.Uint64
	rootReloads atomic.Uint64
	caErrMu     sync.Mutex
	caErrors    map[string]uint64
}

// New returns an agent for cfg, which must be valid.
func New(cfg Config, log *slog.Logger) *Agent {
	store := sds.NewStore()
	return &Agent{
		cfg:      cfg,
		log:      log,
		store:    store,
		sds:      sds.NewServer(store, log),
		now:      time.Now,
		started:  make(chan struct{}),
		caErrors: map[string]uint64{},
	}
}

// Ready reports whether the agent holds a valid certificate and its socket
// is listening: what `sds-agent probe` checks from outside.
func (a *Agent) Ready() bool {
	_, ok := a.store.Certificate()
	return ok && a.listening.Load()
}

// Started is closed once the listeners are up.
func (a *Agent) Started() <-chan struct{} { return a.started }

// TCPAddr is the loopback SDS listener's address, if any (after Started).
func (a *Agent) TCPAddr() net.Addr {
	a.addrsMu.Lock()
	defer a.addrsMu.Unlock()
	return a.tcpAddr
}

// MetricsAddr is the metrics listener's address, if any (after Started).
func (a *Agent) MetricsAddr() net.Addr {
	a.addrsMu.Lock()
	defer a.addrsMu.Unlock()
	return a.metricsAddr
}

// Run serves until ctx is cancelled, then drains: it keeps serving (and
// renewing) until the gateway's SDS streams have closed or DrainTimeout has
// passed, and stops.
func (a *Agent) Run(ctx context.Context) error {
	c := a.cfg
	dir := filepath.Dir(c.SocketPath)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	mode, err := sds.SocketMode(c.SocketMode, dir)
	if err != nil {
		return err
	}
	ul, err := sds.ListenUnix(c.SocketPath, mode)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", c.SocketPath, err)
	}
	g := grpc.NewServer()
	a.sds.Register(g)
	serveErr := make(chan error, 3)
	go func() { serveErr <- g.Serve(ul) }()
	a.log.Info("serving SDS", "socket", c.SocketPath, "mode", fmt.Sprintf("%04o", mode),
		"resources", []string{sds.Default, sds.RootCA, sds.GlooCertificate, sds.GlooValidationContext})

	var tcpL, metricsL net.Listener
	if c.TCPAddr != "" {
		if tcpL, err = sds.ListenLoopback(c.TCPAddr); err != nil {
			g.Stop()
			return fmt.Errorf("SDS TCP listener: %w", err)
		}
		go func() { serveErr <- g.Serve(tcpL) }()
		a.log.Warn("also serving SDS on loopback TCP, readable by every process in the pod's network namespace", "addr", tcpL.Addr().String())
	}
	var hs *http.Server
	if c.MetricsAddr != "" {
		if metricsL, err = net.Listen("tcp", c.MetricsAddr); err != nil {
			g.Stop()
			return fmt.Errorf("metrics listener: %w", err)
		}
		hs = &http.Server{Handler: a.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := hs.Serve(metricsL); !errors.Is(err, http.ErrServerClosed) {
				serveErr <- err
			}
		}()
		a.log.Info("serving metrics", "addr", metricsL.Addr().String())
	}
	a.addrsMu.Lock()
	if tcpL != nil {
		a.tcpAddr = tcpL.Addr()
	}
	if metricsL != nil {
		a.metricsAddr = metricsL.Addr()
	}
	a.addrsMu.Unlock()
	a.listening.Store(true)
	close(a.started)

	// Rotation outlives ctx: while draining, the gateway must keep getting
	// a valid certificate.
	rotCtx, stopRotation := context.WithCancel(context.Background())
	rotDone := make(chan struct{})
	go func() { defer close(rotDone); a.rotate(rotCtx) }()

	var runErr error
	select {
	case <-ctx.Done():
		a.drain()
	case runErr = <-serveErr:
		a.log.Error("a listener failed", "error", runErr)
	}

	a.listening.Store(false)
	stopRotation()
	<-rotDone
	a.sds.CloseStreams()
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		g.Stop()
	}
	if hs != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = hs.Shutdown(sctx)
		cancel()
	}
	a.store.Close()
	a.log.Info("stopped")
	return runErr
}

// drain waits until no gateway stream is open, at most DrainTimeout.
func (a *Agent) drain() {
	n := a.sds.Streams()
	if n == 0 || a.cfg.DrainTimeout == 0 {
		a.log.Info("shutting down", "open_streams", n)
		return
	}
	a.log.Info("draining: serving until the gateway's SDS streams close", "open_streams", n, "timeout", a.cfg.DrainTimeout)
	changed := make(chan struct{}, 1)
	a.sds.OnStreamsChange(func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	deadline := time.NewTimer(a.cfg.DrainTimeout)
	defer deadline.Stop()
	for a.sds.Streams() > 0 {
		select {
		case <-changed:
		case <-deadline.C:
			a.log.Warn("drain timeout; closing the remaining SDS streams", "open_streams", a.sds.Streams())
			return
		}
	}
	a.log.Info("all SDS streams closed; shutting down")
}

// rotate owns the CA client: it loads the root certificate, obtains a
// certificate, and renews it at RenewFraction of its lifetime, retrying with
// backoff on errors. A root certificate change rebuilds the CA connection,
// republishes the trust bundle and renews.
func (a *Agent) rotate(ctx context.Context) {
	roots := make(chan rootUpdate, 1)
	go a.watchRoots(ctx, roots)

	var client *ca.Client
	defer func() {
		if client != nil {
			_ = client.Close()
		}
	}()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	failures := 0
	renew := func() {
		if client == nil {
			return // no root certificate yet; the watcher will call back
		}
		next, err := a.renew(ctx, client)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			delay := a.backoff(failures)
			attrs := []any{"error", err, "attempt", failures, "retry_in", delay.Round(time.Millisecond)}
			if cert, ok := a.store.Certificate(); ok {
				attrs = append(attrs, "serving_until", cert.NotAfter.Format(time.RFC3339))
			} else {
				attrs = append(attrs, "serving", "nothing (not ready)")
			}
			a.log.Warn("certificate request failed", attrs...)
			timer.Reset(delay)
			return
		}
		failures = 0
		timer.Reset(next)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-roots:
			nc, err := ca.NewClient(ca.Options{Addr: a.cfg.CAAddr, ServerName: a.cfg.CAServerName, Roots: u.pool, ClusterID: a.cfg.ClusterID})
			if err != nil {
				a.log.Error("cannot set up the CA client", "error", err)
				continue
			}
			if client != nil {
				_ = client.Close()
			}
			client = nc
			a.mu.Lock()
			a.fileRoots = u.pem
			a.mu.Unlock()
			a.store.SetRoots(a.trustBundle())
			failures = 0
			timer.Stop()
			renew()
		case <-timer.C:
			renew()
		}
	}
}

// backoff is the delay before retry number n (from 1): exponential from
// BackoffInitial up to BackoffMax, with the upper half randomised so that
// many pods do not retry in step.
func (a *Agent) backoff(n int) time.Duration {
	d := a.cfg.BackoffInitial
	for i := 1; i < n && d < a.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, a.cfg.BackoffMax)
	return d/2 + rand.N(d/2+1)
}

// renew obtains a new certificate, publishes it and returns the delay until
// the next renewal.
func (a *Agent) renew(ctx context.Context, client *ca.Client) (time.Duration, error) {
	token, err := ca.ReadToken(a.cfg.TokenPath)
	if err != nil {
		a.countCAError("token_unreadable")
		return 0, err
	}
	claims, claimsErr := ca.ParseToken(token)
	if claimsErr == nil && !claims.Expiry.IsZero() && !a.now().Before(claims.Expiry) {
		a.log.Warn("the token has expired; sending it anyway (the kubelet normally refreshes it well before)",
			"path", a.cfg.TokenPath, "expired", claims.Expiry.Format(time.RFC3339))
	}
	id, err := a.workloadID(claims, claimsErr)
	if err != nil {
		a.countCAError("no_identity")
		return 0, err
	}
	key, keyPEM, err := ca.NewKey(a.cfg.KeyAlgorithm)
	if err != nil {
		return 0, err
	}
	csr, err := ca.NewCSR(key, id)
	if err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, a.cfg.CATimeout)
	start := a.now()
	chain, err := client.Sign(cctx, csr, a.cfg.CertTTL, token)
	cancel()
	if err != nil {
		a.countCAError(status.Code(err).String())
		return 0, fmt.Errorf("CA %s: %w", a.cfg.CAAddr, err)
	}
	received := a.now()
	issued, err := ca.ParseChain(chain, key)
	if err != nil {
		a.countCAError("invalid_response")
		return 0, err
	}
	if !slices.ContainsFunc(issued.Leaf.URIs, func(u *url.URL) bool { return u.String() == id }) {
		a.log.Warn("the CA issued a different identity than requested (istiod takes it from the token)",
			"requested", id, "issued", uriStrings(issued.Leaf.URIs))
	}
	if !received.Before(issued.NotAfter) {
		a.countCAError("expired_response")
		return 0, fmt.Errorf("the CA issued a certificate that expired at %s", issued.NotAfter.Format(time.RFC3339))
	}

	a.mu.Lock()
	a.caRoot = issued.RootPEM
	a.mu.Unlock()
	a.renewals.Add(1)
	a.store.Update(&sds.Certificate{ChainPEM: issued.ChainPEM, KeyPEM: keyPEM, NotAfter: issued.NotAfter}, a.trustBundle())

	// The lifetime counts from when we received the certificate: istiod
	// backdates NotBefore (clock skew) and a fraction of that span could
	// already be over.
	from := received
	if issued.Leaf.NotBefore.After(from) {
		from = issued.Leaf.NotBefore
	}
	lifetime := issued.NotAfter.Sub(from)
	next := time.Duration(float64(lifetime) * (a.cfg.RenewFraction - a.cfg.RenewJitter*rand.Float64()))
	next = max(next, 100*time.Millisecond)
	a.log.Info("certificate issued", "identity", uriStrings(issued.Leaf.URIs), "serial", issued.Leaf.SerialNumber.Text(16),
		"not_after", issued.NotAfter.Format(time.RFC3339), "renew_in", next.Round(time.Second), "ca_latency", received.Sub(start).Round(time.Millisecond))
	return next, nil
}

// workloadID is the SPIFFE ID to request: from POD_NAMESPACE and
// SERVICE_ACCOUNT, else from the token's claims.
func (a *Agent) workloadID(claims ca.TokenClaims, claimsErr error) (string, error) {
	ns, sa := a.cfg.Namespace, a.cfg.ServiceAccount
	if ns == "" || sa == "" {
		if claimsErr != nil {
			return "", fmt.Errorf("POD_NAMESPACE/SERVICE_ACCOUNT unset and the token is unreadable: %w", claimsErr)
		}
		if ns == "" {
			ns = claims.Namespace
		}
		if sa == "" {
			sa = claims.ServiceAccount
		}
		if ns == "" || sa == "" {
			return "", errors.New("POD_NAMESPACE/SERVICE_ACCOUNT unset and the token names no service account")
		}
	}
	id := ca.SpiffeID(a.cfg.TrustDomain, ns, sa)
	a.mu.Lock()
	changed := a.identity != id
	a.identity = id
	a.mu.Unlock()
	if changed {
		a.log.Info("workload identity", "id", id, "pod", a.cfg.PodName)
	}
	return id, nil
}

// trustBundle is what ROOTCA serves: the roots from the root certificate
// file and the root of the last CA response, without duplicates.
func (a *Agent) trustBundle() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out bytes.Buffer
	seen := map[string]bool{}
	for _, src := range [][]byte{a.fileRoots, a.caRoot} {
		for rest := src; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type != "CERTIFICATE" || seen[string(b.Bytes)] {
				continue
			}
			seen[string(b.Bytes)] = true
			_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes})
		}
	}
	return out.Bytes()
}

type rootUpdate struct {
	pem  []byte
	pool *x509.CertPool // nil: system roots
}

// watchRoots sends the root certificate file's content when first read and
// whenever it changes (the kubelet swaps ConfigMap volume content
// atomically, so reading the whole file is enough to see a consistent
// version). With no RootCertPath it sends one update for the system roots.
func (a *Agent) watchRoots(ctx context.Context, out chan<- rootUpdate) {
	path := a.cfg.RootCertPath
	if path == "" {
		a.log.Info("no ROOT_CERT_PATH: verifying the CA with the system roots")
		out <- rootUpdate{}
		return
	}
	var last []byte
	loaded := false
	failures := 0
	check := func() {
		b, err := os.ReadFile(path)
		if err == nil && bytes.Equal(b, last) {
			return
		}
		var certs []*x509.Certificate
		if err == nil {
			certs, err = ca.ParsePEMCerts(b)
		}
		if err != nil {
			failures++
			if failures == 1 || failures%30 == 0 {
				a.log.Error("cannot use the root certificate; keeping the previous one", "path", path, "error", err, "loaded", loaded)
			}
			return
		}
		failures = 0
		pool := x509.NewCertPool()
		for _, c := range certs {
			pool.AddCert(c)
		}
		if loaded {
			a.rootReloads.Add(1)
			a.log.Info("root certificate changed; reconnecting to the CA and renewing", "path", path, "certificates", len(certs))
		} else {
			a.log.Info("root certificate loaded", "path", path, "certificates", len(certs))
		}
		last, loaded = b, true
		select {
		case out <- rootUpdate{pem: b, pool: pool}:
		case <-ctx.Done():
		}
	}
	check()
	for {
		interval := a.cfg.WatchInterval
		if !loaded {
			interval = min(interval, time.Second)
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
			check()
		}
	}
}

func (a *Agent) countCAError(reason string) {
	a.caErrMu.Lock()
	a.caErrors[reason]++
	a.caErrMu.Unlock()
}

func uriStrings(us []*url.URL) []string {
	out := make([]string, len(us))
	for i, u := range us {
		out[i] = u.String()
	}
	return out
}
