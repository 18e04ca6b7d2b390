// Package controlplane runs a real Kubernetes control plane (etcd and
// kube-apiserver, optionally kube-controller-manager) for integration tests
// and demos, on top of controller-runtime's envtest.
//
// The binaries are built from source by build-binaries.sh (next to this file)
// and cached outside the repository, so the first run on a machine takes a
// while (about 15 minutes on two cores) and later runs start in seconds. Set
// KUBEBUILDER_ASSETS to a directory holding the binaries to use those instead.
//
// Things to know about the environment:
//   - envtest disables the ServiceAccount admission plugin, so pods are not
//     defaulted to the "default" ServiceAccount: set spec.serviceAccountName
//     and make sure that ServiceAccount exists if the code under test needs it.
//   - There is no kubelet and no scheduler: pods are stored and stay Pending.
//   - With Options.WithControllerManager the deployment, replicaset,
//     serviceaccount, namespace and garbage-collector controllers run, so a
//     Deployment really produces ReplicaSets and Pods, namespaces get their
//     "default" ServiceAccount, and namespace deletion completes.
package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/test/harness"
)

// Names of the binaries in a binary directory.
const (
	APIServerBinary         = "kube-apiserver"
	EtcdBinary              = "etcd"
	ControllerManagerBinary = "kube-controller-manager"
	KubectlBinary           = "kubectl"
	KubeletBinary           = "kubelet"
)

// ControllerManagerControllers are the kube-controller-manager controllers
// Start runs when Options.WithControllerManager is set.
var ControllerManagerControllers = []string{
	"deployment-controller",
	"replicaset-controller",
	"serviceaccount-controller",
	"namespace-controller",
	"garbage-collector-controller",
}

const buildScript = "build-binaries.sh"

// requiredBinaries lists the binaries a directory must hold.
func requiredBinaries(withControllerManager bool) []string {
	bins := []string{APIServerBinary, EtcdBinary}
	if withControllerManager {
		bins = append(bins, ControllerManagerBinary, KubectlBinary)
	}
	return bins
}

// missingBinaries returns the required binaries that are not executable files in dir.
func missingBinaries(dir string, withControllerManager bool) []string {
	var missing []string
	for _, b := range requiredBinaries(withControllerManager) {
		if !isExecutable(filepath.Join(dir, b)) {
			missing = append(missing, b)
		}
	}
	return missing
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// BinaryDir returns a directory holding kube-apiserver and etcd (and, with
// withControllerManager, kube-controller-manager and kubectl).
//
// If KUBEBUILDER_ASSETS names a directory holding all of them, that directory
// is returned. Otherwise build-binaries.sh builds them (or finds them already
// in its cache) and its directory is returned; build progress is streamed to
// stderr. Concurrent callers, in this or other processes, wait for a single
// build.
func BinaryDir(ctx context.Context, withControllerManager bool) (string, error) {
	var flags []string
	if withControllerManager {
		flags = append(flags, "--with-controller-manager")
	}
	return binaryDir(ctx, flags, requiredBinaries(withControllerManager))
}

// NodeBinaryDir is BinaryDir for a real node: the directory also holds the
// kubelet (build-binaries.sh --with-kubelet, version-stamped), besides
// kube-apiserver, etcd, kube-controller-manager and kubectl.
func NodeBinaryDir(ctx context.Context) (string, error) {
	return binaryDir(ctx, []string{"--with-kubelet"}, append(requiredBinaries(true), KubeletBinary))
}

func binaryDir(ctx context.Context, flags, required []string) (string, error) {
	missingIn := func(dir string) []string {
		var missing []string
		for _, b := range required {
			if !isExecutable(filepath.Join(dir, b)) {
				missing = append(missing, b)
			}
		}
		return missing
	}
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		missing := missingIn(dir)
		if len(missing) == 0 {
			return dir, nil
		}
		fmt.Fprintf(os.Stderr, "controlplane: KUBEBUILDER_ASSETS=%s lacks %s; using build-binaries.sh instead\n",
			dir, strings.Join(missing, ", "))
	}

	script, err := findBuildScript()
	if err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "controlplane: running %s (builds the binaries on first use, about 15 minutes)\n", strings.Join(append([]string{script}, flags...), " "))
	dir, err := RunBuildScript(ctx, script, flags, nil, os.Stderr)
	if err != nil {
		return "", err
	}
	if missing := missingIn(dir); len(missing) > 0 {
		return "", fmt.Errorf("%s returned %s, which lacks %s", script, dir, strings.Join(missing, ", "))
	}
	return dir, nil
}

// findBuildScript locates build-binaries.sh.
func findBuildScript() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	p, err := LocateScript(file, filepath.Join("test", "controlplane"), buildScript)
	if err != nil {
		return "", fmt.Errorf("%w; set KUBEBUILDER_ASSETS instead", err)
	}
	return p, nil
}

// LocateScript finds a build script that lives next to the Go source file
// callerFile (a runtime.Caller path) or, when that path is not usable
// (-trimpath builds), at repoDir/name under the nearest enclosing
// directory of the working directory.
func LocateScript(callerFile, repoDir, name string) (string, error) {
	var tried []string
	if filepath.IsAbs(callerFile) {
		p := filepath.Join(filepath.Dir(callerFile), name)
		if isFile(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			p := filepath.Join(dir, repoDir, name)
			if isFile(p) {
				return p, nil
			}
			tried = append(tried, p)
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	return "", fmt.Errorf("cannot find %s (tried %s)", name, strings.Join(tried, ", "))
}

func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// Options configure Start.
type Options struct {
	// WithControllerManager also runs kube-controller-manager with
	// ControllerManagerControllers, and makes kubectl available.
	WithControllerManager bool

	// WebhookInstallOptions is passed to envtest: the webhook configurations
	// it names (Paths, MutatingWebhooks, ValidatingWebhooks) are installed
	// during Start, with their clientConfig rewritten to point at
	// https://LocalServingHost:LocalServingPort/<service path> and a CA bundle
	// for the serving certificate envtest writes to LocalServingCertDir
	// (tls.crt, tls.key). Read the filled-in values back from
	// ControlPlane.WebhookInstallOptions. Only webhooks whose clientConfig
	// has a service with a path are rewritten. (envtest itself would produce
	// "https://host:port//path" for a path starting with "/"; Start corrects
	// the installed configurations to a single slash.)
	WebhookInstallOptions envtest.WebhookInstallOptions

	// APIServerArgs sets extra kube-apiserver flags (name without dashes ->
	// values). A flag given here replaces envtest's default for it; an empty
	// value list passes the flag without a value.
	APIServerArgs map[string][]string

	// AttachOutput streams the output of etcd, kube-apiserver and
	// kube-controller-manager to stdout/stderr. kube-controller-manager's
	// output is always kept in ControlPlane.ControllerManagerLogPath.
	AttachOutput bool

	// StartTimeout bounds the start of each component (default 60s).
	StartTimeout time.Duration
}

// ControlPlane is a running control plane. Use Start to get one and Stop to
// tear it down.
type ControlPlane struct {
	// Env is the underlying envtest environment.
	Env *envtest.Environment
	// Config authenticates as "admin" in group system:masters.
	Config *rest.Config
	// Client is a controller-runtime client for Config, with client-go's
	// built-in scheme.
	Client client.Client
	// KubeconfigPath is a kubeconfig file for Config (removed by Stop).
	KubeconfigPath string
	// BinaryDir is the directory the binaries came from.
	BinaryDir string
	// KubectlPath is the kubectl binary, or "" if none is available (it is
	// always available with Options.WithControllerManager).
	KubectlPath string
	// WebhookInstallOptions are the webhook options after installation:
	// LocalServingHost, LocalServingPort, LocalServingCertDir and
	// LocalServingCAData are filled in.
	WebhookInstallOptions *envtest.WebhookInstallOptions
	// ControllerManagerLogPath holds kube-controller-manager's output, or ""
	// if it is not running.
	ControllerManagerLogPath string

	dir      string
	kcm      *harness.Process
	stopOnce sync.Once
	stopErr  error
}

// Start starts etcd and kube-apiserver (building them first if needed, see
// BinaryDir), provisions an admin user, installs the webhooks in
// opts.WebhookInstallOptions and, with opts.WithControllerManager, starts
// kube-controller-manager and waits until its controllers work. ctx bounds
// the binary build and the readiness waits; the control plane runs until
// Stop.
func Start(ctx context.Context, opts Options) (_ *ControlPlane, retErr error) {
	binDir, err := BinaryDir(ctx, opts.WithControllerManager)
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "sds-injector-controlplane-")
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{BinaryDir: binDir, dir: dir}
	defer func() {
		if retErr != nil {
			if err := cp.Stop(); err != nil {
				retErr = errors.Join(retErr, fmt.Errorf("cleaning up: %w", err))
			}
		}
	}()

	if isExecutable(filepath.Join(binDir, KubectlBinary)) {
		cp.KubectlPath = filepath.Join(binDir, KubectlBinary)
	}

	startTimeout := opts.StartTimeout
	if startTimeout == 0 {
		startTimeout = 60 * time.Second
	}
	useExisting := false
	env := &envtest.Environment{
		// Explicit paths, so that a partial KUBEBUILDER_ASSETS or
		// TEST_ASSET_* variables do not redirect envtest.
		ControlPlane: envtest.ControlPlane{
			APIServer:   &envtest.APIServer{Path: filepath.Join(binDir, APIServerBinary)},
			Etcd:        &envtest.Etcd{Path: filepath.Join(binDir, EtcdBinary)},
			KubectlPath: cp.KubectlPath,
		},
		BinaryAssetsDirectory:    binDir,
		UseExistingCluster:       &useExisting,
		WebhookInstallOptions:    opts.WebhookInstallOptions,
		AttachControlPlaneOutput: opts.AttachOutput,
		ControlPlaneStartTimeout: startTimeout,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	for name, vals := range opts.APIServerArgs {
		env.ControlPlane.APIServer.Configure().Set(name, vals...)
	}
	if _, err := env.Start(); err != nil {
		// envtest may have started processes before failing, and after
		// retried starts it leaves the API server's certificate directory
		// behind; we never set one, so it is envtest's temporary directory.
		if stopErr := env.Stop(); stopErr != nil {
			err = errors.Join(err, fmt.Errorf("stopping envtest: %w", stopErr))
		}
		if d := env.ControlPlane.APIServer.CertDir; d != "" {
			_ = os.RemoveAll(d)
		}
		hint := ""
		if !env.AttachControlPlaneOutput {
			hint = " (set Options.AttachOutput or KUBEBUILDER_ATTACH_CONTROL_PLANE_OUTPUT=true to see the components' output)"
		}
		return nil, fmt.Errorf("starting envtest control plane%s: %w", hint, err)
	}
	cp.Env = env
	cp.WebhookInstallOptions = &env.WebhookInstallOptions

	admin, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}},
		&rest.Config{QPS: 1000, Burst: 2000})
	if err != nil {
		return nil, fmt.Errorf("adding admin user: %w", err)
	}
	cp.Config = admin.Config()
	kubeconfig, err := admin.KubeConfig()
	if err != nil {
		return nil, fmt.Errorf("admin kubeconfig: %w", err)
	}
	cp.KubeconfigPath = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(cp.KubeconfigPath, kubeconfig, 0o600); err != nil {
		return nil, err
	}
	cp.Client, err = client.New(cp.Config, client.Options{Scheme: clientgoscheme.Scheme})
	if err != nil {
		return nil, fmt.Errorf("creating client: %w", err)
	}

	if err := cp.fixWebhookURLs(ctx); err != nil {
		return nil, err
	}

	if opts.WithControllerManager {
		if err := cp.startControllerManager(ctx, opts.AttachOutput, startTimeout); err != nil {
			return nil, err
		}
	}
	return cp, nil
}

// fixWebhookURLs undoes a quirk of envtest: it builds the webhook URL as
// "https://host:port/" + service path, so the usual path "/inject" becomes
// "//inject", which http.ServeMux answers with a redirect the API server does
// not follow. The installed configurations are updated to use a single slash.
func (cp *ControlPlane) fixWebhookURLs(ctx context.Context) error {
	w := cp.WebhookInstallOptions
	if w == nil || w.LocalServingPort == 0 {
		return nil
	}
	host := w.LocalServingHostExternalName
	if host == "" {
		host = w.LocalServingHost
	}
	prefix := "https://" + net.JoinHostPort(host, strconv.Itoa(w.LocalServingPort)) + "/"
	fix := func(u *string) bool {
		if u == nil || !strings.HasPrefix(*u, prefix+"/") {
			return false
		}
		*u = prefix + strings.TrimLeft(strings.TrimPrefix(*u, prefix), "/")
		return true
	}
	// Each configuration (fixed in place) with its webhooks' client configs.
	type installed struct {
		obj     client.Object
		clients []*admissionregistrationv1.WebhookClientConfig
	}
	var all []installed
	for _, h := range w.MutatingWebhooks {
		in := installed{obj: h}
		for i := range h.Webhooks {
			in.clients = append(in.clients, &h.Webhooks[i].ClientConfig)
		}
		all = append(all, in)
	}
	for _, h := range w.ValidatingWebhooks {
		in := installed{obj: h}
		for i := range h.Webhooks {
			in.clients = append(in.clients, &h.Webhooks[i].ClientConfig)
		}
		all = append(all, in)
	}
	for _, in := range all {
		changed := false
		for _, c := range in.clients {
			changed = fix(c.URL) || changed
		}
		if changed {
			if err := cp.updateWebhookURLs(ctx, in.obj.GetName(), in.obj.DeepCopyObject().(client.Object)); err != nil {
				return err
			}
		}
	}
	return nil
}

// updateWebhookURLs copies the client URLs of want (a mutating or validating
// webhook configuration) onto the stored object named name.
func (cp *ControlPlane) updateWebhookURLs(ctx context.Context, name string, want client.Object) error {
	stored := want.DeepCopyObject().(client.Object)
	if err := cp.Client.Get(ctx, types.NamespacedName{Name: name}, stored); err != nil {
		return fmt.Errorf("fixing webhook URLs of %s: %w", name, err)
	}
	want.SetResourceVersion(stored.GetResourceVersion())
	if err := cp.Client.Update(ctx, want); err != nil {
		return fmt.Errorf("fixing webhook URLs of %s: %w", name, err)
	}
	return nil
}

func (cp *ControlPlane) startControllerManager(ctx context.Context, attach bool, timeout time.Duration) error {
	cp.ControllerManagerLogPath = filepath.Join(cp.dir, "kube-controller-manager.log")
	var also io.Writer
	if attach {
		also = os.Stderr
	}
	cmd := exec.Command(filepath.Join(cp.BinaryDir, ControllerManagerBinary),
		"--kubeconfig="+cp.KubeconfigPath,
		"--controllers="+strings.Join(ControllerManagerControllers, ","),
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=0",
	)
	kcm, err := harness.StartLogged("kube-controller-manager", cmd, cp.ControllerManagerLogPath, also)
	if err != nil {
		return err
	}
	cp.kcm = kcm

	// Ready when the serviceaccount controller has created the default
	// ServiceAccount of the default namespace: the informers have synced and
	// the controllers run.
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = wait.PollUntilContextCancel(waitCtx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case <-kcm.Done():
			return false, fmt.Errorf("kube-controller-manager exited: %w", kcm.Err())
		default:
		}
		err := cp.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: "default"}, &corev1.ServiceAccount{})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for kube-controller-manager: %w\n%s", err, cp.controllerManagerLogTail())
	}
	return nil
}

func (cp *ControlPlane) controllerManagerLogTail() string {
	data, err := os.ReadFile(cp.ControllerManagerLogPath)
	if err != nil {
		return ""
	}
	const max = 4000
	if len(data) > max {
		data = data[len(data)-max:]
	}
	return "kube-controller-manager log (tail):\n" + string(data)
}

// KubectlCmd returns a kubectl command using the admin kubeconfig. It fails
// if no kubectl is available (start with Options.WithControllerManager).
func (cp *ControlPlane) KubectlCmd(ctx context.Context, args ...string) (*exec.Cmd, error) {
	if cp.KubectlPath == "" {
		return nil, errors.New("no kubectl available; start the control plane with WithControllerManager")
	}
	cmd := exec.CommandContext(ctx, cp.KubectlPath, append([]string{"--kubeconfig=" + cp.KubeconfigPath}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+cp.KubeconfigPath)
	return cmd, nil
}

// Stop stops kube-controller-manager, kube-apiserver and etcd and removes
// the temporary files. It is safe to call more than once.
func (cp *ControlPlane) Stop() error {
	if cp == nil {
		return nil
	}
	cp.stopOnce.Do(func() {
		var errs []error
		if cp.kcm != nil {
			_ = cp.kcm.Stop(10 * time.Second)
		}
		if cp.Env != nil {
			if err := cp.Env.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("stopping envtest: %w", err))
			}
		}
		if cp.dir != "" {
			if err := os.RemoveAll(cp.dir); err != nil {
				errs = append(errs, err)
			}
		}
		cp.stopErr = errors.Join(errs...)
	})
	return cp.stopErr
}

// InstallMutatingWebhookFile creates the MutatingWebhookConfiguration in
// file (YAML, as shipped to users) with every webhook's clientConfig pointed
// at the local serving address (https://LocalServingHost:LocalServingPort
// plus the service path) and the local serving CA, as envtest does for
// configurations given at start. Everything else is kept as written.
func (cp *ControlPlane) InstallMutatingWebhookFile(ctx context.Context, file string) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	w := cp.WebhookInstallOptions
	if w == nil || w.LocalServingPort == 0 {
		return nil, errors.New("no local serving address: the control plane was started without webhook install options")
	}
	return cp.InstallMutatingWebhookFileAt(ctx, file, net.JoinHostPort(w.LocalServingHost, strconv.Itoa(w.LocalServingPort)))
}

// InstallMutatingWebhookFileAt is InstallMutatingWebhookFile with the
// webhooks pointed at hostPort (e.g. a test load balancer in front of
// several replicas), still trusting the local serving CA.
func (cp *ControlPlane) InstallMutatingWebhookFileAt(ctx context.Context, file, hostPort string) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(data, &mwc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	w := cp.WebhookInstallOptions
	if w == nil || w.LocalServingCAData == nil {
		return nil, errors.New("no local serving CA: the control plane was started without webhook install options")
	}
	for i := range mwc.Webhooks {
		cc := &mwc.Webhooks[i].ClientConfig
		path := ""
		if cc.Service != nil && cc.Service.Path != nil {
			path = *cc.Service.Path
		}
		url := "https://" + hostPort + path
		cc.Service, cc.URL, cc.CABundle = nil, &url, w.LocalServingCAData
	}
	if err := cp.Client.Create(ctx, &mwc); err != nil {
		return nil, fmt.Errorf("installing %s: %w", file, err)
	}
	return &mwc, nil
}

// RunBuildScript runs a script that builds (or finds cached) binaries and
// prints their directory as its last line of output, and returns that
// directory. The script runs under bash in its own process group: on
// cancellation the whole build (bash and the go commands it runs) gets
// SIGTERM and a moment to clean up. Its stderr goes to stderr; env is added
// to the environment. A failing script's error wraps its *exec.ExitError.
func RunBuildScript(ctx context.Context, script string, args, env []string, stderr io.Writer) (string, error) {
	var stdout bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w", script, err)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := strings.TrimSpace(lines[len(lines)-1])
	if dir == "" {
		return "", fmt.Errorf("%s printed no directory", script)
	}
	return dir, nil
}
