package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/sds-injector/sds-injector/certs"
	"github.com/sds-injector/sds-injector/webhook/server"
)

// DefaultCertDir is where the deploy manifests mount the serving certificate.
const DefaultCertDir = "/etc/sds-injector/certs"

// Certificate modes of `serve`.
const (
	// CertModeFiles serves tls.crt/tls.key from --cert-dir as provisioned by
	// someone else (cert-manager, a mounted Secret), reloading on change.
	CertModeFiles = "files"
	// CertModeSelfManaged makes the injector create, rotate and publish its
	// own CA and serving certificate (package certs).
	CertModeSelfManaged = "self-managed"
)

// DefaultWebhookConfigurations are the shipped configuration names.
var DefaultWebhookConfigurations = []string{"sds-injector-namespace", "sds-injector-per-gateway", "sds-injector-cluster-wide"}

type serveOptions struct {
	host, certDir, metricsAddr, healthAddr, onError string
	port                                            int
	http2                                           bool

	certMode, namespace, secretName, serviceName, kubeconfig string
	webhookConfigs                                           []string
	extraSANs                                                []string
	propagationDelay, certResync                             time.Duration
}

func newServeCommand() *cobra.Command {
	var ef engineFlags
	var o serveOptions
	var isf istioFlags
	zapOpts := zap.Options{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the mutating admission webhook",
		Long: `Serves the pod mutating admission webhook over HTTPS at ` + server.InjectPath + `.

Certificates (--cert-mode):
  files         tls.crt and tls.key in --cert-dir come from cert-manager or a mounted Secret;
                they are reloaded when they change.
  self-managed  the injector keeps a CA and serving certificate in the Secret --cert-secret
                in --namespace, writes them to --cert-dir, and keeps the caBundle of the
                --webhook-configurations in step (rotation with CA overlap, repair of
                overwritten caBundles). Needs API access (in-cluster or --kubeconfig).

Metrics are served on --metrics-bind-address, /healthz and /readyz on
--health-probe-bind-address (ready once the certificate is loaded and, in self-managed
mode, trusted by every webhook configuration). Without --config the built-in defaults
apply; set flags override the file.

With "istio: auto" in the configuration the injector follows the installed Istio
(--istio-namespace): each revision's image, CA address, trust domain, cluster and mesh ID,
chosen per pod by istio.io/rev or sds-injector.io/istio-revision (docs/discovery.md).
Fields set in the file or by flags still win. Needs API access (in-cluster or --kubeconfig).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := ef.config(cmd)
			if err != nil {
				return err
			}
			cfg := l.Config
			settings, err := cfg.Resolve()
			if err != nil {
				return err
			}
			policy, err := server.ParseErrorPolicy(o.onError)
			if err != nil {
				return err
			}
			log := zap.New(zap.UseFlagOptions(&zapOpts), zap.WriteTo(cmd.ErrOrStderr()))
			crlog.SetLogger(log)
			setMemoryLimit(log, memlimit.FromCgroup)
			for _, w := range l.Warnings {
				log.Info("configuration: " + w)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()

			opts := server.Options{
				Settings:     settings,
				OnError:      policy,
				Host:         o.host,
				Port:         o.port,
				CertDir:      o.certDir,
				MetricsAddr:  o.metricsAddr,
				HealthAddr:   o.healthAddr,
				DisableHTTP2: !o.http2,
				Logger:       log,
			}
			opts.ReadyChecks = map[string]healthz.Checker{}
			g, ctx := errgroup.WithContext(ctx)
			if cfg.Istio.Auto() {
				// Readiness never depends on Istio: without API access
				// the configuration alone applies (logged).
				if d, err := isf.discovery(o.kubeconfig, l, log); err != nil {
					log.Error(err, "istio: auto: Istio discovery is off; injecting with the configuration and built-in defaults")
				} else {
					opts.Resolver = d
					opts.ReadyChecks["istio-discovery"] = d.ReadyCheck
					g.Go(func() error { return d.Start(ctx) })
				}
			}
			switch o.certMode {
			case CertModeFiles:
			case CertModeSelfManaged:
				mgr, err := o.certManager(settings.ClusterDomain())
				if err != nil {
					return err
				}
				opts.ReadyChecks["certificates"] = func(*http.Request) error { return mgr.Ready() }
				g.Go(func() error { return mgr.Start(ctx) })
				// The webhook server needs the files to exist when it starts.
				select {
				case <-mgr.FilesReady():
				case <-ctx.Done():
					return g.Wait()
				}
			default:
				return fmt.Errorf("--cert-mode %q: use %q or %q", o.certMode, CertModeFiles, CertModeSelfManaged)
			}
			srv, err := server.New(opts)
			if err != nil {
				return err
			}
			g.Go(func() error { return srv.Start(ctx) })
			return g.Wait()
		},
	}
	ef.register(cmd)
	isf.register(cmd, true, false)
	fs := cmd.Flags()
	fs.StringVar(&o.host, "host", "", "address the webhook listens on (default all)")
	fs.IntVar(&o.port, "port", 9443, "HTTPS port of the webhook")
	fs.BoolVar(&o.http2, "http2", true, "offer HTTP/2 on the webhook port (the API server then multiplexes its calls over one TLS connection); false: HTTP/1.1 only")
	fs.StringVar(&o.certDir, "cert-dir", DefaultCertDir, "directory holding tls.crt and tls.key")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint; 0 disables it")
	fs.StringVar(&o.healthAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz; 0 disables them")
	fs.StringVar(&o.onError, "on-error", string(server.ErrorPolicyDeny),
		"what to do with a pod the engine reports an error for: deny (reject with the reason) or allow (admit unchanged with a warning)")
	fs.StringVar(&o.certMode, "cert-mode", CertModeFiles, "serving certificates: files (cert-manager or a mounted Secret) or self-managed")
	fs.StringVar(&o.namespace, "namespace", envOr("POD_NAMESPACE", "sds-injector"), "namespace of the injector (self-managed mode keeps its Secret there)")
	fs.StringVar(&o.secretName, "cert-secret", "sds-injector-tls", "Secret holding the self-managed CA and serving certificate")
	fs.StringVar(&o.serviceName, "service-name", "sds-injector", "Service the API server calls; its DNS names go into the serving certificate")
	fs.StringSliceVar(&o.extraSANs, "extra-san", nil, "additional DNS names or IPs for the self-managed serving certificate")
	fs.StringSliceVar(&o.webhookConfigs, "webhook-configurations", DefaultWebhookConfigurations, "MutatingWebhookConfigurations whose caBundle self-managed mode maintains")
	fs.DurationVar(&o.propagationDelay, "ca-propagation-delay", 30*time.Second, "self-managed: how long a new CA is trusted before a certificate it signed is served")
	fs.DurationVar(&o.certResync, "cert-resync", 30*time.Second, "self-managed: reconcile interval on top of watches")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for self-managed mode and istio: auto (default: in-cluster or $KUBECONFIG)")
	goflags := flag.NewFlagSet("zap", flag.ContinueOnError)
	zapOpts.BindFlags(goflags)
	fs.AddGoFlagSet(goflags)
	return cmd
}

func (o *serveOptions) certManager(clusterDomain string) (*certs.Manager, error) {
	cfg, err := restConfig(o.kubeconfig, "")
	if err != nil {
		return nil, fmt.Errorf("self-managed certificates need API access: %w", err)
	}
	c, err := client.NewWithWatch(cfg, client.Options{})
	if err != nil {
		return nil, err
	}
	m, err := certs.NewMetrics(ctrlmetrics.Registry)
	if err != nil {
		return nil, err
	}
	cc := certs.Config{
		Namespace:             o.namespace,
		SecretName:            o.secretName,
		DNSNames:              certs.ServiceDNSNames(o.serviceName, o.namespace, clusterDomain),
		WebhookConfigurations: o.webhookConfigs,
		CertDir:               o.certDir,
		PropagationDelay:      o.propagationDelay,
		Resync:                o.certResync,
	}
	for _, san := range o.extraSANs {
		if ip := net.ParseIP(san); ip != nil {
			cc.IPs = append(cc.IPs, ip)
		} else if san = strings.TrimSpace(san); san != "" {
			cc.DNSNames = append(cc.DNSNames, san)
		}
	}
	return certs.New(c, cc, crlog.Log.WithName("certs"), m)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
