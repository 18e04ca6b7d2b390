//go:build !nocheck

package main

import (
	"context"
	"fmt"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/internal/check"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// `sds-injector check`: flags only; the checks are internal/check.

type checkOptions struct {
	kubeconfig, context string
	namespace           string
	configMap           string
	certSecret          string
	webhookConfigs      []string
	output              string
	minValidity         time.Duration
	dial                string
	timeout             time.Duration
	ef                  engineFlags
	istio               istioFlags
}

func newCheckCommand() *cobra.Command {
	o := checkOptions{}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check a live installation: webhook, certificates, endpoints, istiod, gateways",
		Long: "Runs preflight and health checks against the cluster of the current kubeconfig context:\n\n" +
			check.Describe() + `
The serving certificate is read from the Secret the pods serve it from (the cert-manager Certificate
named by cert-manager.io/inject-ca-from, else --cert-secret), because a Service's address is usually not
reachable from outside the cluster. --dial verifies the certificate a running pod really presents, e.g.
through "kubectl -n sds-injector port-forward svc/sds-injector 9443:443" and --dial 127.0.0.1:9443.
Webhooks configured with a URL are always dialled.

Exit status: 0 when every check passes (warnings allowed), 2 when a check fails, 1 when check itself
could not run.`,
		Example: `  sds-injector check
  sds-injector check -o json
  sds-injector check --namespace sds-injector --dial 127.0.0.1:9443`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.output != "text" && o.output != "json" {
				return fmt.Errorf("--output %q: use text or json", o.output)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			c, host, err := o.client()
			if err != nil {
				return err
			}
			r := check.Run(ctx, c, o.options(cmd))
			r.Cluster = host
			if err := check.Write(cmd.OutOrStdout(), r, o.output); err != nil {
				return err
			}
			if !r.OK {
				return &partialError{fmt.Sprintf("%d check(s) failed", r.Summary[string(check.StatusFail)])}
			}
			return nil
		},
	}
	o.ef.register(cmd)
	o.istio.register(cmd, false, false)
	fs := cmd.Flags()
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&o.context, "context", "", "kubeconfig context (default the current context)")
	fs.StringVarP(&o.namespace, "namespace", "n", "sds-injector", "namespace of the injector")
	fs.StringVar(&o.configMap, "config-map", "sds-injector", "ConfigMap (key config.yaml) holding the injector's configuration; --config reads a file instead")
	fs.StringVar(&o.certSecret, "cert-secret", "sds-injector-tls", "Secret holding the serving certificate when the webhook configuration does not name a cert-manager Certificate")
	fs.StringSliceVar(&o.webhookConfigs, "webhook-configurations", DefaultWebhookConfigurations, "MutatingWebhookConfigurations of the injector (missing ones are reported as not installed)")
	fs.StringVarP(&o.output, "output", "o", "text", "output format: text or json")
	fs.DurationVar(&o.minValidity, "min-validity", 7*24*time.Hour, "fail when the serving certificate expires sooner than this (renewal normally happens 30 days before expiry)")
	fs.StringVar(&o.dial, "dial", "", "host:port at which to fetch the certificate a webhook pod presents (e.g. a kubectl port-forward)")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "overall time limit")
	return cmd
}

func (o *checkOptions) client() (client.Client, string, error) {
	cfg, err := restConfig(o.kubeconfig, o.context)
	if err != nil {
		return nil, "", err
	}
	cfg.QPS, cfg.Burst = 50, 100
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, "", err
	}
	if err := cmapi.AddToScheme(scheme); err != nil {
		return nil, "", err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, "", err
	}
	return c, cfg.Host, nil
}

// options are the library's options from the flags; the configuration is
// built as serve builds it (file or ConfigMap, then flags, then the agent
// image pin).
func (o *checkOptions) options(cmd *cobra.Command) check.Options {
	return check.Options{
		Namespace:             o.namespace,
		ConfigMap:             o.configMap,
		ConfigFile:            o.ef.configFile,
		CertSecret:            o.certSecret,
		WebhookConfigurations: o.webhookConfigs,
		MinValidity:           o.minValidity,
		Dial:                  o.dial,
		IstioNamespace:        o.istio.namespace,
		BuildConfig: func(data []byte, source string) (inject.LoadedConfig, error) {
			return o.ef.build(cmd, data, source)
		},
	}
}
