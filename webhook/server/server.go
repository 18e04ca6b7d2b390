package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sync/errgroup"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// InjectPath is where the MutatingWebhookConfigurations send pods.
const InjectPath = "/inject"

// MaxRequestBytes is the largest AdmissionReview accepted; larger bodies get
// a 413 error in the review. It matches controller-runtime's limit, well
// above what the API server itself accepts for a pod (3 MiB requests).
const MaxRequestBytes = 7 * 1024 * 1024

// ModernCipherSuites are the TLS 1.2 suites the webhook accepts.
var ModernCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// Options configure Run.
type Options struct {
	Settings *inject.Settings
	// Resolver, when set, chooses the settings per pod (Istio revisions);
	// Settings remain the fallback.
	Resolver Resolver
	OnError  ErrorPolicy

	// Host and Port of the HTTPS webhook listener.
	Host string
	Port int
	// CertDir holds tls.crt and tls.key; they are reloaded when they change.
	CertDir string
	// MetricsAddr serves /metrics over HTTP; "0" disables it.
	MetricsAddr string
	// HealthAddr serves /healthz and /readyz; "0" disables it.
	HealthAddr string
	// DrainDelay is how long the webhook keeps serving after shutdown begins
	// while /readyz already fails, so that the Service stops routing new
	// requests here before the listener closes (default 5s; negative: none).
	DrainDelay time.Duration
	// RequestReadTimeout bounds how long reading one request body may take
	// (slow clients cannot hold a handler forever; default 10s).
	RequestReadTimeout time.Duration
	// DisableHTTP2 serves HTTP/1.1 only. By default the listener offers
	// HTTP/2 as well (ALPN h2), and the API server, whose webhook client
	// prefers it, multiplexes its calls over one TLS connection instead of
	// opening one per concurrent call (docs/webhook.md, "HTTP/2").
	DisableHTTP2 bool
	// ReadyChecks are added to /readyz (e.g. "the API server trusts our
	// certificate" in self-managed certificate mode).
	ReadyChecks map[string]healthz.Checker

	Logger logr.Logger
}

// Server is a configured, not yet started webhook.
type Server struct {
	opts     Options
	draining atomic.Bool
	webhook  webhook.Server
	handler  *Handler
	metrics  metricsserver.Server
	health   *http.Server
	healthL  net.Listener
}

// New validates the options and builds the servers.
func New(o Options) (*Server, error) {
	if o.Settings == nil {
		return nil, errors.New("no injection settings")
	}
	if o.OnError == "" {
		o.OnError = ErrorPolicyDeny
	}
	if o.DrainDelay == 0 {
		o.DrainDelay = 5 * time.Second
	}
	if o.RequestReadTimeout == 0 {
		o.RequestReadTimeout = 10 * time.Second
	}
	if _, err := ParseErrorPolicy(string(o.OnError)); err != nil {
		return nil, err
	}
	if o.Port < 1 || o.Port > 65535 {
		return nil, fmt.Errorf("webhook port %d is not between 1 and 65535", o.Port)
	}
	m, err := NewMetrics(ctrlmetrics.Registry)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: o}
	s.webhook = webhook.NewServer(webhook.Options{
		Host:    o.Host,
		Port:    o.Port,
		CertDir: o.CertDir,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.MinVersion = tls.VersionTLS12
			// TLS 1.2 only with forward-secret AEAD suites; TLS 1.3 suites
			// are not configurable and all modern.
			c.CipherSuites = ModernCipherSuites
			// HTTP/2 unless disabled: the API server's webhook client
			// multiplexes its calls over one connection. net/http's HTTP/2
			// server carries the Rapid Reset mitigation (CVE-2023-44487):
			// at most MaxConcurrentStreams handlers run per connection, and
			// a connection queueing more than four times that many is
			// closed with ENHANCE_YOUR_CALM.
			c.NextProtos = []string{"h2", "http/1.1"}
			if o.DisableHTTP2 {
				c.NextProtos = []string{"http/1.1"}
			}
		}},
	})
	h := NewHandler(o.Settings, o.OnError, m, o.Logger.WithName("inject"))
	if o.Resolver != nil {
		h.WithResolver(o.Resolver)
	}
	h.readTimeout = o.RequestReadTimeout
	h.draining = s.draining.Load
	s.handler = h
	s.webhook.Register(InjectPath, h)

	if o.MetricsAddr != "0" {
		if s.metrics, err = metricsserver.NewServer(metricsserver.Options{BindAddress: o.MetricsAddr}, nil, nil); err != nil {
			return nil, err
		}
	}
	if o.HealthAddr != "0" && o.HealthAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/healthz", http.StripPrefix("/healthz", &healthz.Handler{Checks: map[string]healthz.Checker{"ping": healthz.Ping}}))
		// Ready only once the TLS listener answers, which needs the serving
		// certificate loaded.
		ready := map[string]healthz.Checker{
			"webhook": s.webhook.StartedChecker(),
			"not-draining": func(*http.Request) error {
				if s.draining.Load() {
					return errors.New("shutting down")
				}
				return nil
			},
		}
		for name, c := range o.ReadyChecks {
			ready[name] = c
		}
		mux.Handle("/readyz", http.StripPrefix("/readyz", &healthz.Handler{Checks: ready}))
		s.health = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		if s.healthL, err = net.Listen("tcp", o.HealthAddr); err != nil {
			return nil, fmt.Errorf("health probe listener: %w", err)
		}
	}
	return s, nil
}

// Webhook exposes the HTTPS server, e.g. for tests that register more paths.
func (s *Server) Webhook() webhook.Server { return s.webhook }

// HealthAddr is the bound health probe address (useful with port 0).
func (s *Server) HealthAddr() string {
	if s.healthL == nil {
		return ""
	}
	return s.healthL.Addr().String()
}

// Start serves until ctx is cancelled, then shuts down gracefully: /readyz
// fails at once, the webhook keeps answering for DrainDelay, then stops
// accepting connections and lets in-flight reviews finish.
func (s *Server) Start(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	g.Go(func() error {
		<-ctx.Done()
		s.draining.Store(true)
		if s.opts.DrainDelay > 0 {
			s.opts.Logger.Info("shutting down: not ready, still serving", "for", s.opts.DrainDelay)
			time.Sleep(s.opts.DrainDelay)
		}
		stopServing()
		return nil
	})
	g.Go(func() error {
		err := s.webhook.Start(serveCtx)
		if ctx.Err() == nil && err == nil {
			err = errors.New("webhook server stopped unexpectedly")
		}
		return err
	})
	if s.metrics != nil {
		g.Go(func() error { return s.metrics.Start(ctx) })
	}
	if s.health != nil {
		g.Go(func() error {
			if err := s.health.Serve(s.healthL); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-serveCtx.Done()
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return s.health.Shutdown(shutdownCtx)
		})
	}
	s.opts.Logger.Info("serving", "webhook", fmt.Sprintf("%s:%d%s", s.opts.Host, s.opts.Port, InjectPath),
		"certDir", s.opts.CertDir, "metrics", s.opts.MetricsAddr, "health", s.HealthAddr(),
		"flavor", s.opts.Settings.Flavor(), "istioVersion", s.opts.Settings.IstioVersion().String(), "onError", s.opts.OnError)
	return g.Wait()
}
