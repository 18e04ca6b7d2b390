package integration

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"

	"github.com/sds-injector/sds-injector/test/harness"
)

// The mounts the gateway container gets for each kind of flavor
// (webhook/inject/testdata/inject/*.golden.yaml).
var (
	socketMount = inject.MountRef{Name: "workload-socket", MountPath: "/var/run/secrets/workload-spiffe-uds"}
	filesMount  = inject.MountRef{Name: "istio-certs", MountPath: "/etc/istio-certs"}
)

// gatewayCase is one engine golden input created through the apiserver.
type gatewayCase struct {
	// in names webhook/inject/testdata/inject/<in>.in.yaml.
	in string
	// optIn: the input opts in explicitly (label or annotation), so the
	// case also runs in per-gateway mode.
	optIn bool

	// Injected pods: the profile, the container that must get the mounts
	// and env, the flavor, and the env it must get.
	profile   string
	container string
	flavor    inject.Flavor
	mount     inject.MountRef
	env       map[string]string

	// Skipped pods: the reason the warning names.
	reason inject.Reason

	// warning, when set, are substrings the one sds-injector admission
	// warning must contain; otherwise the pod must get no warning at all.
	warning []string
}

// optInHow is what every opt-in-required warning must tell the user to do.
const optInHow = `set label (or annotation) sds-injector.io/inject: "true" on the pod template`

var gatewayCases = map[string]gatewayCase{
	// Contour, recognised but opt-in only: not injected under the
	// namespace label or cluster-wide, with a warning saying why and how.
	"contour-helm": {
		in: "contour-helm", profile: "contour", reason: inject.ReasonOptInRequired,
		warning: []string{`not injected (opt-in-required): gateway profile "contour" is injected only when the pod opts in explicitly`, "cannot use the mesh identity", optInHow},
	},
	"contour-quickstart": {
		in: "contour-quickstart", profile: "contour-quickstart", reason: inject.ReasonOptInRequired,
		warning: []string{`not injected (opt-in-required): gateway profile "contour-quickstart" is injected only when the pod opts in explicitly`, "cannot use the mesh identity", optInHow},
	},
	"contour-quickstart-other-namespace": {
		in: "contour-quickstart-other-namespace", profile: "contour-quickstart", reason: inject.ReasonOptInRequired,
		warning: []string{`not injected (opt-in-required): gateway profile "contour-quickstart"`, optInHow},
	},
	// An explicit opt-in (label, annotation) injects Contour into its
	// container named envoy, next to shutdown-manager.
	"contour-helm-opt-in": {
		in: "contour-helm-opt-in", optIn: true,
		profile: "contour", container: "envoy", flavor: inject.FlavorIstioProxy, mount: socketMount,
	},
	"contour-quickstart-opt-in": {
		in: "contour-quickstart-opt-in", optIn: true,
		profile: "contour-quickstart", container: "envoy", flavor: inject.FlavorIstioProxy, mount: socketMount,
	},
	// Emissary reads only files: it gets istio-agent-files by default and
	// the env that tells it where they are.
	"emissary": {
		in: "emissary", profile: "emissary-ingress", container: "emissary-ingress",
		flavor: inject.FlavorIstioAgentFiles, mount: filesMount,
		env: map[string]string{inject.EnvEmissaryCertsDir: filesMount.MountPath},
	},
	"emissary-socket-annotation": {
		in: "emissary-socket-annotation", profile: "emissary-ingress", reason: inject.ReasonFlavorUnsupported,
		warning: []string{"not injected (flavor-unsupported)", "can consume only [istio-agent-files]"},
	},
	"kgateway": {
		in: "kgateway", profile: "kgateway", container: "kgateway-proxy", flavor: inject.FlavorIstioProxy, mount: socketMount,
	},
	// No profile, two containers, explicit opt-in: the Envoy image picks
	// the container.
	"opt-in-multi-container": {
		in: "opt-in-multi-container", optIn: true,
		profile: inject.ProfileGeneric, container: "envoy", flavor: inject.FlavorIstioProxy, mount: socketMount,
	},
	"ambient-pod-label": {
		in: "ambient-pod-label", profile: "gloo-edge", reason: inject.ReasonAmbient,
		warning: []string{"not injected (ambient): the gateway is enrolled in Istio ambient (pod label istio.io/dataplane-mode=ambient)", "ztunnel already gives it its mesh identity", "istio.io/dataplane-mode=none"},
	},
	// Ambient cannot capture a host-network gateway: injected, and told so.
	"ambient-host-network": {
		in: "ambient-host-network", profile: "gloo-edge", container: "gateway-proxy", flavor: inject.FlavorSDSAgent, mount: socketMount,
		warning: []string{"the gateway runs on the host network, which Istio ambient cannot capture despite pod label istio.io/dataplane-mode=ambient"},
	},
}

// TestGatewayProfiles creates the engine's golden gateway pods through the
// real apiserver under the shipped webhook configurations: namespace mode
// (enabled namespace), cluster-wide mode (any namespace; its CEL
// matchConditions must let every one of these pods through, or the
// injection and the warnings below could not happen) and, for the pods that
// opt in explicitly, per-gateway mode in a namespace without any label.
func TestGatewayProfiles(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	startWebhook(t, inject.DefaultConfig(), nil)

	modes := []struct {
		mode      Mode
		nsLabels  map[string]string
		optInOnly bool
	}{
		{ModeNamespace, map[string]string{nsLabel: "enabled"}, false},
		{ModeClusterWide, nil, false},
		{ModePerGateway, nil, true},
	}
	for _, m := range modes {
		t.Run(string(m.mode), func(t *testing.T) {
			installMode(t, m.mode)
			ns := namespace(t, m.nsLabels)
			waitWebhookServes(t, ns)

			for _, name := range slices.Sorted(maps.Keys(gatewayCases)) {
				tc := gatewayCases[name]
				if m.optInOnly && !tc.optIn {
					continue
				}
				t.Run(name, func(t *testing.T) {
					in := goldenInput(t, tc.in, ns, name)
					stored, warnings := createWithWarnings(t, in)
					checkWarnings(t, warnings, tc.warning)
					if tc.reason != "" {
						assertUnchanged(t, in, stored)
						return
					}
					checkInjected(t, stored, tc)
				})
			}

			if m.optInOnly {
				return
			}
			t.Run("kubectl shows why Contour was not injected", func(t *testing.T) {
				pod := goldenInput(t, "contour-helm", ns, "contour-kubectl")
				stderr := kubectlApply(t, pod)
				for _, want := range []string{
					`Warning: sds-injector: not injected (opt-in-required): gateway profile "contour" is injected only when the pod opts in explicitly`,
					optInHow,
				} {
					if !strings.Contains(stderr, want) {
						t.Errorf("kubectl stderr lacks %q:\n%s", want, stderr)
					}
				}
				stored, err := getPod(context.Background(), ns, pod.Name)
				if err != nil {
					t.Fatal(err)
				}
				assertUnchanged(t, pod, stored)
			})
		})
	}
}

// goldenInput reads an engine golden input pod and moves it to namespace
// ns under a new name, creating the ServiceAccount it names.
func goldenInput(t *testing.T, in, ns, name string) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "webhook", "inject", "testdata", "inject", in+".in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatalf("%s: %v", in, err)
	}
	pod.Namespace, pod.Name = ns, name
	if sa := pod.Spec.ServiceAccountName; sa != "" {
		err := cp.Client.Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: ns}})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	return &pod
}

// warningRecorder collects the apiserver's Warning headers, where admission
// webhook warnings arrive (kubectl prints the same headers).
type warningRecorder struct {
	mu    sync.Mutex
	texts []string
}

func (w *warningRecorder) HandleWarningHeader(code int, _, text string) {
	if code != 299 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.texts = append(w.texts, text)
}

// createWithWarnings creates the pod through the apiserver and returns the
// pod as stored and the admission warnings the create returned.
func createWithWarnings(t *testing.T, pod *corev1.Pod) (*corev1.Pod, []string) {
	t.Helper()
	rec := &warningRecorder{}
	cfg := rest.CopyConfig(cp.Config)
	cfg.WarningHandler = rec
	cfg.WarningHandlerWithContext = nil
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods(pod.Namespace).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	stored, err := getPod(context.Background(), pod.Namespace, pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return stored, slices.Clone(rec.texts)
}

// checkWarnings: with want empty, no sds-injector warning; otherwise
// exactly one, containing every substring of want.
func checkWarnings(t *testing.T, got, want []string) {
	t.Helper()
	var ours []string
	for _, w := range got {
		if strings.HasPrefix(w, "sds-injector: ") {
			ours = append(ours, w)
		}
	}
	if len(want) == 0 {
		if len(ours) != 0 {
			t.Errorf("unexpected warnings: %q", ours)
		}
		return
	}
	if len(ours) != 1 {
		t.Fatalf("want one sds-injector warning, got %q (all warnings %q)", ours, got)
	}
	for _, s := range want {
		if !strings.Contains(ours[0], s) {
			t.Errorf("warning lacks %q:\n%s", s, ours[0])
		}
	}
}

// assertUnchanged: the stored pod has no status and exactly the input's
// containers, init containers and volumes.
func assertUnchanged(t *testing.T, in, stored *corev1.Pod) {
	t.Helper()
	if st := injectedStatus(t, stored); st != nil {
		t.Fatalf("pod was injected: %+v", st)
	}
	if got, want := containerNames(stored), containerNames(in); !slices.Equal(got, want) {
		t.Errorf("containers %v, want the input's %v", got, want)
	}
	if len(stored.Spec.Volumes) != len(in.Spec.Volumes) {
		t.Errorf("%d volumes, the input has %d", len(stored.Spec.Volumes), len(in.Spec.Volumes))
	}
}

// checkInjected checks the stored pod's status and that the mounts and env
// went to the expected container and to no other gateway container.
func checkInjected(t *testing.T, pod *corev1.Pod, tc gatewayCase) {
	t.Helper()
	st := assertInjected(t, pod)
	if st.GatewayProfile != tc.profile || st.GatewayContainer != tc.container || st.Flavor != tc.flavor {
		t.Errorf("status profile %q container %q flavor %q, want %q %q %q", st.GatewayProfile, st.GatewayContainer, st.Flavor, tc.profile, tc.container, tc.flavor)
	}
	if !slices.Contains(st.GatewayMounts, tc.mount) {
		t.Errorf("status gatewayMounts %v lack %v", st.GatewayMounts, tc.mount)
	}
	if !slices.Equal(st.GatewayEnv, slices.Sorted(maps.Keys(tc.env))) {
		t.Errorf("status gatewayEnv %v, want %v", st.GatewayEnv, slices.Sorted(maps.Keys(tc.env)))
	}
	if !slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == tc.mount.Name }) {
		t.Errorf("pod has no volume %s", tc.mount.Name)
	}
	found := false
	for _, c := range pod.Spec.Containers {
		if slices.Contains(st.Containers, c.Name) {
			continue // the agent
		}
		mounted := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
			return m.Name == tc.mount.Name && m.MountPath == tc.mount.MountPath
		})
		if c.Name != tc.container {
			if mounted {
				t.Errorf("container %s, not the gateway's, got the mount %v", c.Name, tc.mount)
			}
			continue
		}
		found = true
		if !mounted {
			t.Errorf("gateway container %s lacks the mount %v: %v", c.Name, tc.mount, c.VolumeMounts)
		}
		for k, v := range tc.env {
			i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == k })
			if i < 0 || c.Env[i].Value != v {
				t.Errorf("gateway container %s: env %s missing or not %q: %v", c.Name, k, v, c.Env)
			}
		}
	}
	if !found {
		t.Errorf("no container %s in the stored pod: %v", tc.container, containerNames(pod))
	}
}

// waitWebhookServes waits until the apiserver calls sds-injector for pods in
// ns under the configuration just installed: a dry-run explicit opt-in
// comes back injected.
func waitWebhookServes(t *testing.T, ns string) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, "the webhook configuration to take effect", func(ctx context.Context) (bool, error) {
		pod := goldenInput(t, "opt-in-multi-container", ns, "probe")
		if err := cp.Client.Create(ctx, pod, client.DryRunAll); err != nil {
			return false, err
		}
		return pod.Annotations[inject.AnnotationStatus] != "", nil
	})
}
