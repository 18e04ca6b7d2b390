// Package chartinstall installs the Helm chart (self-managed certificates)
// onto a real node (package node) with the release images built by
// internal/imagebuild as `make images` builds them. The suites that run
// the chart as pods share it: test/chartnode (the chart works as pods)
// and test/nodeload (the apiserver's view of the webhook under load).
//
// Prepare runs in node.Main's prepare function (outside the network
// namespace: it may build); Install runs inside, on a node started with
// node.Options{Services: true}.
package chartinstall

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sds-injector/sds-injector/internal/imagebuild"
	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/node"
)

const (
	// ImageTag tags the release images the node imports.
	ImageTag = "0.0.0-chartnode"
	// Release and Namespace are the Helm release and its namespace.
	Release   = "sds-injector"
	Namespace = "sds-injector"
	// Selector selects the release's injector pods.
	Selector = "app.kubernetes.io/name=sds-injector,app.kubernetes.io/instance=" + Release
	// Replicas is the chart's default replica count.
	Replicas = 2
)

// Keys of node.Prepared.Values that Prepare sets.
const (
	// ValueHelm is the helm binary.
	ValueHelm = "helm"
	// ValueInjector and ValueAgent are the image references of the release
	// images (repository:ImageTag); with the suffix "-digest", their
	// index digests.
	ValueInjector = "sds-injector"
	ValueAgent    = "sds-agent"
)

// Prepare builds (or finds cached) kube-proxy and kube-scheduler
// (node.BuildExtras) and helm, and writes the release images for this
// machine's platform (internal/imagebuild.BuildRelease, as make images
// does), which the node imports. Call it from node.Main's prepare.
func Prepare(ctx context.Context, p *node.Prepared) error {
	root, err := node.RepoRoot()
	if err != nil {
		return err
	}
	if err := node.BuildExtras(ctx, p); err != nil {
		return err
	}
	if p.Values[ValueHelm], err = controlplane.HelmBinary(ctx); err != nil {
		return fmt.Errorf("building helm: %w", err)
	}
	platform := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	st := imagebuild.Stamp{Version: ImageTag, Revision: "chartnode-test", Created: time.Unix(1, 0).UTC()}
	for _, r := range imagebuild.ReleaseImages {
		idx, err := imagebuild.BuildRelease(ctx, root, filepath.Join(p.Dir, "release"), r, []v1.Platform{platform}, st)
		if err != nil {
			return fmt.Errorf("release image %s: %w", r.Name, err)
		}
		ref := r.Ref("", ImageTag)
		file := p.ArchivePath(ref)
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			return err
		}
		if err := imagebuild.WriteArchive(file, ref, idx); err != nil {
			return err
		}
		digest, err := idx.Digest()
		if err != nil {
			return err
		}
		p.AddArchive(ref, file)
		p.Values[r.Name] = ref
		p.Values[r.Name+"-digest"] = digest.String()
	}
	return nil
}

// NodeOptions are the node the chart needs: node.Options with Services
// (kube-scheduler places the Deployment's pods, kube-proxy gives the
// webhook Service its ClusterIP) and the webhook served on loopback. Pass
// them to node.Start or node.StartMesh inside node.Main.
func NodeOptions() node.Options {
	return node.Options{Services: true, ControlPlane: controlplane.Options{
		WebhookInstallOptions: envtest.WebhookInstallOptions{LocalServingHost: "127.0.0.1"},
	}}
}

// StartNode starts the node the chart needs (NodeOptions, with p's images
// imported). Stop it with its Stop.
func StartNode(ctx context.Context, p *node.Prepared) (*node.Node, error) {
	n, err := node.Start(ctx, p, NodeOptions())
	if err != nil {
		return nil, fmt.Errorf("starting the node: %w", err)
	}
	return n, nil
}

// Options configure Install.
type Options struct {
	// Namespaces are created before the install, besides the release
	// namespace, each with the kube-root-ca.crt ConfigMap.
	Namespaces []string
	// ReadyTimeout bounds the wait for the injector pods (default 3 minutes).
	ReadyTimeout time.Duration
}

// Installed is what Install did.
type Installed struct {
	// Pods are the injector pods as last listed (on failure too).
	Pods []corev1.Pod
	// HelmOutput is helm install's output.
	HelmOutput string
	// Took is the time from the start of helm install until Replicas pods
	// were Ready.
	Took time.Duration
}

// Install creates the release namespace and opts.Namespaces (with the
// kube-root-ca.crt ConfigMap the controller-manager's publisher would
// write), runs helm install of deploy/helm/sds-injector with the release
// images (pull policy Never), config.istio=off and self-managed
// certificates, and waits until Replicas injector pods are Ready. It
// returns what it has on failure too, for the caller's diagnostics.
func Install(ctx context.Context, n *node.Node, p *node.Prepared, opts Options) (*Installed, error) {
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 3 * time.Minute
	}
	root, err := node.RepoRoot()
	if err != nil {
		return nil, err
	}
	cs := n.Clientset
	for _, ns := range append([]string{Namespace}, opts.Namespaces...) {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
		if err := n.PublishRootCA(ctx, ns); err != nil {
			return nil, err
		}
	}
	inj, agent := p.Values[ValueInjector], p.Values[ValueAgent]
	repo := func(ref string) string { r, _, _ := strings.Cut(ref, ":"+ImageTag); return r }
	args := []string{"install", Release, filepath.Join(root, "deploy", "helm", "sds-injector"),
		"--namespace", Namespace, "--kubeconfig", n.CP.KubeconfigPath,
		"--set", "image.repository=" + repo(inj), "--set", "image.tag=" + ImageTag, "--set", "image.pullPolicy=Never",
		"--set", "agentImage.repository=" + repo(agent), "--set", "agentImage.tag=" + ImageTag,
		"--set", "config.imagePullPolicy=Never", "--set", "config.istio=off",
		"--set", "certificates.mode=self-managed"}
	started := time.Now()
	out, err := exec.CommandContext(ctx, p.Values[ValueHelm], args...).CombinedOutput()
	inst := &Installed{HelmOutput: string(out)}
	if err != nil {
		return inst, fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, opts.ReadyTimeout, true, func(ctx context.Context) (bool, error) {
		if got, err := ListPods(ctx, cs); err == nil {
			inst.Pods = got
		}
		r := 0
		for i := range inst.Pods {
			if Ready(&inst.Pods[i]) {
				r++
			}
		}
		return r == Replicas, nil
	})
	if err != nil {
		return inst, fmt.Errorf("the injector pods did not all (%d) become Ready: %w", Replicas, err)
	}
	inst.Took = time.Since(started)
	return inst, nil
}

// ListPods lists the release's injector pods.
func ListPods(ctx context.Context, cs kubernetes.Interface) ([]corev1.Pod, error) {
	pods, err := cs.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: Selector})
	if err != nil {
		return nil, err
	}
	return pods.Items, nil
}

// Ready reports whether p is Ready and not being deleted.
func Ready(p *corev1.Pod) bool { return p.DeletionTimestamp == nil && node.PodReady(p) }

// WaitProxied waits until kube-proxy's nat rules (iptables-save, inside
// the node's namespace) DNAT the webhook Service's ClusterIP to endpoints
// pod endpoints: the API server calls the webhook through the Service (no
// aggregator routing). It returns the ClusterIP.
func WaitProxied(ctx context.Context, cs kubernetes.Interface, endpoints int, timeout time.Duration) (string, error) {
	svc, err := cs.CoreV1().Services(Namespace).Get(ctx, Release, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	var rules int
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		out, err := exec.CommandContext(ctx, "iptables-save", "-t", "nat").CombinedOutput()
		if err != nil {
			return false, fmt.Errorf("iptables-save: %w\n%s", err, out)
		}
		dump := string(out)
		rules = 0
		for _, l := range strings.Split(dump, "\n") {
			if strings.Contains(l, Namespace+"/"+Release+":https-webhook") && strings.Contains(l, "-j KUBE-SEP-") {
				rules++
			}
		}
		return strings.Contains(dump, "-d "+svc.Spec.ClusterIP+"/32") && rules == endpoints, nil
	})
	if err != nil {
		return svc.Spec.ClusterIP, fmt.Errorf("kube-proxy's nat rules lack the webhook Service %s (ClusterIP %s) with %d endpoints (%d found): %w",
			Release, svc.Spec.ClusterIP, endpoints, rules, err)
	}
	return svc.Spec.ClusterIP, nil
}
