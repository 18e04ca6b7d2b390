package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/istio"
)

// istioFlags configure discovery of the installed Istio (config istio: auto).
type istioFlags struct {
	namespace    string
	staleScan    time.Duration
	withStale    bool
	kubeconfig   string
	ownKubconfig bool
}

// register adds --istio-namespace (and, for serve, the stale scan
// interval; for inject, --kubeconfig).
func (f *istioFlags) register(cmd *cobra.Command, serve, kubeconfig bool) {
	fs := cmd.Flags()
	fs.StringVar(&f.namespace, "istio-namespace", istio.DefaultIstioNamespace, "namespace of the Istio control plane (config istio: auto)")
	if serve {
		f.withStale = true
		fs.DurationVar(&f.staleScan, "stale-agent-scan-interval", 5*time.Minute,
			"istio: auto: how often injected pods are compared with the installed Istio revisions (metric sds_injector_stale_agents); 0 disables it")
	}
	if kubeconfig {
		f.ownKubconfig = true
		fs.StringVar(&f.kubeconfig, "kubeconfig", "", "with config istio: auto, discover the installed Istio from this cluster (offline, without it, the configuration and built-in defaults apply)")
	}
}

// flagFields maps engine flags to the configuration fields they set.
var flagFields = map[string]string{
	"flavor":         "flavor",
	"istio-version":  "istioVersion",
	"agent-image":    "agentImage",
	"ca-address":     "caAddress",
	"cluster-id":     "clusterID",
	"trust-domain":   "trustDomain",
	"native-sidecar": "nativeSidecar",
}

// config reads --config over the defaults, applies the set flags and
// returns the fields the user set explicitly (file or flag), which
// discovered Istio values never override.
func (f *engineFlags) config(cmd *cobra.Command) (inject.Config, map[string]bool, error) {
	cfg := inject.DefaultConfig()
	explicit := map[string]bool{}
	if f.configFile != "" {
		data, err := os.ReadFile(f.configFile)
		if err != nil {
			return cfg, nil, err
		}
		if cfg, err = inject.ParseConfig(data); err != nil {
			return cfg, nil, fmt.Errorf("%s: %w", f.configFile, err)
		}
		if explicit, err = istio.ExplicitFields(data); err != nil {
			return cfg, nil, fmt.Errorf("%s: %w", f.configFile, err)
		}
	}
	f.override(cmd, &cfg)
	for flag, field := range flagFields {
		if cmd.Flags().Changed(flag) {
			explicit[field] = true
		}
	}
	pinAgentImage(&cfg, explicit)
	return cfg, explicit, nil
}

// restConfig is the API access of serve and check: --kubeconfig, else
// in-cluster or $KUBECONFIG.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return ctrl.GetConfig()
}

// offlineResolver resolves revisions for `inject --kubeconfig` from a
// one-shot snapshot.
type offlineResolver struct {
	snap *istio.Snapshot
	ns   map[string]map[string]string
	c    client.Reader
}

func (r *offlineResolver) resolve(ctx context.Context, pod *corev1.Pod) (*inject.Settings, string, *inject.IstioInjection, map[string]string) {
	labels, ok := r.ns[pod.Namespace]
	if !ok {
		var ns corev1.Namespace
		if err := r.c.Get(ctx, client.ObjectKey{Name: pod.Namespace}, &ns); err == nil {
			labels = ns.Labels
		}
		r.ns[pod.Namespace] = labels
	}
	sel := r.snap.Resolve(pod, labels)
	return sel.Settings, sel.Problem, r.snap.IstioInjection(pod, labels), labels
}

// offlineDiscovery loads the installed Istio for `inject`, or returns nil
// when discovery does not apply (istio is not auto, or no --kubeconfig).
func (f *istioFlags) offlineDiscovery(cmd *cobra.Command, cfg inject.Config, explicit map[string]bool) (*offlineResolver, error) {
	if !cfg.Istio.Auto() {
		return nil, nil
	}
	if f.kubeconfig == "" {
		fmt.Fprintln(cmd.ErrOrStderr(), "note: config istio: auto needs a cluster; offline, the configuration and built-in defaults apply (pass --kubeconfig to discover the installed Istio)")
		return nil, nil
	}
	rc, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	snap, err := istio.Load(cmd.Context(), c, istio.Input{Config: cfg, Explicit: explicit, Namespace: f.namespace})
	if err != nil {
		return nil, fmt.Errorf("istio: auto: %w", err)
	}
	for _, name := range snap.Names() {
		fmt.Fprintln(cmd.ErrOrStderr(), "istio revision", snap.Revisions[name].Describe())
	}
	return &offlineResolver{snap: snap, ns: map[string]map[string]string{}, c: c}, nil
}

// discovery prepares the webhook's Istio discovery (serve).
func (f *istioFlags) discovery(kubeconfig string, cfg inject.Config, explicit map[string]bool, log logr.Logger) (*istio.Discovery, error) {
	rc, err := restConfig(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("istio: auto needs API access: %w", err)
	}
	return istio.New(rc, istio.Options{
		Config:            cfg,
		Explicit:          explicit,
		Namespace:         f.namespace,
		StaleScanInterval: f.staleScan,
		Registerer:        ctrlmetrics.Registry,
		Logger:            log.WithName("istio"),
	})
}
