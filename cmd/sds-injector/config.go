package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// The configuration is built one way by every command (serve, check,
// inject, uninject): the file (or check's ConfigMap) over the built-in
// defaults, then the set flags, then this release's agent image where the
// user chose none. Discovery (istio: auto) fills, per revision, only what
// LoadedConfig.Set leaves unset.

// engineFlags are the configuration knobs shared by every command that runs
// the engine; set flags override the --config file.
type engineFlags struct {
	configFile    string
	flavor        string
	istioVersion  string
	nativeSidecar bool
	agentImage    string
	caAddress     string
	clusterID     string
	trustDomain   string
}

func (f *engineFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.configFile, "config", "", "configuration file (YAML); built-in defaults when omitted")
	fs.StringVar(&f.flavor, "flavor", "", "agent flavor: istio-proxy, istio-agent-files or sds-agent")
	fs.StringVar(&f.istioVersion, "istio-version", "", "Istio version, e.g. 1.30.0 (selects the agent contract and image tag)")
	fs.BoolVar(&f.nativeSidecar, "native-sidecar", false, "place the agent as a native sidecar (initContainers, restartPolicy: Always)")
	fs.StringVar(&f.agentImage, "agent-image", "", "image of the Istio agent (default <hub>/proxyv2:<istio-version>)")
	fs.StringVar(&f.caAddress, "ca-address", "", "istiod CA address host:port (CA_ADDR)")
	fs.StringVar(&f.clusterID, "cluster-id", "", "Istio cluster ID (ISTIO_META_CLUSTER_ID)")
	fs.StringVar(&f.trustDomain, "trust-domain", "", "mesh trust domain")
}

// config reads --config (none: the built-in defaults) and applies the
// flags; see build.
func (f *engineFlags) config(cmd *cobra.Command) (inject.LoadedConfig, error) {
	if f.configFile == "" {
		return f.build(cmd, nil, "")
	}
	data, err := os.ReadFile(f.configFile)
	if err != nil {
		return inject.LoadedConfig{}, err
	}
	return f.build(cmd, data, f.configFile)
}

// build reads data (empty: the built-in defaults; source names it in
// errors), applies the set flags over it and pins the agent image. The
// result records every field set by the file or a flag.
func (f *engineFlags) build(cmd *cobra.Command, data []byte, source string) (inject.LoadedConfig, error) {
	l, err := inject.LoadConfig(data)
	if err != nil {
		return l, fmt.Errorf("%s: %w", source, err)
	}
	for i, w := range l.Warnings {
		l.Warnings[i] = source + ": " + w
	}
	f.apply(cmd, &l)
	pinAgentImage(&l.Config, l.Set)
	return l, nil
}

// apply sets the fields of the flags that were given, and records them.
func (f *engineFlags) apply(cmd *cobra.Command, l *inject.LoadedConfig) {
	fs := cmd.Flags()
	str := func(name string, dst *string, v string, set *bool) {
		if fs.Changed(name) {
			*dst, *set = v, true
		}
	}
	if fs.Changed("flavor") {
		l.Config.Flavor, l.Set.Flavor = inject.Flavor(f.flavor), true
	}
	str("istio-version", &l.Config.IstioVersion, f.istioVersion, &l.Set.IstioVersion)
	str("agent-image", &l.Config.AgentImage, f.agentImage, &l.Set.AgentImage)
	str("ca-address", &l.Config.CAAddress, f.caAddress, &l.Set.CAAddress)
	str("cluster-id", &l.Config.ClusterID, f.clusterID, &l.Set.ClusterID)
	str("trust-domain", &l.Config.TrustDomain, f.trustDomain, &l.Set.TrustDomain)
	if fs.Changed("native-sidecar") {
		l.Config.NativeSidecar, l.Set.NativeSidecar = f.nativeSidecar, true
	}
}

// restConfig is every command's API access, through client-go's loading
// rules: --kubeconfig, else $KUBECONFIG, else ~/.kube/config, else (when
// none exists) the in-cluster service account; context "" is the current
// context.
func restConfig(kubeconfig, context string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return cfg, nil
}
