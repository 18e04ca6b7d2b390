package main

import (
	"flag"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/sds-injector/sds-injector/webhook/server"
)

// DefaultCertDir is where the deploy manifests mount the serving certificate.
const DefaultCertDir = "/etc/sds-injector/certs"

func newServeCommand() *cobra.Command {
	var ef engineFlags
	var o struct {
		host, certDir, metricsAddr, healthAddr, onError string
		port                                            int
	}
	zapOpts := zap.Options{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the mutating admission webhook",
		Long: `Serves the pod mutating admission webhook over HTTPS at ` + server.InjectPath + `.
The serving certificate (tls.crt, tls.key in --cert-dir) is reloaded when it changes.
Metrics are served on --metrics-bind-address, /healthz and /readyz on
--health-probe-bind-address (ready once the certificate is loaded and the listener answers).
Without --config the built-in defaults apply; set flags override the file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			settings, err := ef.settings(cmd)
			if err != nil {
				return err
			}
			policy, err := server.ParseErrorPolicy(o.onError)
			if err != nil {
				return err
			}
			log := zap.New(zap.UseFlagOptions(&zapOpts), zap.WriteTo(cmd.ErrOrStderr()))
			ctrl.SetLogger(log)
			srv, err := server.New(server.Options{
				Settings:    settings,
				OnError:     policy,
				Host:        o.host,
				Port:        o.port,
				CertDir:     o.certDir,
				MetricsAddr: o.metricsAddr,
				HealthAddr:  o.healthAddr,
				Logger:      log,
			})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return srv.Start(ctx)
		},
	}
	ef.register(cmd)
	fs := cmd.Flags()
	fs.StringVar(&o.host, "host", "", "address the webhook listens on (default all)")
	fs.IntVar(&o.port, "port", 9443, "HTTPS port of the webhook")
	fs.StringVar(&o.certDir, "cert-dir", DefaultCertDir, "directory holding tls.crt and tls.key")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint; 0 disables it")
	fs.StringVar(&o.healthAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz; 0 disables them")
	fs.StringVar(&o.onError, "on-error", string(server.ErrorPolicyDeny),
		"what to do with a pod the engine reports an error for: deny (reject with the reason) or allow (admit unchanged with a warning)")
	goflags := flag.NewFlagSet("zap", flag.ContinueOnError)
	zapOpts.BindFlags(goflags)
	fs.AddGoFlagSet(goflags)
	return cmd
}
