package main

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
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
func (f *istioFlags) offlineDiscovery(cmd *cobra.Command, l inject.LoadedConfig) (*offlineResolver, error) {
	if !l.Config.Istio.Auto() {
		return nil, nil
	}
	if f.kubeconfig == "" {
		fmt.Fprintln(cmd.ErrOrStderr(), "note: config istio: auto needs a cluster; offline, the configuration and built-in defaults apply (pass --kubeconfig to discover the installed Istio)")
		return nil, nil
	}
	rc, err := restConfig(f.kubeconfig, "")
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
	snap, err := istio.Load(cmd.Context(), c, istio.Input{Config: l.Config, Explicit: l.Set, Namespace: f.namespace})
	if err != nil {
		return nil, fmt.Errorf("istio: auto: %w", err)
	}
	for _, name := range snap.Names() {
		fmt.Fprintln(cmd.ErrOrStderr(), "istio revision", snap.Revisions[name].Describe())
	}
	return &offlineResolver{snap: snap, ns: map[string]map[string]string{}, c: c}, nil
}

// discovery prepares the webhook's Istio discovery (serve).
func (f *istioFlags) discovery(kubeconfig string, l inject.LoadedConfig, log logr.Logger) (*istio.Discovery, error) {
	rc, err := restConfig(kubeconfig, "")
	if err != nil {
		return nil, fmt.Errorf("istio: auto needs API access: %w", err)
	}
	return istio.New(rc, istio.Options{
		Config:            l.Config,
		Explicit:          l.Set,
		Namespace:         f.namespace,
		StaleScanInterval: f.staleScan,
		Registerer:        ctrlmetrics.Registry,
		Logger:            log.WithName("istio"),
	})
}
