package check

import (
	"context"
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/istio"
)

// Options say where the injector is installed and how to read its
// configuration.
type Options struct {
	// Namespace of the injector.
	Namespace string
	// ConfigMap (key config.yaml) holding the configuration, unless
	// ConfigFile is set.
	ConfigMap  string
	ConfigFile string
	// CertSecret holds the serving certificate when the webhook
	// configuration names no cert-manager Certificate.
	CertSecret            string
	WebhookConfigurations []string
	// MinValidity: the serving certificate fails when it expires sooner.
	MinValidity time.Duration
	// Dial is a host:port at which to fetch the certificate a webhook pod
	// presents.
	Dial           string
	IstioNamespace string
	// BuildConfig turns the configuration's data (nil: none found) into
	// the configuration, as serve builds it (flags, agent image pin); nil
	// uses inject.LoadConfig alone.
	BuildConfig func(data []byte, source string) (inject.LoadedConfig, error)
	// Now is the time certificates are checked at; zero: time.Now().
	Now time.Time
}

// Env is the state the checks share: the API client and what earlier
// checks found (configuration, webhook configurations, namespaces, the
// discovered Istio).
type Env struct {
	opts *Options
	c    client.Client
	now  time.Time

	cfg      inject.Config
	set      inject.Presence
	settings *inject.Settings
	mwcs     []*admissionregistrationv1.MutatingWebhookConfiguration
	ns       map[string]*corev1.Namespace
	match    *Matcher
	rsOwner  map[types.NamespacedName]string
	// podNamespaces are the namespaces with injected (or to-be-injected)
	// gateways, found by gateway-pods for istio-root-cert.
	podNamespaces map[string]bool

	// snap is the installed Istio (istio: auto), loaded once by istioSnapshot.
	snap    *istio.Snapshot
	snapErr error
	snapOK  bool
}

// NewEnv prepares a run against the cluster of c.
func NewEnv(c client.Client, opts Options) *Env {
	if opts.BuildConfig == nil {
		opts.BuildConfig = func(data []byte, source string) (inject.LoadedConfig, error) {
			l, err := inject.LoadConfig(data)
			if err != nil {
				return l, fmt.Errorf("%s: %w", source, err)
			}
			for i, w := range l.Warnings {
				l.Warnings[i] = source + ": " + w
			}
			return l, nil
		}
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	return &Env{opts: &opts, c: c, now: now}
}

// Run runs every check (All) against the cluster of c.
func Run(ctx context.Context, c client.Client, opts Options) *Report {
	return RunChecks(ctx, All(), NewEnv(c, opts))
}
