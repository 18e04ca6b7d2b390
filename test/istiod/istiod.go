// Package istiod runs a real istiod (Istio's pilot-discovery) against the
// local control plane of package controlplane, for tests that need
// certificates issued by Istio's own CA.
//
// The binaries are built from the istio.io/istio Go module by build-istio.sh
// (next to this file) and cached outside the repository, like the control
// plane binaries: the first run on a machine takes about 10 minutes on two
// cores, later runs start istiod in a few seconds.
//
// Every listener istiod opens is on loopback, on a free port. Certificates
// are requested at CAAddr, which is "localhost:<port>": istiod runs with
// ISTIOD_CUSTOM_HOST=localhost so its serving certificate carries the DNS
// SAN "localhost" (it has no IP SANs, so "127.0.0.1:<port>" would fail
// verification).
//
// Run at most one istiod per revision on a control plane: two of the same
// revision would fight over the leader-election locks. istiods of different
// revisions (Options.Revision) share the istio-ca-secret, as in a real
// canary install.
//
// # Released Istio versions
//
// The module proxy serves no Istio release. test/istio-releases/run.sh
// builds one from an unpacked release tree and points this package at it
// with three environment variables: ISTIO_BIN (the release's binaries),
// ISTIO_SOURCE_DIR (the unpacked tree: CRDs, the Envoy bootstrap template)
// and ISTIO_RELEASE (its version, e.g. 1.14.6). Start then adapts istiod's
// configuration to what that release needs on a current apiserver and
// lists each adaptation in Istiod.Notes.
package istiod

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/harness"
)

// DefaultModuleVersion is the istio.io/istio module version built and run by
// default. It is a master snapshot of the 1.31 development line (its
// VERSION file says 1.31): the Go module proxy serves no tagged release of
// istio.io/istio to this project (1.30.0 resolves to a pseudo-version whose
// zip the proxy refuses with "403 This module version is not available").
const DefaultModuleVersion = "v0.0.0-20260827124520-eed52ebb66ad"

// Binary names in the directory build-istio.sh returns.
const (
	DiscoveryBinary = "pilot-discovery"
	AgentBinary     = "pilot-agent"
)

// Names of objects istiod creates that tests commonly read.
const (
	// RootCertConfigMap is the ConfigMap istiod publishes its root
	// certificate into, in every namespace, under the key RootCertKey.
	RootCertConfigMap = "istio-ca-root-cert"
	RootCertKey       = "root-cert.pem"
)

const buildScript = "build-istio.sh"

// Environment variables that select a released Istio (see the package
// documentation).
const (
	EnvBinaryDir = "ISTIO_BIN"
	EnvSourceDir = "ISTIO_SOURCE_DIR"
	EnvRelease   = "ISTIO_RELEASE"
)

// ReleaseUnderTest is the released Istio version the environment selects
// (ISTIO_RELEASE), or "" for the module snapshot.
func ReleaseUnderTest() string { return strings.TrimSpace(os.Getenv(EnvRelease)) }

// Options configure Start. The zero value runs DefaultModuleVersion in
// istio-system with Istio's defaults.
type Options struct {
	// ModuleVersion is the istio.io/istio module version to build and run
	// (default DefaultModuleVersion).
	ModuleVersion string
	// Namespace is istiod's namespace (default istio-system).
	Namespace string
	// TrustDomain is the mesh trust domain (default cluster.local).
	TrustDomain string
	// ClusterID is istiod's cluster ID (default Kubernetes).
	ClusterID string
	// TokenAudiences are the audiences istiod accepts on workload tokens
	// (default istio-ca).
	TokenAudiences []string
	// Revision is istiod's revision (default: none, i.e. "default"). It
	// reads ConfigMap istio-sidecar-injector-<revision> for injection and
	// patches the caBundle of webhook configurations labelled
	// istio.io/rev=<revision>.
	Revision string
	// ExtraEnv is added to istiod's environment (NAME=value).
	ExtraEnv []string
	// StartTimeout bounds the wait for istiod's readiness and its root
	// certificate (default 3 minutes: istiod competes for CPU with
	// everything else on small CI machines).
	StartTimeout time.Duration
}

// Istiod is a running istiod. Use Start to get one and Stop to end it.
type Istiod struct {
	// CAAddr is the secure gRPC address for CSRs and xDS, "localhost:<port>"
	// (CA_ADDR and the discovery address of agents).
	CAAddr string
	// HTTPAddr serves /ready and the debug endpoints (plain HTTP).
	HTTPAddr string
	// MonitoringAddr serves /metrics.
	MonitoringAddr string
	// WebhookAddr serves sidecar injection (/inject) and validation over
	// HTTPS, "localhost:<port>" (the serving certificate's SAN).
	WebhookAddr string
	// RootCertPEM is the CA root istiod published in RootCertConfigMap.
	RootCertPEM []byte
	// Namespace, TrustDomain and ClusterID are istiod's settings.
	Namespace, TrustDomain, ClusterID string
	// ModuleVersion is the istio.io/istio version running; Release is its
	// VERSION file (e.g. "1.31"), so "1.31-dev" for a master snapshot.
	ModuleVersion, Release string
	// BinaryDir holds pilot-discovery and pilot-agent of ModuleVersion.
	BinaryDir string
	// ModuleDir is the module's source in the module cache (CRDs, the Envoy
	// bootstrap template and other files the proxyv2 image ships).
	ModuleDir string
	// LogPath is istiod's combined output (removed by Stop).
	LogPath string
	// Notes lists how istiod's setup differs from the default for the
	// release under test (empty for the module snapshot).
	Notes []string
	// StartDuration is the time from exec to /ready.
	StartDuration time.Duration

	cp   *controlplane.ControlPlane
	q    quirks
	dir  string
	proc *harness.Process
	// releasePorts frees the running process's reserved ports.
	releasePorts func()
	stopOnce     sync.Once
	stopErr      error
}

// BinaryDir returns a directory holding pilot-discovery and pilot-agent of
// moduleVersion (default DefaultModuleVersion), building them with
// build-istio.sh if they are not cached yet. ISTIO_BIN, if set to a
// directory holding both, is used instead. Concurrent callers, in this or
// other processes, wait for a single build.
func BinaryDir(ctx context.Context, moduleVersion string) (string, error) {
	if moduleVersion == "" {
		moduleVersion = DefaultModuleVersion
	}
	if dir := os.Getenv(EnvBinaryDir); dir != "" {
		if isExecutable(filepath.Join(dir, DiscoveryBinary)) && isExecutable(filepath.Join(dir, AgentBinary)) {
			return dir, nil
		}
		if ReleaseUnderTest() != "" {
			return "", fmt.Errorf("%s=%s lacks %s or %s of Istio %s (test/istio-releases/run.sh builds them)", EnvBinaryDir, dir, DiscoveryBinary, AgentBinary, ReleaseUnderTest())
		}
		fmt.Fprintf(os.Stderr, "istiod: ISTIO_BIN=%s lacks %s or %s; using %s instead\n", dir, DiscoveryBinary, AgentBinary, buildScript)
	}
	if ReleaseUnderTest() != "" {
		return "", fmt.Errorf("%s=%s needs %s pointing at that release's binaries", EnvRelease, ReleaseUnderTest(), EnvBinaryDir)
	}
	script, err := findScript()
	if err != nil {
		return "", err
	}
	dir, err := controlplane.RunBuildScript(ctx, script, nil, []string{"ISTIO_MODULE_VERSION=" + moduleVersion}, os.Stderr)
	if err != nil {
		return "", err
	}
	if !isExecutable(filepath.Join(dir, DiscoveryBinary)) || !isExecutable(filepath.Join(dir, AgentBinary)) {
		return "", fmt.Errorf("%s returned %q, which lacks %s or %s", script, dir, DiscoveryBinary, AgentBinary)
	}
	return dir, nil
}

// ModuleDir returns the source directory of istio.io/istio@moduleVersion in
// the module cache, downloading it through the Go module proxy if needed.
// ISTIO_SOURCE_DIR, if set, is returned instead (a release tree).
func ModuleDir(ctx context.Context, moduleVersion string) (string, error) {
	if dir := os.Getenv(EnvSourceDir); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
			return "", fmt.Errorf("%s=%s is not an Istio source tree: %w", EnvSourceDir, dir, err)
		}
		return dir, nil
	}
	if ReleaseUnderTest() != "" {
		return "", fmt.Errorf("%s=%s needs %s pointing at that release's unpacked source", EnvRelease, ReleaseUnderTest(), EnvSourceDir)
	}
	if moduleVersion == "" {
		moduleVersion = DefaultModuleVersion
	}
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", "istio.io/istio@"+moduleVersion)
	// Outside any module, so the project's go.mod is neither read nor changed.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GO111MODULE=on")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download istio.io/istio@%s: %w\n%s", moduleVersion, err, stderr.String())
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("go mod download istio.io/istio@%s: %w", moduleVersion, err)
	}
	if info.Error != "" || info.Dir == "" {
		return "", fmt.Errorf("go mod download istio.io/istio@%s: %s", moduleVersion, info.Error)
	}
	return info.Dir, nil
}

// Start installs Istio's CRDs into cp, creates the namespace and starts
// istiod. It returns once istiod is ready and has published its root
// certificate. Stop ends it.
func Start(ctx context.Context, cp *controlplane.ControlPlane, opts Options) (_ *Istiod, retErr error) {
	if cp == nil || cp.Config == nil {
		return nil, errors.New("istiod: no control plane")
	}
	if opts.ModuleVersion == "" {
		opts.ModuleVersion = DefaultModuleVersion
	}
	if opts.Namespace == "" {
		opts.Namespace = "istio-system"
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	if opts.ClusterID == "" {
		opts.ClusterID = "Kubernetes"
	}
	if len(opts.TokenAudiences) == 0 {
		opts.TokenAudiences = []string{"istio-ca"}
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 3 * time.Minute
	}

	binDir, err := BinaryDir(ctx, opts.ModuleVersion)
	if err != nil {
		return nil, err
	}
	modDir, err := ModuleDir(ctx, opts.ModuleVersion)
	if err != nil {
		return nil, err
	}
	release := "unknown"
	if b, err := os.ReadFile(filepath.Join(modDir, "VERSION")); err == nil {
		release = strings.TrimSpace(string(b))
	}
	if r := ReleaseUnderTest(); r != "" {
		release = r
	}
	q, err := quirksFor(release)
	if err != nil {
		return nil, err
	}

	// Istio's CRDs: istiod watches them; without them it logs errors and
	// some informers never sync.
	crds, err := crdFile(modDir)
	if err != nil {
		return nil, err
	}
	if q.convertCRDs {
		if crds, err = convertCRDs(crds); err != nil {
			return nil, err
		}
		defer os.Remove(crds)
	}
	if _, err := envtest.InstallCRDs(cp.Config, envtest.CRDInstallOptions{Paths: []string{crds}, ErrorIfPathMissing: true}); err != nil {
		return nil, fmt.Errorf("installing Istio CRDs from %s: %w", crds, err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: opts.Namespace}}
	if err := cp.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating namespace %s: %w", opts.Namespace, err)
	}

	dir, err := os.MkdirTemp("", "sds-injector-istiod-")
	if err != nil {
		return nil, err
	}
	i := &Istiod{
		Namespace: opts.Namespace, TrustDomain: opts.TrustDomain, ClusterID: opts.ClusterID,
		ModuleVersion: opts.ModuleVersion, Release: release, BinaryDir: binDir, ModuleDir: modDir,
		cp: cp, dir: dir, LogPath: filepath.Join(dir, "istiod.log"), Notes: q.notes,
	}
	defer func() {
		if retErr != nil {
			if tail := i.LogTail(60); tail != "" {
				retErr = fmt.Errorf("%w\nistiod log (tail):\n%s", retErr, tail)
			}
			_ = i.Stop()
		}
	}()
	mesh := fmt.Sprintf("trustDomain: %s\nrootNamespace: %s\n", opts.TrustDomain, opts.Namespace) + q.mesh
	if err := os.MkdirAll(filepath.Join(dir, "etc", "istio", "config"), 0o755); err != nil {
		return nil, err
	}
	meshFile := filepath.Join(dir, "etc", "istio", "config", "mesh")
	if err := os.WriteFile(meshFile, []byte(mesh), 0o644); err != nil {
		return nil, err
	}
	if q.ownToken {
		if err := i.writeOwnToken(ctx, opts); err != nil {
			return nil, err
		}
	}
	i.q = q

	// Free ports can be taken by someone else between probing and istiod's
	// bind; retry with new ones when that happens.
	var startErr error
	for attempt := 0; attempt < 3; attempt++ {
		startErr = i.start(ctx, opts, meshFile)
		if startErr == nil || !errors.Is(startErr, errAddrInUse) {
			break
		}
	}
	if startErr != nil {
		return nil, startErr
	}

	waitCtx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	root, err := i.RootCert(waitCtx, opts.Namespace)
	if err != nil {
		return nil, err
	}
	i.RootCertPEM = root
	return i, nil
}

var errAddrInUse = errors.New("address already in use")

func revisionOr(rev string) string {
	if rev == "" {
		return "default"
	}
	return rev
}

// start execs pilot-discovery on fresh free ports and waits for /ready.
func (i *Istiod) start(ctx context.Context, opts Options, meshFile string) error {
	ports, release, err := harness.ReservePorts("127.0.0.1", 7)
	if err != nil {
		return err
	}
	i.releasePorts = release
	httpPort, grpcPort, secureGRPCPort, httpsPort, monitoringPort, ctrlzPort := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]
	i.CAAddr = net.JoinHostPort("localhost", strconv.Itoa(secureGRPCPort))
	if i.q.istiodAddrCA {
		// The CA and secure xDS listen on ISTIOD_ADDR's port (on every
		// interface: istiod 1.5 takes only the port from it). Its DNS
		// certificate is for ISTIOD_ADDR's host, which must look like
		// <service>.<namespace>[...]: "localhost" is refused.
		// The 1.5 agent trusts istiod's root (istio-ca-root-cert) only
		// for a CA_ADDR on port 15012, so the port is fixed: this needs
		// a private network namespace, which run.sh provides.
		host := "istiod." + opts.Namespace + ".svc"
		if err := resolvesToLoopback(host); err != nil {
			return fmt.Errorf("istiod %s serves its CA only under a service name: %w (test/istio-releases/run.sh maps it to 127.0.0.1 in a private /etc/hosts)", i.Release, err)
		}
		i.CAAddr = net.JoinHostPort(host, "15012")
	}
	i.HTTPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
	i.MonitoringAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(monitoringPort))
	i.WebhookAddr = net.JoinHostPort("localhost", strconv.Itoa(httpsPort))

	loopback := func(p int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) }
	args := []string{"discovery",
		"--kubeconfig=" + i.cp.KubeconfigPath,
		"--meshConfig=" + meshFile,
		"--domain=cluster.local",
		"--clusterID=" + opts.ClusterID,
		"--httpAddr=" + loopback(httpPort),
		"--grpcAddr=" + loopback(grpcPort),
		"--secureGRPCAddr=" + loopback(secureGRPCPort),
		"--httpsAddr=" + loopback(httpsPort),
		"--monitoringAddr=" + loopback(monitoringPort),
		"--ctrlz_address=127.0.0.1",
		"--ctrlz_port=" + strconv.Itoa(ctrlzPort),
		"--log_output_level=default:info",
	}
	if i.q.oldFlags {
		// istiod 1.5 spells the flag --secureGrpcAddr and has no --clusterID
		// (CLUSTER_ID in the environment remains).
		var kept []string
		for _, a := range args {
			switch {
			case strings.HasPrefix(a, "--clusterID="):
			case strings.HasPrefix(a, "--secureGRPCAddr="):
				kept = append(kept, "--secureGrpcAddr="+strings.TrimPrefix(a, "--secureGRPCAddr="))
			default:
				kept = append(kept, a)
			}
		}
		args = kept
	}
	cmd := exec.Command(filepath.Join(i.BinaryDir, DiscoveryBinary), args...)
	cmd.Dir = i.dir
	// A clean environment: nothing of the test process (KUBERNETES_*,
	// proxies, a developer's ISTIO_* settings) leaks into istiod.
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + i.dir,
		"KUBECONFIG=" + i.cp.KubeconfigPath,
		"POD_NAMESPACE=" + opts.Namespace,
		"POD_NAME=istiod-local-" + revisionOr(opts.Revision),
		"REVISION=" + revisionOr(opts.Revision),
		"CLUSTER_ID=" + opts.ClusterID,
		"JWT_POLICY=third-party-jwt",
		"TOKEN_AUDIENCES=" + strings.Join(opts.TokenAudiences, ","),
		"ISTIOD_CUSTOM_HOST=localhost",
		"PILOT_CERT_PROVIDER=istiod",
	}, opts.ExtraEnv...)
	if i.q.istiodAddrCA {
		cmd.Env = append(cmd.Env, "ISTIOD_ADDR="+i.CAAddr)
	}
	started := time.Now()
	proc, err := harness.StartLogged(DiscoveryBinary, cmd, i.LogPath, nil)
	if err != nil {
		return err
	}
	i.proc = proc

	client := &http.Client{Timeout: 2 * time.Second}
	waitCtx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	err = proc.WaitHTTP(waitCtx, client, "http://"+i.HTTPAddr+"/ready")
	if err != nil && proc.Exited() && strings.Contains(i.LogTail(200), "address already in use") {
		err = errAddrInUse
	}
	if err != nil {
		i.kill()
		if errors.Is(err, errAddrInUse) {
			return err
		}
		return fmt.Errorf("waiting for istiod /ready at %s: %w", i.HTTPAddr, err)
	}
	i.StartDuration = time.Since(started)
	return nil
}

// RootCert waits until istiod has published RootCertConfigMap in namespace
// and returns its root certificate (PEM). istiod publishes into every
// namespace, shortly after the namespace is created.
func (i *Istiod) RootCert(ctx context.Context, namespace string) ([]byte, error) {
	var root []byte
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case <-i.proc.Done():
			return false, fmt.Errorf("istiod exited: %v", i.proc.Err())
		default:
		}
		var cm corev1.ConfigMap
		if err := i.cp.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: RootCertConfigMap}, &cm); err != nil {
			return false, nil
		}
		root = []byte(cm.Data[RootCertKey])
		return len(root) > 0, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for ConfigMap %s/%s: %w", namespace, RootCertConfigMap, err)
	}
	return root, nil
}

// LogTail returns the last n lines of istiod's output.
func (i *Istiod) LogTail(n int) string {
	data, err := os.ReadFile(i.LogPath)
	if err != nil {
		return ""
	}
	return harness.Tail(string(data), n)
}

// Log returns istiod's whole output so far.
func (i *Istiod) Log() string {
	data, _ := os.ReadFile(i.LogPath)
	return string(data)
}

func (i *Istiod) kill() {
	if i.releasePorts != nil {
		defer i.releasePorts()
		i.releasePorts = nil
	}
	if i.proc == nil {
		return
	}
	_ = i.proc.Stop(15 * time.Second)
}

// Stop ends istiod and removes its working directory (with the log). It is
// safe to call more than once. Objects istiod created in the control plane
// stay.
func (i *Istiod) Stop() error {
	if i == nil {
		return nil
	}
	i.stopOnce.Do(func() {
		i.kill()
		if i.dir != "" {
			i.stopErr = os.RemoveAll(i.dir)
		}
	})
	return i.stopErr
}

// findScript locates build-istio.sh.
func findScript() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	p, err := controlplane.LocateScript(file, filepath.Join("test", "istiod"), buildScript)
	if err != nil {
		return "", fmt.Errorf("%w; set ISTIO_BIN instead", err)
	}
	return p, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// quirks are the changes a released istiod needs to run on the local
// (current) apiserver.
type quirks struct {
	mesh  string   // appended to the mesh config
	notes []string // what differs, for reports
	// Istio 1.5 only:
	convertCRDs  bool // its CRDs are apiextensions.k8s.io/v1beta1
	oldFlags     bool // --secureGrpcAddr, no --clusterID
	istiodAddrCA bool // the CA listens on ISTIOD_ADDR's port
	ownToken     bool // the CA starts only if istiod has a token itself
}

func quirksFor(release string) (quirks, error) {
	var q quirks
	if ReleaseUnderTest() == "" {
		return q, nil
	}
	minor, err := releaseMinor(release)
	if err != nil {
		return q, err
	}
	if minor < 6 {
		q.convertCRDs, q.oldFlags, q.istiodAddrCA, q.ownToken = true, true, true, true
		q.notes = append(q.notes,
			"Istio's CRDs converted from apiextensions.k8s.io/v1beta1 (removed in Kubernetes 1.22) to v1, schema x-kubernetes-preserve-unknown-fields",
			"istiod flags: --secureGrpcAddr instead of --secureGRPCAddr, no --clusterID",
			"istiod's CA starts only with ISTIOD_ADDR set and a token of its own at ./var/run/secrets/tokens/istio-token (minted for istio-system/istiod, audience istio-ca); "+
				"ISTIOD_ADDR must be a service name: istiod.istio-system.svc:15012, mapped to 127.0.0.1 in the private /etc/hosts (\"localhost\" is refused), and port 15012 because the 1.5 agent trusts istiod's root only for a CA_ADDR on :15012; "+
				"so CA_ADDR stays as injected. The CA port listens on every interface, inside the private network namespace")
	}
	if minor < 15 {
		// istiod <= 1.14 lists networking.k8s.io/v1beta1 Ingress (removed in
		// Kubernetes 1.22) unless its Ingress controller is off, and never
		// becomes ready.
		q.mesh += "ingressControllerMode: \"OFF\"\n"
		q.notes = append(q.notes, `istiod mesh config ingressControllerMode: "OFF" (it lists networking.k8s.io/v1beta1 Ingress, gone since Kubernetes 1.22, and never becomes ready otherwise)`)
	}
	return q, nil
}

// resolvesToLoopback checks that host resolves to loopback addresses only.
func resolvesToLoopback(host string) error {
	addrs, err := net.LookupHost(host)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if ip := net.ParseIP(a); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("%s resolves to %v, not only to loopback", host, addrs)
		}
	}
	return nil
}

// releaseMinor parses the minor version of "1.14.6" (or "1.14").
func releaseMinor(release string) (int, error) {
	parts := strings.Split(strings.TrimPrefix(release, "v"), ".")
	if len(parts) < 2 || parts[0] != "1" {
		return 0, fmt.Errorf("%s=%q is not an Istio 1.x release", EnvRelease, release)
	}
	minor, err := strconv.Atoi(parts[1])
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not an Istio 1.x release", EnvRelease, release)
	}
	return minor, nil
}

// crdFile finds Istio's CRD bundle in a source tree; its place moved
// between releases.
func crdFile(modDir string) (string, error) {
	candidates := []string{
		filepath.Join("manifests", "charts", "base", "files", "crd-all.gen.yaml"), // 1.15+
		filepath.Join("manifests", "charts", "base", "crds", "crd-all.gen.yaml"),  // older (1.14, 1.22)
		filepath.Join("manifests", "base", "files", "crd-all.gen.yaml"),           // 1.5
	}
	for _, c := range candidates {
		p := filepath.Join(modDir, c)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no Istio CRD bundle in %s (looked for %v)", modDir, candidates)
}

// convertCRDs rewrites apiextensions.k8s.io/v1beta1 CRDs (Istio 1.5) as v1,
// which a current apiserver accepts, with a schema that keeps every field.
// It returns a temporary file the caller removes.
func convertCRDs(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	var out [][]byte
	for _, doc := range strings.Split(string(data), "\n---") {
		var crd map[string]any
		if err := yaml.Unmarshal([]byte(doc), &crd); err != nil {
			return "", fmt.Errorf("%s: %w", file, err)
		}
		if crd["kind"] != "CustomResourceDefinition" {
			continue
		}
		meta, _ := crd["metadata"].(map[string]any)
		spec, _ := crd["spec"].(map[string]any)
		if meta == nil || spec == nil {
			return "", fmt.Errorf("%s: a CRD without metadata or spec", file)
		}
		var versions []map[string]any
		if vs, ok := spec["versions"].([]any); ok {
			for _, v := range vs {
				if m, ok := v.(map[string]any); ok {
					versions = append(versions, m)
				}
			}
		}
		if len(versions) == 0 {
			versions = []map[string]any{{"name": spec["version"], "served": true, "storage": true}}
		}
		storage := false
		for _, v := range versions {
			storage = storage || v["storage"] == true
		}
		var nv []any
		for n, v := range versions {
			x := map[string]any{
				"name":    v["name"],
				"served":  v["served"] != false,
				"storage": v["storage"] == true || (!storage && n == 0),
				"schema":  map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
			}
			if sub, ok := spec["subresources"]; ok {
				x["subresources"] = sub
			}
			nv = append(nv, x)
		}
		b, err := yaml.Marshal(map[string]any{
			"apiVersion": "apiextensions.k8s.io/v1",
			"kind":       "CustomResourceDefinition",
			"metadata":   map[string]any{"name": meta["name"]},
			"spec":       map[string]any{"group": spec["group"], "names": spec["names"], "scope": spec["scope"], "versions": nv},
		})
		if err != nil {
			return "", err
		}
		out = append(out, b)
	}
	if len(out) == 0 {
		return "", fmt.Errorf("%s: no CustomResourceDefinition", file)
	}
	f, err := os.CreateTemp("", "istio-crds-v1-*.yaml")
	if err != nil {
		return "", err
	}
	_, werr := f.Write(bytes.Join(out, []byte("---\n")))
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(f.Name())
		return "", werr
	}
	return f.Name(), nil
}

// writeOwnToken gives istiod 1.5 the token file its CA insists on (it
// reads the issuer and audience from it): a TokenRequest token for the
// ServiceAccount istiod in its namespace.
func (i *Istiod) writeOwnToken(ctx context.Context, opts Options) error {
	cs, err := kubernetes.NewForConfig(i.cp.Config)
	if err != nil {
		return err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: opts.Namespace}}
	if _, err := cs.CoreV1().ServiceAccounts(opts.Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	tr, err := cs.CoreV1().ServiceAccounts(opts.Namespace).CreateToken(ctx, "istiod",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: opts.TokenAudiences}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for istiod: %w", err)
	}
	tokenDir := filepath.Join(i.dir, "var", "run", "secrets", "tokens")
	if err := os.MkdirAll(tokenDir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(tokenDir, "istio-token"), []byte(tr.Status.Token), 0o600)
}
