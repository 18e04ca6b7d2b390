package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sds-injector/sds-injector/test/controlplane"
)

// Services (Options.Services) make the node a small cluster that runs
// ordinary workloads: kube-scheduler places Deployment pods, kube-proxy
// (iptables mode) gives Service ClusterIPs their meaning inside the
// namespace, and pods reach the API server as in-cluster clients do,
// through the kubernetes Service.
const (
	// ServiceCIDR is envtest's --service-cluster-ip-range; KubernetesServiceIP
	// is the kubernetes Service's ClusterIP in it.
	ServiceCIDR         = "10.0.0.0/24"
	KubernetesServiceIP = "10.0.0.1"
	// ExtrasScript builds kube-proxy and kube-scheduler (cached).
	ExtrasScript = "test/node/build-node-extras.sh"
)

// servicesControllers are the kube-controller-manager controllers a
// cluster with Services, Deployments and PodDisruptionBudgets needs on top
// of controlplane.ControllerManagerControllers (node-lifecycle-controller
// lifts the not-ready taint the kubelet registers the node with, so that
// the scheduler can place pods).
var servicesControllers = []string{"endpointslice-controller", "endpoints-controller", "disruption-controller", "node-lifecycle-controller"}

// BuildExtras builds (or finds in the cache) kube-proxy, kube-scheduler and
// a version-stamped kube-apiserver of the node's Kubernetes release with
// ExtrasScript and records their directory in p.ExtrasBinDir; p.KubeBinDir
// becomes a directory of links to the node's binaries with that
// kube-apiserver (which reports v1.37.2, not v0.0.0-master: Helm checks a
// chart's kubeVersion against it). Call it from the prepare function of
// Main (outside the namespace: it may need the module proxy).
func BuildExtras(ctx context.Context, p *Prepared) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, ExtrasScript))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s: %w", ExtrasScript, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	p.ExtrasBinDir = strings.TrimSpace(lines[len(lines)-1])
	for _, b := range []string{"kube-proxy", "kube-scheduler", controlplane.APIServerBinary} {
		if _, err := os.Stat(filepath.Join(p.ExtrasBinDir, b)); err != nil {
			return fmt.Errorf("%s printed %s, which lacks %s", ExtrasScript, p.ExtrasBinDir, b)
		}
	}
	merged := filepath.Join(p.Dir, "kube-bin")
	if err := os.MkdirAll(merged, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(p.KubeBinDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		src := filepath.Join(p.KubeBinDir, e.Name())
		if e.Name() == controlplane.APIServerBinary {
			src = filepath.Join(p.ExtrasBinDir, e.Name())
		}
		if err := os.Symlink(src, filepath.Join(merged, e.Name())); err != nil {
			return err
		}
	}
	p.KubeBinDir = merged
	return nil
}

// serviceCerts writes a CA and a serving certificate for the API server's
// in-cluster addresses (the kubernetes Service's ClusterIP and the node IP
// its endpoint names). The API server serves it (--tls-sni-cert-key, chosen
// by the local address of a connection without SNI, as in-cluster clients
// dialling an IP make) beside envtest's own certificate for 127.0.0.1.
func (n *Node) serviceCerts() (certFile, keyFile string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sds-injector test node in-cluster CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP(KubernetesServiceIP), net.ParseIP(NodeIP)},
		DNSNames:    []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	n.ServiceCA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certFile, keyFile = filepath.Join(n.dir, "in-cluster.crt"), filepath.Join(n.dir, "in-cluster.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// servicesAPIServerArgs are the API server flags of a node with Services:
// listen on the node IP too (the kubernetes Service's endpoint), serve the
// in-cluster certificate there, and run the ServiceAccount admission plugin
// (envtest disables it) so that pods get their API token as in a cluster.
func (n *Node) servicesAPIServerArgs(args map[string][]string) error {
	cert, key, err := n.serviceCerts()
	if err != nil {
		return fmt.Errorf("in-cluster serving certificate: %w", err)
	}
	args["bind-address"] = []string{"0.0.0.0"}
	args["tls-sni-cert-key"] = []string{cert + "," + key + ":" + NodeIP}
	// Replaces envtest's ServiceAccount; this one is never needed here.
	args["disable-admission-plugins"] = []string{"DefaultIngressClass"}
	for _, c := range servicesControllers {
		if !slices.Contains(controlplane.ControllerManagerControllers, c) {
			controlplane.ControllerManagerControllers = append(controlplane.ControllerManagerControllers, c)
		}
	}
	// Locally made connections to a ClusterIP need a route before
	// kube-proxy's OUTPUT rules rewrite them; the route stays on the node
	// link (a dummy: nothing answers there but what kube-proxy rewrites).
	if out, err := exec.Command("ip", "route", "add", ServiceCIDR, "dev", nodeLink).CombinedOutput(); err != nil && !strings.Contains(string(out), "File exists") {
		return fmt.Errorf("ip route add %s dev %s: %w: %s", ServiceCIDR, nodeLink, err, out)
	}
	return nil
}

// PublishRootCA writes the ConfigMap kube-root-ca.crt (what pods' API
// token volumes carry as ca.crt) in namespace ns with the in-cluster CA.
// The controller-manager's root-ca publisher is not run: it would publish
// envtest's CA, which signed only the certificate for 127.0.0.1.
func (n *Node) PublishRootCA(ctx context.Context, ns string) error {
	if n.ServiceCA == nil {
		return fmt.Errorf("the node runs without Services (Options.Services)")
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt", Namespace: ns},
		Data: map[string]string{"ca.crt": string(n.ServiceCA)}}
	_, err := n.Clientset.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = n.Clientset.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
	}
	return err
}

// startServices starts kube-scheduler and kube-proxy (iptables mode) and
// waits until both report healthy.
func (n *Node) startServices(ctx context.Context, timeout time.Duration) error {
	if n.p.ExtrasBinDir == "" {
		return fmt.Errorf("Options.Services needs kube-proxy and kube-scheduler: call node.BuildExtras in prepare")
	}
	schedPort, err := n.freePort()
	if err != nil {
		return err
	}
	sched, err := n.start("kube-scheduler", []string{filepath.Join(n.p.ExtrasBinDir, "kube-scheduler"),
		"--kubeconfig=" + n.CP.KubeconfigPath, "--authentication-kubeconfig=" + n.CP.KubeconfigPath,
		"--authorization-kubeconfig=" + n.CP.KubeconfigPath, "--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(schedPort),
		"--cert-dir=" + filepath.Join(n.dir, "kube-scheduler"), "--v=1"}, nil)
	if err != nil {
		return err
	}
	insecure := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		// Loopback health check of the scheduler's self-signed endpoint.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // loopback health check
	if err := n.waitFor(ctx, timeout, "kube-scheduler to be healthy", sched, healthy(insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", schedPort))); err != nil {
		return err
	}
	healthPort, err := n.freePort()
	if err != nil {
		return err
	}
	metricsPort, err := n.freePort()
	if err != nil {
		return err
	}
	kp, err := n.start("kube-proxy", []string{filepath.Join(n.p.ExtrasBinDir, "kube-proxy"),
		"--kubeconfig=" + n.CP.KubeconfigPath, "--hostname-override=" + n.Name, "--proxy-mode=iptables",
		"--cluster-cidr=" + podSubnet,
		// Leave the host's conntrack sysctls (not per namespace) alone.
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--healthz-bind-address=127.0.0.1:" + strconv.Itoa(healthPort), "--metrics-bind-address=127.0.0.1:" + strconv.Itoa(metricsPort),
		"--v=2"}, nil)
	if err != nil {
		return err
	}
	return n.waitFor(ctx, timeout, "kube-proxy to be healthy (first iptables sync)", kp,
		healthy(&http.Client{Timeout: 2 * time.Second}, fmt.Sprintf("http://127.0.0.1:%d/healthz", healthPort)))
}

func healthy(c *http.Client, url string) func(context.Context) (bool, error) {
	return func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	}
}
