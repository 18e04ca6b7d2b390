// Package flavors proves, for every agent flavor, that the pod the engine
// produces gets its gateway a certificate issued by a real istiod.
//
// A local kube-apiserver and etcd (package controlplane) and a real istiod
// (package istiod, built from the istio.io/istio module) run on loopback.
// Each case takes a gateway pod from docs/examples, injects it with
// inject.Inject, creates the result in the apiserver and hands the stored pod
// to the kubelet emulator (package kubelet), which prepares its volumes
// (token from the TokenRequest API, istio-ca-root-cert as istiod published
// it), and runs the agent container's command with the real binary. The
// checks then look at the pod from the gateway container: a real SDS client
// on the socket path the gateway mounts, or the certificate files at the
// gateway's mount, running as the gateway container's user.
//
// See docs/flavor-proof.md for what is proven, what is not, and timings.
package flavors

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/flavors/kubelet"
	"github.com/sds-injector/sds-injector/test/istiod"
	"github.com/sds-injector/sds-injector/test/sdsclient"
)

// suite is the shared environment, set up once by TestMain.
type suite struct {
	cp        *controlplane.ControlPlane
	istiod    *istiod.Istiod
	clientset kubernetes.Interface
	// binDir is readable by every user: the containers' UIDs run the copies
	// of binaries it holds (the test binary as the gateway-view helper, the
	// stand-in Envoy).
	binDir string
	// helper is this test binary, runnable by any user.
	helper string
	// standInEnvoy is the stand-in for the proxyv2 image's Envoy.
	standInEnvoy string
	// apiHost and apiPort are the apiserver's address (KUBERNETES_SERVICE_*).
	apiHost, apiPort string
	// setupTime is how long the control plane and istiod took to start.
	cpStart, istiodStart time.Duration
}

var (
	env      *suite
	setupErr error
)

// gatewayViewEnv switches the test binary into the gateway-view helper
// (see gatewayViewMain).
const (
	gatewayViewEnv  = "SDS_INJECTOR_GATEWAY_VIEW"
	gatewayViewPath = "SDS_INJECTOR_GATEWAY_VIEW_PATH"
	gatewayViewNode = "SDS_INJECTOR_GATEWAY_VIEW_NODE"
	gatewayViewMark = "GATEWAY-VIEW-RESULT: "
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(gatewayViewEnv); mode != "" {
		os.Exit(gatewayViewMain(mode))
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		// Every test skips with the reason (see needSuite).
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	s, cleanup, err := setUp(ctx)
	defer cleanup()
	if err != nil {
		setupErr = err
		fmt.Fprintln(os.Stderr, "flavors: setting up the control plane and istiod:", err)
	}
	env = s
	return m.Run()
}

func setUp(ctx context.Context) (*suite, func(), error) {
	s := &suite{}
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	started := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		return nil, cleanup, err
	}
	s.cp, s.cpStart = cp, time.Since(started)
	cleanups = append(cleanups, func() {
		if err := cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "flavors: stopping the control plane:", err)
		}
	})
	u, err := url.Parse(cp.Config.Host)
	if err != nil {
		return nil, cleanup, err
	}
	s.apiHost, s.apiPort = u.Hostname(), u.Port()
	if s.clientset, err = kubernetes.NewForConfig(cp.Config); err != nil {
		return nil, cleanup, err
	}

	started = time.Now()
	ist, err := istiod.Start(ctx, cp, istiod.Options{})
	if err != nil {
		return nil, cleanup, err
	}
	s.istiod, s.istiodStart = ist, time.Since(started)
	cleanups = append(cleanups, func() {
		if err := ist.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "flavors: stopping istiod:", err)
		}
	})

	// A directory every user can read: /tmp/... from MkdirTemp is 0700.
	if s.binDir, err = os.MkdirTemp("", "flavors-bin-"); err != nil {
		return nil, cleanup, err
	}
	cleanups = append(cleanups, func() { _ = os.RemoveAll(s.binDir) })
	if err := os.Chmod(s.binDir, 0o755); err != nil {
		return nil, cleanup, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, cleanup, err
	}
	s.helper = filepath.Join(s.binDir, "gateway-view")
	if err := kubelet.LinkOrCopy(self, s.helper, 0o755); err != nil {
		return nil, cleanup, err
	}
	// The stand-in Envoy of the reference recipe: pilot-agent runs it as
	// its Envoy and lives as long as it does. It only has to stay alive;
	// exec, so that stopping the agent's process group ends it too.
	s.standInEnvoy = filepath.Join(s.binDir, "stand-in-envoy")
	script := "#!/bin/sh\n# Stand-in for Envoy (test only): stays alive, serves nothing.\nexec sleep 2147483647\n"
	if err := os.WriteFile(s.standInEnvoy, []byte(script), 0o755); err != nil {
		return nil, cleanup, err
	}
	if err := os.Chmod(s.standInEnvoy, 0o755); err != nil {
		return nil, cleanup, err
	}
	return s, cleanup, nil
}

// needSuite skips under -short and fails if the environment could not be
// set up.
func needSuite(t *testing.T) *suite {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a local kube-apiserver + etcd and a real istiod (built from source and cached on first use); run without -short")
	}
	if setupErr != nil {
		t.Fatalf("setting up the control plane and istiod: %v", setupErr)
	}
	return env
}

// gatewayView is what the gateway container sees: the helper runs with the
// gateway container's root as working directory, as its user, with its
// environment.
type gatewayView struct {
	Mode   string   `json:"mode"`
	Path   string   `json:"path"`
	UID    int      `json:"uid"`
	GID    int      `json:"gid"`
	Groups []int    `json:"groups"`
	Error  string   `json:"error,omitempty"`
	Took   Duration `json:"took"`
	// sds mode
	Secrets map[string]*sdsclient.Secret `json:"secrets,omitempty"`
	// files mode
	Files      map[string][]byte `json:"files,omitempty"`
	FileErrors map[string]string `json:"fileErrors,omitempty"`
}

// Duration marshals as a string.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// Files the istio-agent-files flavor writes (OUTPUT_CERTS).
var certFiles = []string{"cert-chain.pem", "key.pem", "root-cert.pem"}

// gatewayViewMain is the helper: it reads the path given in the
// environment as the gateway would, relative to its root (the working
// directory), and prints what it found as JSON.
func gatewayViewMain(mode string) int {
	started := time.Now()
	p := os.Getenv(gatewayViewPath)
	rel := "." + path.Clean("/"+p)
	res := gatewayView{Mode: mode, Path: p, UID: os.Getuid(), GID: os.Getgid()}
	res.Groups, _ = os.Getgroups()
	switch mode {
	case "sds":
		if _, err := os.Stat(rel); err != nil {
			res.Error = err.Error()
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		secrets, err := sdsclient.Fetch(ctx, rel, os.Getenv(gatewayViewNode), sdsclient.WorkloadCert, sdsclient.RootCA)
		res.Secrets = secrets
		if err != nil {
			res.Error = err.Error()
		}
	case "files":
		res.Files, res.FileErrors = map[string][]byte{}, map[string]string{}
		for _, f := range certFiles {
			b, err := os.ReadFile(path.Join(rel, f))
			if err != nil {
				res.FileErrors[f] = err.Error()
				continue
			}
			res.Files[f] = b
		}
	default:
		res.Error = "unknown mode " + mode
	}
	res.Took = Duration(time.Since(started))
	b, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println(gatewayViewMark + string(b))
	return 0
}
