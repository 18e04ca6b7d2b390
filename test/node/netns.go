package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/istiod"
)

// The node's network. The namespace holds lo and one more interface with
// NodeIP; there is no default route, so nothing inside can reach anything
// outside the namespace.
const (
	NodeIP     = "10.213.0.1"
	nodeCIDR   = NodeIP + "/24"
	nodeSubnet = "10.213.0.0/24"
	nodeLink   = "sdsnode0"
	nodePeer   = "sdsnode1"
	podSubnet  = "10.214.0.0/24"
	insideEnv  = "SDS_INJECTOR_NODE_INSIDE"
	preparedFn = "prepared.json"
)

// Prepared is what was built outside the namespace (where the module proxy
// and apt are reachable) for the run inside it.
type Prepared struct {
	// Dir is the run's private directory, shared by both sides; the outer
	// side removes it at the end.
	Dir string `json:"dir"`
	// KubeBinDir holds kube-apiserver, etcd, kube-controller-manager,
	// kubectl and kubelet.
	KubeBinDir string `json:"kubeBinDir"`
	// IstioBinDir holds pilot-discovery and pilot-agent; IstioModuleDir is
	// the istio.io/istio source they were built from.
	IstioBinDir    string `json:"istioBinDir"`
	IstioModuleDir string `json:"istioModuleDir"`
	// Images are imported into containerd when the node starts. The pause
	// image (PauseRef) is always among them.
	Images []Image `json:"images"`
	// Values carries the caller's own results (paths of built binaries...).
	Values map[string]string `json:"values,omitempty"`
	// PrepareTook is how long the outer side took (builds, installs, images).
	PrepareTook time.Duration `json:"prepareTook"`
	// Link is the kind of link that carries NodeIP (dummy, or veth where
	// the kernel has no dummy driver).
	Link string `json:"-"`
	// ExtrasBinDir holds kube-proxy and kube-scheduler (BuildExtras), for
	// Options.Services.
	ExtrasBinDir string `json:"extrasBinDir,omitempty"`
	// NodeName is the node's name, private to the run.
	NodeName string `json:"nodeName"`
}

// Main runs a test binary's suite on a real node inside a network namespace
// of its own. Call it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(node.Main(prepare, func(p *node.Prepared) int { ...; return m.Run() })) }
//
// The first (outer) call needs root. It installs containerd, runc and the CNI
// plugins with apt-get when they are missing, builds or finds the kubelet and
// the control plane (package controlplane) and istiod (package istiod), builds
// the pause image, calls prepare (which may add images and values), and then
// runs this same test binary again, with the same arguments, in new network
// and mount namespaces; its exit code is returned. The inner call sets up the
// network (lo, NodeIP, no route out: it fails if there is one) and a private
// /etc/hosts and /run/containerd, then calls inside. Anything that cannot be
// set up fails the run with the reason; nothing is skipped.
func Main(prepare func(ctx context.Context, p *Prepared) error, inside func(p *Prepared) int) int {
	if os.Getenv(insideEnv) != "" {
		p, err := enter(os.Getenv(insideEnv))
		if err != nil {
			fmt.Fprintln(os.Stderr, "node: inside the network namespace:", err)
			return 1
		}
		return inside(p)
	}
	code, err := outer(prepare)
	if err != nil {
		fmt.Fprintln(os.Stderr, "node: FAIL:", err)
		return 1
	}
	return code
}

func outer(prepare func(ctx context.Context, p *Prepared) error) (int, error) {
	if os.Geteuid() != 0 {
		return 1, errors.New("the real-node suite needs root (network namespace, containerd, kubelet); CI runs as root. Run it as root: sudo go test ... ")
	}
	started := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	if err := EnsurePackages(ctx); err != nil {
		return 1, err
	}
	dir, err := os.MkdirTemp("", "sdsnode-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return 1, err
	}
	p := &Prepared{Dir: dir, Values: map[string]string{}, NodeName: filepath.Base(dir)}
	if p.KubeBinDir, err = controlplane.NodeBinaryDir(ctx); err != nil {
		return 1, err
	}
	if p.IstioBinDir, err = istiod.BinaryDir(ctx, ""); err != nil {
		return 1, err
	}
	if p.IstioModuleDir, err = istiod.ModuleDir(ctx, ""); err != nil {
		return 1, err
	}
	pause, err := BuildStatic(ctx, dir, "./test/node/cmd/pause")
	if err != nil {
		return 1, err
	}
	if err := p.AddImage(&Image{Ref: PauseRef, Files: map[string]string{"/pause": pause}, Executable: []string{"/pause"},
		Config: imageConfig([]string{"/pause"}, "65535")}); err != nil {
		return 1, err
	}
	if prepare != nil {
		if err := prepare(ctx, p); err != nil {
			return 1, fmt.Errorf("preparing: %w", err)
		}
	}
	p.PrepareTook = time.Since(started)
	b, err := json.Marshal(p)
	if err != nil {
		return 1, err
	}
	if err := os.WriteFile(filepath.Join(dir, preparedFn), b, 0o644); err != nil {
		return 1, err
	}
	self, err := os.Executable()
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(os.Stderr, "node: prepared in %s; entering a new network namespace\n", p.PrepareTook.Round(time.Millisecond))
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), insideEnv+"="+dir,
		"KUBEBUILDER_ASSETS="+p.KubeBinDir, istiod.EnvBinaryDir+"="+p.IstioBinDir, istiod.EnvSourceDir+"="+p.IstioModuleDir,
		// Nothing inside can reach the module proxy.
		"GOPROXY=off", "GOFLAGS=-mod=mod")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 1, fmt.Errorf("starting the test binary in new network and mount namespaces (CLONE_NEWNET|CLONE_NEWNS): %w", err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 1, err
	}
	return 0, nil
}

// enter runs inside the new namespaces: network, hosts file, run dirs.
func enter(dir string) (*Prepared, error) {
	b, err := os.ReadFile(filepath.Join(dir, preparedFn))
	if err != nil {
		return nil, err
	}
	var p Prepared
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	// Mounts made here stay here.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("making / a private mount: %w", err)
	}
	ip := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := ip("link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	// A dummy link is the natural home of the node address; kernels
	// without the dummy driver get a veth pair whose both ends stay in
	// this namespace.
	p.Link = "dummy"
	if err := ip("link", "add", nodeLink, "type", "dummy"); err != nil {
		p.Link = "veth (no dummy driver: " + err.Error() + ")"
		if err := ip("link", "add", nodeLink, "type", "veth", "peer", "name", nodePeer); err != nil {
			return nil, fmt.Errorf("neither a dummy nor a veth link can be created: %w", err)
		}
		if err := ip("link", "set", nodePeer, "up"); err != nil {
			return nil, err
		}
	}
	if err := ip("addr", "add", nodeCIDR, "dev", nodeLink); err != nil {
		return nil, err
	}
	if err := ip("link", "set", nodeLink, "up"); err != nil {
		return nil, err
	}
	if err := CheckNoRouteOut(); err != nil {
		return nil, err
	}
	// Name resolution for the node and localhost, private to this run.
	hosts := filepath.Join(dir, "hosts")
	content := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", NodeIP, p.NodeName)
	if err := os.WriteFile(hosts, []byte(content), 0o644); err != nil {
		return nil, err
	}
	if err := syscall.Mount(hosts, "/etc/hosts", "", syscall.MS_BIND, ""); err != nil {
		return nil, fmt.Errorf("bind-mounting a private /etc/hosts: %w", err)
	}
	// containerd 1.6 keeps shim sockets under /run/containerd/s whatever
	// its configuration says: a private tmpfs keeps them to this run.
	if err := os.MkdirAll("/run/containerd", 0o711); err != nil {
		return nil, err
	}
	if err := syscall.Mount("tmpfs", "/run/containerd", "tmpfs", 0, "mode=0711"); err != nil {
		return nil, fmt.Errorf("mounting a private /run/containerd: %w", err)
	}
	return &p, nil
}

// CheckNoRouteOut fails if this network namespace has a default route, an
// interface other than lo and the node link(s), or a route to a public
// address.
func CheckNoRouteOut() error {
	out, err := exec.Command("ip", "route", "show", "default").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip route show default: %w: %s", err, out)
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		return fmt.Errorf("the node's network namespace has a default route: %s", s)
	}
	for _, dst := range []string{"1.1.1.1", "8.8.8.8", "192.168.1.1", "172.16.0.1"} {
		out, err := exec.Command("ip", "route", "get", dst).CombinedOutput()
		if err == nil {
			return fmt.Errorf("the node's network namespace has a route to %s: %s", dst, strings.TrimSpace(string(out)))
		}
		if !strings.Contains(string(out), "unreachable") {
			return fmt.Errorf("ip route get %s: %v: %s", dst, err, out)
		}
	}
	// (Not /sys/class/net: that sysfs shows the namespace it was mounted in.)
	out, err = exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -o link show: %w: %s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		switch name {
		case "lo", nodeLink, nodePeer, "cni0":
		default:
			if !strings.HasPrefix(name, "veth") {
				return fmt.Errorf("unexpected network interface %s in the node's namespace", name)
			}
		}
	}
	return nil
}
