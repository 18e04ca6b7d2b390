// Package node runs a real Kubernetes node for tests: etcd, kube-apiserver
// and kube-controller-manager (package controlplane), containerd with runc,
// and a real kubelet (v1.37, built from the Go module proxy like the other
// control-plane binaries), all inside a network namespace of their own with
// no route out (see Main). Pods created through the apiserver are run by the
// kubelet in containers; their images are written locally from static
// binaries (WriteImage) and imported into containerd, with no registry.
//
// Everything is private per run: the directory (containerd root and state,
// kubelet root, pod logs), the sockets, the node name, and, because the
// whole node lives in its own network namespace, every port. Stop tears it
// down by PID (pods, kubelet, shims, containerd, controller-manager,
// kube-apiserver, then etcd), restores the sysctls the kubelet changes and
// removes the cgroups it and containerd create.
//
// See /work/shared/reference/real-node-on-one-machine.md for the recipe and
// docs/flavor-proof.md for what the suites prove with it.
package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/harness"
)

// PauseRef is the sandbox image the node's containerd uses.
const PauseRef = "sds-injector.test/pause:1"

// sysctls the kubelet sets on start (protectKernelDefaults: false); they are
// not per network namespace, so Stop puts the host's values back.
var kubeletSysctls = []string{
	"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
	"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
}

// Options configure Start.
type Options struct {
	// ControlPlane is passed to controlplane.Start; the controller-manager
	// always runs, and the apiserver flags a node needs are added.
	ControlPlane controlplane.Options
	// ReadyTimeout bounds each start-up wait (default 2 minutes).
	ReadyTimeout time.Duration
	// Services also runs kube-scheduler and kube-proxy (iptables mode) from
	// Prepared.ExtrasBinDir (see BuildExtras), the controllers of Services,
	// Deployments and PodDisruptionBudgets, the ServiceAccount admission
	// plugin, gives pods a route to ServiceCIDR and the API server an
	// in-cluster address (see services.go).
	Services bool
	// KubeletReadOnlyPort opens the kubelet's read-only port on NodeIP
	// (Node.KubeletReadOnlyPort): unauthenticated GET /pods, which SPIRE's
	// k8s workload attestor reads. Closed by default.
	KubeletReadOnlyPort bool
}

// Node is a running node. Use Start to get one and Stop to end it.
type Node struct {
	// CP is the control plane; CP.Client and CP.Config act as admin.
	CP        *controlplane.ControlPlane
	Clientset kubernetes.Interface
	// Name is the Node's name; pods need spec.nodeName set to it (there is
	// no scheduler).
	Name string
	// IP is the node's address (hostNetwork pods get it as pod IP).
	IP string
	// PodLogsDir is the kubelet's podLogsDir:
	// <ns>_<pod>_<uid>/<container>/<restart>.log in CRI format.
	PodLogsDir string
	// KubeletRootDir is the kubelet's --root-dir: pods/<uid>/volumes/...
	// holds the volumes as the kubelet set them up.
	KubeletRootDir string
	// Timings of the start-up.
	ControlPlaneStart, ContainerdStart, ImportTook, KubeletReady time.Duration
	// ServiceCA signs the API server's in-cluster certificate (Options.Services).
	ServiceCA []byte
	// ServicesReady is how long kube-scheduler and kube-proxy took to be healthy.
	ServicesReady time.Duration
	// KubeletReadOnlyPort is the kubelet's read-only port on IP
	// (Options.KubeletReadOnlyPort), 0 when closed.
	KubeletReadOnlyPort int

	p        *Prepared
	services bool
	dir      string
	sysctls  map[string]string
	procs    []*harness.Process // in start order
	ctrdSock string
	releases []func() // of reserved ports
	stopOnce sync.Once
	stopErr  error
}

// Start starts the node inside the namespace Main set up: control plane,
// containerd (with p's images imported), kubelet, and waits until the Node
// is Ready.
func Start(ctx context.Context, p *Prepared, opts Options) (_ *Node, retErr error) {
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 2 * time.Minute
	}
	if err := CheckNoRouteOut(); err != nil {
		return nil, fmt.Errorf("refusing to start a node: %w (start it through node.Main)", err)
	}
	n := &Node{p: p, Name: p.NodeName, IP: NodeIP, dir: filepath.Join(p.Dir, "node"), sysctls: map[string]string{}}
	defer func() {
		if retErr != nil {
			if err := n.Stop(); err != nil {
				retErr = errors.Join(retErr, fmt.Errorf("stopping: %w", err))
			}
		}
	}()
	for _, k := range kubeletSysctls {
		if b, err := os.ReadFile(sysctlPath(k)); err == nil {
			n.sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	n.PodLogsDir = filepath.Join(n.dir, "pod-logs")
	for _, d := range []string{n.dir, n.PodLogsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}

	started := time.Now()
	cpOpts := opts.ControlPlane
	cpOpts.WithControllerManager = true
	args := map[string][]string{
		// No default route: the apiserver cannot pick an address itself.
		"advertise-address":               {NodeIP},
		"authorization-mode":              {"Node,RBAC"},
		"allow-privileged":                {"true"},
		"kubelet-preferred-address-types": {"InternalIP,Hostname"},
	}
	if opts.Services {
		if err := n.servicesAPIServerArgs(args); err != nil {
			return nil, err
		}
		n.services = true
	}
	for k, v := range cpOpts.APIServerArgs {
		args[k] = v
	}
	cpOpts.APIServerArgs = args
	cp, err := controlplane.Start(ctx, cpOpts)
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	n.CP, n.ControlPlaneStart = cp, time.Since(started)
	if n.Clientset, err = kubernetes.NewForConfig(cp.Config); err != nil {
		return nil, err
	}

	started = time.Now()
	if err := n.startContainerd(ctx, opts.ReadyTimeout); err != nil {
		return nil, err
	}
	n.ContainerdStart = time.Since(started)
	started = time.Now()
	for _, img := range p.Images {
		if out, err := n.Ctr(ctx, "images", "import", "--snapshotter", "overlayfs", img.Tar); err != nil {
			return nil, fmt.Errorf("importing %s: %w\n%s", img.Ref, err, out)
		}
	}
	n.ImportTook = time.Since(started)

	started = time.Now()
	if opts.KubeletReadOnlyPort {
		if n.KubeletReadOnlyPort, err = n.freePort(); err != nil {
			return nil, err
		}
	}
	if err := n.startKubelet(ctx, opts.ReadyTimeout); err != nil {
		return nil, err
	}
	n.KubeletReady = time.Since(started)
	if opts.Services {
		started = time.Now()
		if err := n.startServices(ctx, opts.ReadyTimeout); err != nil {
			return nil, err
		}
		n.ServicesReady = time.Since(started)
	}
	return n, nil
}

func sysctlPath(k string) string { return "/proc/sys/" + strings.ReplaceAll(k, ".", "/") }

// start runs a node component in its own process group (killed if the test
// process dies), its output in <dir>/<name>.log; Stop ends it by PID.
func (n *Node) start(name string, args []string, env []string) (*harness.Process, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, err := harness.StartLogged(name, cmd, filepath.Join(n.dir, name+".log"), nil)
	if err != nil {
		return nil, err
	}
	n.procs = append(n.procs, pr)
	return pr, nil
}

// LogTail returns the last lines of a node component's log (containerd, kubelet).
func (n *Node) LogTail(name string, lines int) string {
	b, _ := os.ReadFile(filepath.Join(n.dir, name+".log"))
	return harness.Tail(string(b), lines)
}

func (n *Node) startContainerd(ctx context.Context, timeout time.Duration) error {
	d := filepath.Join(n.dir, "containerd")
	cni := filepath.Join(n.dir, "cni")
	for _, x := range []string{d, cni} {
		if err := os.MkdirAll(x, 0o711); err != nil {
			return err
		}
	}
	n.ctrdSock = filepath.Join(d, "containerd.sock")
	// containerd reports the network ready (and the kubelet the node Ready)
	// only with a conflist. Pod-network pods get a route to the node's
	// subnet through the bridge and no default route.
	routes := fmt.Sprintf(`{"dst":%q}`, nodeSubnet)
	if n.services {
		// ClusterIPs, rewritten by kube-proxy on the node side.
		routes += fmt.Sprintf(`,{"dst":%q}`, ServiceCIDR)
	}
	conflist := fmt.Sprintf(`{"cniVersion":"0.4.0","name":"sdsnode","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"routes":[%s],"dataDir":%q}},{"type":"loopback"}]}`,
		podSubnet, routes, filepath.Join(n.dir, "cni-ipam"))
	if err := os.WriteFile(filepath.Join(cni, "10-sdsnode.conflist"), []byte(conflist), 0o644); err != nil {
		return err
	}
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = %[7]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[8]q
    conf_dir = %[9]q
`, filepath.Join(d, "root"), filepath.Join(d, "state"), n.ctrdSock, n.ctrdSock+".ttrpc", filepath.Join(d, "opt"),
		PauseRef, RuncBinary, CNIBinDir, cni)
	cfgFile := filepath.Join(d, "config.toml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o644); err != nil {
		return err
	}
	pr, err := n.start("containerd", []string{ContainerdBinary, "--config", cfgFile}, nil)
	if err != nil {
		return err
	}
	return n.waitFor(ctx, timeout, "containerd to serve "+n.ctrdSock, pr, func(ctx context.Context) (bool, error) {
		_, err := n.Ctr(ctx, "version")
		return err == nil, nil
	})
}

// Ctr runs ctr against the node's containerd in the k8s.io namespace.
func (n *Node) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, CtrBinary, append([]string{"--address", n.ctrdSock, "-n", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n *Node) waitFor(ctx context.Context, timeout time.Duration, what string, pr *harness.Process, cond wait.ConditionWithContextFunc) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := wait.PollUntilContextCancel(wctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case <-pr.Done():
			return false, fmt.Errorf("%s exited: %v", pr.Name, pr.Err())
		default:
		}
		return cond(ctx)
	})
	if err != nil {
		return fmt.Errorf("waiting for %s: %w\n%s log (tail):\n%s", what, err, pr.Name, pr.Tail(40))
	}
	return nil
}

// freePort reserves a loopback port for one of the node's processes
// (harness.ReservePort), released when the node stops.
func (n *Node) freePort() (int, error) {
	port, release, err := harness.ReservePort("127.0.0.1")
	if err != nil {
		return 0, err
	}
	n.releases = append(n.releases, release)
	return port, nil
}

func (n *Node) startKubelet(ctx context.Context, timeout time.Duration) error {
	d := filepath.Join(n.dir, "kubelet")
	if err := os.MkdirAll(d, 0o750); err != nil {
		return err
	}
	n.KubeletRootDir = filepath.Join(d, "root")
	// The kubelet authenticates as system:node:<name> (Node authorizer).
	user, err := n.CP.Env.AddUser(envtest.User{Name: "system:node:" + n.Name, Groups: []string{"system:nodes"}}, nil)
	if err != nil {
		return fmt.Errorf("kubelet user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(d, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return err
	}
	port, err := n.freePort()
	if err != nil {
		return err
	}
	healthz, err := n.freePort()
	if err != nil {
		return err
	}
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://%s
address: %s
port: %d
healthzBindAddress: 127.0.0.1
healthzPort: %d
readOnlyPort: %d
podLogsDir: %s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "1%%"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
clusterDomain: cluster.local
resolvConf: ""
syncFrequency: 10s
nodeStatusUpdateFrequency: 2s
volumeStatsAggPeriod: 0s
`, n.ctrdSock, NodeIP, port, healthz, n.KubeletReadOnlyPort, n.PodLogsDir)
	cfgFile := filepath.Join(d, "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o644); err != nil {
		return err
	}
	pr, err := n.start("kubelet", []string{filepath.Join(n.p.KubeBinDir, controlplane.KubeletBinary),
		"--config=" + cfgFile, "--kubeconfig=" + kubeconfig, "--root-dir=" + n.KubeletRootDir,
		"--cert-dir=" + filepath.Join(d, "pki"), "--hostname-override=" + n.Name, "--node-ip=" + NodeIP, "--v=2"}, nil)
	if err != nil {
		return err
	}
	return n.waitFor(ctx, timeout, "node "+n.Name+" to be Ready", pr, func(ctx context.Context) (bool, error) {
		node, err := n.Clientset.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
}

// Stop deletes every pod, then stops the kubelet, any remaining containerd
// shims of this node, containerd and the control plane (kube-apiserver
// before etcd), by PID; it restores the kubelet's sysctls and removes the
// /kubepods and /k8s.io cgroups. It is safe to call more than once.
func (n *Node) Stop() error {
	if n == nil {
		return nil
	}
	n.stopOnce.Do(func() {
		var errs []error
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		// Without a scheduler, pods that controllers re-create for the
		// deleted ones stay Pending instead of starting on the node.
		for _, pr := range n.procs {
			if pr.Name == "kube-scheduler" {
				_ = pr.Stop(stopGrace)
			}
		}
		if n.Clientset != nil && n.kubeletRunning() {
			if err := n.deleteAllPods(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		// Reverse start order: kubelet, containerd.
		for i := len(n.procs) - 1; i >= 0; i-- {
			pr := n.procs[i]
			if pr.Name == "containerd" {
				errs = append(errs, n.killShims()...)
			}
			_ = pr.Stop(stopGrace)
		}
		if n.CP != nil {
			if err := n.CP.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("control plane: %w", err))
			}
		}
		for k, v := range n.sysctls {
			cur, _ := os.ReadFile(sysctlPath(k))
			if strings.TrimSpace(string(cur)) != v {
				if err := os.WriteFile(sysctlPath(k), []byte(v), 0o644); err != nil {
					errs = append(errs, fmt.Errorf("restoring sysctl %s=%s: %w", k, v, err))
				}
			}
		}
		errs = append(errs, removeCgroups("kubepods", "k8s.io")...)
		for _, release := range n.releases {
			release()
		}
		n.stopErr = errors.Join(errs...)
	})
	return n.stopErr
}

// stopGrace is how long a node component has after SIGTERM before its
// process group is killed.
const stopGrace = 20 * time.Second

func (n *Node) kubeletRunning() bool {
	for _, pr := range n.procs {
		if pr.Name == "kubelet" {
			return !pr.Exited()
		}
	}
	return false
}

// deleteAllPods deletes every pod and waits until containerd runs no task.
func (n *Node) deleteAllPods(ctx context.Context) error {
	pods, err := n.Clientset.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	grace := int64(2)
	for _, p := range pods.Items {
		err := n.Clientset.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		out, err := n.Ctr(ctx, "tasks", "ls", "-q")
		if err != nil {
			return false, nil
		}
		return strings.TrimSpace(out) == "", nil
	})
}

// killShims ends the containerd-shim processes serving this node's
// containerd (found by its private socket address in their command line).
func (n *Node) killShims() []error {
	var errs []error
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := bytes.Split(b, []byte{0})
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(string(args[0])), "containerd-shim") {
			continue
		}
		if !bytes.Contains(b, []byte(n.ctrdSock)) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			errs = append(errs, fmt.Errorf("killing shim %d: %w", pid, err))
		}
	}
	return errs
}

// removeCgroups removes the named top-level cgroups (and their children)
// from every cgroup v1 hierarchy and the v2 one.
func removeCgroups(names ...string) []error {
	var errs []error
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for _, root := range roots {
		for _, name := range names {
			top := filepath.Join(root, name)
			if _, err := os.Stat(top); err != nil {
				continue
			}
			var dirs []string
			_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- {
				if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
					errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dirs[i], err))
				}
			}
		}
	}
	return errs
}

// AddImage writes img into the prepared directory (see WriteImage) and
// adds it to the images the node imports.
func (p *Prepared) AddImage(img *Image) error {
	file := p.ArchivePath(img.Ref)
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	if err := WriteImage(img, file); err != nil {
		return err
	}
	p.Images = append(p.Images, *img)
	return nil
}

// ArchivePath is where an image archive for ref belongs in the prepared
// directory; AddArchive adds an archive written there by other means (for
// example internal/imagebuild.WriteArchive, the release images' writer)
// to the images the node imports.
func (p *Prepared) ArchivePath(ref string) string {
	return filepath.Join(p.Dir, "images", strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
}

// AddArchive: see ArchivePath.
func (p *Prepared) AddArchive(ref, file string) {
	p.Images = append(p.Images, Image{Ref: ref, Tar: file})
}

func imageConfig(entrypoint []string, user string) v1.Config {
	return v1.Config{Entrypoint: entrypoint, User: user, WorkingDir: "/", Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}}
}

// BuildStatic builds the main package pkg (relative to the repository root)
// as a static binary into dir and returns its path.
func BuildStatic(ctx context.Context, dir, pkg string, ldflags ...string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "bin", filepath.Base(pkg))
	args := []string{"build", "-trimpath", "-o", out}
	if len(ldflags) > 0 {
		args = append(args, "-ldflags", strings.Join(ldflags, " "))
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// RepoRoot is the repository's root directory.
func RepoRoot() (string, error) { return repoRoot() }

func repoRoot() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	if filepath.IsAbs(file) {
		return filepath.Dir(filepath.Dir(filepath.Dir(file))), nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", errors.New("cannot find the repository root (go.mod)")
		}
	}
}
