package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/internal/agent"
	"github.com/sds-injector/sds-injector/internal/agent/fakeca"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// TestInjectedContract checks the engine's sds-agent container against this
// agent: every variable it sets is one the agent reads, the agent accepts
// the values, the probe and postStart commands are this binary's
// subcommands, and nothing turns on a TCP listener.
func TestInjectedContract(t *testing.T) {
	for _, version := range []string{"1.13.9", "1.21.6", inject.DefaultIstioVersion} {
		for _, native := range []bool{false, true} {
			c := inject.DefaultConfig()
			c.Flavor, c.IstioVersion, c.NativeSidecar = inject.FlavorSDSAgent, version, native
			pod := readPod(t, "../../docs/examples/gloo-gateway-proxy.yaml")
			res := inject.Inject(pod, c.MustResolve())
			if res.Decision.Outcome != inject.OutcomeInjected {
				t.Fatalf("%s: %+v", version, res.Decision)
			}
			var ctr *corev1.Container
			for _, list := range [][]corev1.Container{res.Pod.Spec.InitContainers, res.Pod.Spec.Containers} {
				for i := range list {
					if list[i].Name == "sds-agent" {
						ctr = &list[i]
					}
				}
			}
			if ctr == nil {
				t.Fatal("no sds-agent container")
			}
			known := map[string]bool{}
			for _, s := range agent.Settings {
				known[s.Env] = true
			}
			env := map[string]string{}
			for _, e := range ctr.Env {
				if !known[e.Name] {
					t.Errorf("%s: the engine sets %s, which the agent does not read", version, e.Name)
				}
				v := e.Value
				if e.ValueFrom != nil {
					// What the kubelet would resolve the downward API to.
					v = map[string]string{"metadata.name": "gw-0", "metadata.namespace": "gw", "status.podIP": "127.0.0.1",
						"spec.serviceAccountName": "gateway", "status.hostIP": "127.0.0.2"}[e.ValueFrom.FieldRef.FieldPath]
				}
				env[e.Name] = v
			}
			cfg, err := agent.Load(flag.NewFlagSet("t", flag.ContinueOnError), ctr.Args, func(k string) string { return env[k] })
			if err != nil {
				t.Fatalf("%s: the agent rejects the injected configuration: %v", version, err)
			}
			if cfg.TCPAddr != "" || cfg.MetricsAddr != "" {
				t.Errorf("%s: injected configuration opens TCP listeners", version)
			}
			// The socket is in the volume shared with the gateway.
			gwMounts := map[string]bool{}
			for _, ct := range res.Pod.Spec.Containers {
				if ct.Name == "gateway-proxy" {
					for _, m := range ct.VolumeMounts {
						gwMounts[m.MountPath] = true
					}
				}
			}
			if !gwMounts[filepath.Dir(cfg.SocketPath)] {
				t.Errorf("%s: socket %s is not in a directory the gateway mounts (%v)", version, cfg.SocketPath, gwMounts)
			}
			if len(ctr.Command) != 0 || len(ctr.Ports) != 0 {
				t.Errorf("%s: command %v ports %v", version, ctr.Command, ctr.Ports)
			}
			var cmds [][]string
			for _, p := range []*corev1.Probe{ctr.ReadinessProbe, ctr.StartupProbe} {
				if p != nil {
					cmds = append(cmds, p.Exec.Command)
				}
			}
			if ctr.Lifecycle != nil && ctr.Lifecycle.PostStart != nil {
				cmds = append(cmds, ctr.Lifecycle.PostStart.Exec.Command)
			}
			for _, cmd := range cmds {
				if cmd[0] != "sds-agent" || !slices.Contains([]string{"probe", "wait"}, cmd[1]) {
					t.Errorf("%s: command %v is not an sds-agent subcommand", version, cmd)
				}
			}
		}
	}
}

func readPod(t *testing.T, path string) *corev1.Pod {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{}
	if err := yaml.Unmarshal(b, pod); err != nil {
		t.Fatal(err)
	}
	return pod
}

func TestProbeAndWait(t *testing.T) {
	ca, err := fakeca.New("cluster.local", "Kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "sdsm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("token", []byte(fakeca.Token("gw", "gateway", time.Now().Add(time.Hour))))
	write("root.pem", ca.RootPEM())
	socket := filepath.Join(dir, "socket")
	env := map[string]string{"SDS_SOCKET_PATH": socket}
	getenv := func(k string) string { return env[k] }

	var out, errb bytes.Buffer
	if code := run([]string{"probe", "--timeout=300ms"}, getenv, &out, &errb); code != 1 || !strings.Contains(errb.String(), "no SDS socket") {
		t.Fatalf("probe without agent: %d %q", code, errb.String())
	}

	// The CA is not up yet: the agent serves its socket but has no certificate.
	if err := ca.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer ca.Stop()
	addr, listenAddr := ca.Addr(), ca.ListenAddr()
	ca.Stop()
	cfg, err := agent.Load(flag.NewFlagSet("t", flag.ContinueOnError), []string{
		"--ca-addr=" + addr, "--namespace=gw", "--service-account=gateway", "--token-path=" + filepath.Join(dir, "token"),
		"--root-cert-path=" + filepath.Join(dir, "root.pem"), "--socket-path=" + socket, "--backoff-initial=50ms", "--backoff-max=200ms",
	}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	a := agent.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-a.Started()

	errb.Reset()
	if code := run([]string{"probe", "--timeout=300ms"}, getenv, &out, &errb); code != 1 || !strings.Contains(errb.String(), "not ready") {
		t.Fatalf("probe without certificate: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"wait", "--timeout=500ms", "--period=100ms"}, getenv, &out, &errb); code != 1 || !strings.Contains(errb.String(), "gave up") {
		t.Fatalf("wait without certificate: %d %q", code, errb.String())
	}

	// The CA comes up: wait returns once the certificate is served.
	waitDone := make(chan int, 1)
	var waitOut bytes.Buffer
	go func() {
		waitDone <- run([]string{"wait", "--timeout=60s", "--period=100ms"}, getenv, &waitOut, io.Discard)
	}()
	if err := ca.Start(listenAddr); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-waitDone:
		if code != 0 || !strings.Contains(waitOut.String(), "ready: spiffe://cluster.local/ns/gw/sa/gateway valid until") {
			t.Fatalf("wait: %d %q", code, waitOut.String())
		}
	case <-time.After(90 * time.Second):
		t.Fatal("wait did not return")
	}
	out.Reset()
	if code := run([]string{"probe"}, getenv, &out, io.Discard); code != 0 {
		t.Fatalf("probe: %d", code)
	}
}

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"frobnicate"}, func(string) string { return "" }, &out, &errb); code != 2 || !strings.Contains(errb.String(), "unknown command") {
		t.Errorf("%d %q", code, errb.String())
	}
	if code := run([]string{"--renew-fraction=2"}, func(string) string { return "" }, &out, &errb); code != 2 {
		t.Errorf("bad flag: %d", code)
	}
	out.Reset()
	if code := run([]string{"version"}, func(string) string { return "" }, &out, &errb); code != 0 || strings.TrimSpace(out.String()) != version {
		t.Errorf("version: %d %q", code, out.String())
	}
}

// TestSPIREWaitContract: the engine's spire-wait init container runs this
// binary's wait-socket mode with arguments it accepts.
func TestSPIREWaitContract(t *testing.T) {
	c := inject.DefaultConfig()
	c.Flavor, c.IdentityProvider.SPIRE = inject.FlavorSPIRE, &inject.SPIREConfig{CSIDriver: inject.DefaultSPIRECSIDriver}
	pod := readPod(t, "../../docs/examples/envoy-gateway-proxy.yaml")
	res := inject.Inject(pod, c.MustResolve())
	if res.Decision.Outcome != inject.OutcomeInjected {
		t.Fatalf("%+v", res.Decision)
	}
	ctr := res.Pod.Spec.InitContainers[0]
	if ctr.Name != inject.SPIREWaitContainer || len(ctr.Command) != 0 || len(ctr.Args) == 0 || ctr.Args[0] != "wait-socket" {
		t.Fatalf("first init container %s: command %v args %v", ctr.Name, ctr.Command, ctr.Args)
	}
	if !slices.Contains(ctr.Args, "--socket-path="+inject.SPIRESocketPath) || !slices.Contains(ctr.Args, "--timeout=60s") {
		t.Errorf("args %v", ctr.Args)
	}
	// The same arguments, with a socket that does not exist here and a
	// short timeout laid over: the mode runs (exit 1, its timeout line),
	// rather than rejecting them as usage errors (exit 2).
	dir := t.TempDir()
	args := append(slices.Clone(ctr.Args), "--socket-path="+filepath.Join(dir, "socket"), "--timeout=300ms", "--period=100ms")
	var out, errb bytes.Buffer
	if code := run(args, func(string) string { return "" }, &out, &errb); code != 1 || !strings.Contains(errb.String(), "timed out after 300ms") {
		t.Fatalf("wait-socket %v: %d %q", args, code, errb.String())
	}
}

func TestWaitSocket(t *testing.T) {
	ca, err := fakeca.New("cluster.local", "Kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "sdsw")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	socket := filepath.Join(dir, "socket")
	getenv := func(string) string { return "" }
	wait := func(timeout string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run([]string{"wait-socket", "--socket-path=" + socket, "--timeout=" + timeout, "--period=50ms"}, getenv, &out, &errb)
		return code, out.String(), errb.String()
	}

	// Nothing there: the timeout line names the socket and what it waited for.
	code, _, errs := wait("300ms")
	if code != 1 || !strings.Contains(errs, "timed out after 300ms: the SDS socket "+socket+" never served ROOTCA") || !strings.Contains(errs, "no SDS socket") {
		t.Fatalf("no socket: %d %q", code, errs)
	}
	// A socket that accepts connections but speaks no SDS is no answer.
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	code, _, errs = wait("1s")
	l.Close()
	if code != 1 || !strings.Contains(errs, "timed out after 1s") {
		t.Fatalf("silent socket: %d %q", code, errs)
	}
	_ = os.Remove(socket)

	// A real SDS server (this agent; its CA down, so it has no
	// certificate yet but serves its root): wait-socket returns once it
	// answers, and not before the agent is started.
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("token", []byte(fakeca.Token("gw", "gateway", time.Now().Add(time.Hour))))
	write("root.pem", ca.RootPEM())
	cfg, err := agent.Load(flag.NewFlagSet("t", flag.ContinueOnError), []string{
		"--ca-addr=127.0.0.1:1", "--namespace=gw", "--service-account=gateway", "--token-path=" + filepath.Join(dir, "token"),
		"--root-cert-path=" + filepath.Join(dir, "root.pem"), "--socket-path=" + socket, "--backoff-initial=50ms", "--backoff-max=200ms",
	}, getenv)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		code     int
		out, err string
		at       time.Time
	}
	waited := make(chan result, 1)
	go func() {
		code, out, errs := wait("60s")
		waited <- result{code, out, errs, time.Now()}
	}()
	// The waiter must still be waiting while no server runs.
	select {
	case r := <-waited:
		t.Fatalf("wait-socket returned before any server ran: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
	a := agent.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := time.Now()
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case r := <-waited:
		if r.code != 0 || !strings.Contains(r.out, socket+" answers: served ROOTCA after") || r.at.Before(started) {
			t.Fatalf("wait-socket: %+v", r)
		}
		if !strings.Contains(r.err, "waiting up to 1m0s for the SDS socket "+socket+" to serve ROOTCA") {
			t.Errorf("no start line: %q", r.err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("wait-socket did not return once the agent served its socket")
	}
}
