package node

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/istiod"
	"github.com/sds-injector/sds-injector/test/netns"
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

// nodeNet is the node's network namespace (package netns).
var nodeNet = netns.Network{CIDR: nodeCIDR, Link: nodeLink, Peer: nodePeer, Allow: []string{"cni0", "veth*"}}

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
// and mount namespaces (package netns); its exit code is returned. The inner
// call sets up the network (lo, NodeIP, no route out: it fails if there is
// one) and a private /etc/hosts and /run/containerd, then calls inside.
// Anything that cannot be set up fails the run with the reason; nothing is
// skipped.
func Main(prepare func(ctx context.Context, p *Prepared) error, inside func(p *Prepared) int) int {
	return netns.Main(netns.Suite{
		Name:    "node",
		RootFor: "network namespace, containerd, kubelet",
		Network: nodeNet,
		Prepare: func(ctx context.Context) ([]string, func(), error) { return outer(ctx, prepare) },
		Run: func(link string) int {
			p, err := enter(os.Getenv(insideEnv))
			if err != nil {
				fmt.Fprintln(os.Stderr, "node: FAIL: inside the network namespace:", err)
				return 1
			}
			p.Link = link
			return inside(p)
		},
	})
}

// SuiteTimeout bounds the context RunMain gives inside: the node's start-up
// and the suite's own set-up.
const SuiteTimeout = 10 * time.Minute

// RunMain is the TestMain of a real-node suite named name: under -short it
// runs the tests without a node (each skips with its reason); otherwise it
// runs Main with prepare and, inside the namespace, inside, which starts
// what the suite needs, runs m and returns its code. An error from inside
// fails the run ("<name>: FAIL: <error>"). It returns the exit code:
//
//	func TestMain(m *testing.M) { os.Exit(node.RunMain(m, "flavors", prepare, inside)) }
func RunMain(m *testing.M, name string, prepare func(context.Context, *Prepared) error,
	inside func(ctx context.Context, m *testing.M, p *Prepared) (int, error)) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	return Main(prepare, func(p *Prepared) int {
		ctx, cancel := context.WithTimeout(context.Background(), SuiteTimeout)
		defer cancel()
		code, err := inside(ctx, m, p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: FAIL: %v\n", name, err)
			return 1
		}
		return code
	})
}

// outer prepares the node outside the namespace and returns the inner
// run's environment.
func outer(ctx context.Context, prepare func(ctx context.Context, p *Prepared) error) (_ []string, cleanup func(), _ error) {
	started := time.Now()
	if err := EnsurePackages(ctx); err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "sdsnode-")
	if err != nil {
		return nil, nil, err
	}
	cleanup = func() { _ = os.RemoveAll(dir) }
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, cleanup, err
	}
	p := &Prepared{Dir: dir, Values: map[string]string{}, NodeName: filepath.Base(dir)}
	if p.KubeBinDir, err = controlplane.NodeBinaryDir(ctx); err != nil {
		return nil, cleanup, err
	}
	if p.IstioBinDir, err = istiod.BinaryDir(ctx, ""); err != nil {
		return nil, cleanup, err
	}
	if p.IstioModuleDir, err = istiod.ModuleDir(ctx, ""); err != nil {
		return nil, cleanup, err
	}
	pause, err := BuildStatic(ctx, dir, "./test/node/cmd/pause")
	if err != nil {
		return nil, cleanup, err
	}
	if err := p.AddImage(&Image{Ref: PauseRef, Files: map[string]string{"/pause": pause}, Executable: []string{"/pause"},
		Config: imageConfig([]string{"/pause"}, "65535")}); err != nil {
		return nil, cleanup, err
	}
	if prepare != nil {
		if err := prepare(ctx, p); err != nil {
			return nil, cleanup, fmt.Errorf("the suite's prepare: %w", err)
		}
	}
	p.PrepareTook = time.Since(started)
	b, err := json.Marshal(p)
	if err != nil {
		return nil, cleanup, err
	}
	if err := os.WriteFile(filepath.Join(dir, preparedFn), b, 0o644); err != nil {
		return nil, cleanup, err
	}
	return []string{insideEnv + "=" + dir,
		"KUBEBUILDER_ASSETS=" + p.KubeBinDir, istiod.EnvBinaryDir + "=" + p.IstioBinDir, istiod.EnvSourceDir + "=" + p.IstioModuleDir,
	}, cleanup, nil
}

// enter runs inside the new namespaces, once package netns has set up the
// network: the prepared state, the hosts file, run dirs.
func enter(dir string) (*Prepared, error) {
	b, err := os.ReadFile(filepath.Join(dir, preparedFn))
	if err != nil {
		return nil, err
	}
	var p Prepared
	if err := json.Unmarshal(b, &p); err != nil {
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
// interface other than lo, the node link(s), cni0 and veth*, or a route to
// a public address (netns.Network.CheckNoRouteOut).
func CheckNoRouteOut() error { return nodeNet.CheckNoRouteOut() }

// relay makes a server that listens on loopback inside the namespace
// (target, host:port) reachable from the node's pods as name:port: a TCP
// relay on NodeIP:port forwards every connection to target (so TLS stays
// end to end), and name resolves to NodeIP in the namespace's private
// /etc/hosts (host-network pods; pod-network pods need hostAliases). The
// returned function stops the relay.
func (p *Prepared) relay(name, port, target string) (func(), error) {
	stop, err := Relay(net.JoinHostPort(NodeIP, port), target)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(p.Dir, "hosts"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		stop()
		return nil, err
	}
	_, err = fmt.Fprintf(f, "%s\t%s\n", NodeIP, name)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}
