package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/server"

	"github.com/sds-injector/sds-injector/test/harness"
)

// apiserverMetric sums a counter from the API server's /metrics whose line
// contains every fragment.
func apiserverMetric(t *testing.T, name string, fragments ...string) float64 {
	t.Helper()
	rc, err := restClient()
	if err != nil {
		t.Fatal(err)
	}
	body, err := rc.Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		ok := true
		for _, f := range fragments {
			ok = ok && strings.Contains(line, f)
		}
		if ok {
			v, _ := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
			sum += v
		}
	}
	return sum
}

// waitFor polls cond (a counter read, no error) for up to a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	harness.Eventually(t, time.Minute, what, func(context.Context) (bool, error) { return cond(), nil })
}

// TestWebhookKilledMidLoad: the real binary is SIGKILLed while pods are
// being created. The fail-open mode admits pods uninjected and the API
// server's fail-open counter shows it; the fail-closed mode refuses them
// naming the webhook; no pod is ever half-injected.
func TestWebhookKilledMidLoad(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	bin := harness.MustBuild(t, harness.Injector, harness.BuildOptions{})
	installMode(t, ModeNamespace)
	installMode(t, ModePerGateway)
	openNS := namespace(t, map[string]string{nsLabel: "enabled"})
	closedNS := namespace(t, nil)

	w := cp.WebhookInstallOptions
	health := harness.FreePort(t, "127.0.0.1")
	cmd := exec.Command(bin, "serve", "--host", w.LocalServingHost, "--port", strconv.Itoa(w.LocalServingPort),
		"--cert-dir", w.LocalServingCertDir, "--metrics-bind-address", "0",
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", health))
	harness.Start(t, "sds-injector", cmd)
	harness.WaitReady(t, 30*time.Second, fmt.Sprintf("http://127.0.0.1:%d/readyz", health))
	failOpenBefore := apiserverMetric(t, "apiserver_admission_webhook_fail_open_count", `name="namespace.sds-injector.io"`)

	var created, refusedNamed, otherErrors atomic.Int64
	var firstOther atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	load := func(ns string, labels map[string]string, prefix string) {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			err := cp.Client.Create(context.Background(), glooPod(t, ns, fmt.Sprintf("%s-%d", prefix, i), labels, nil))
			switch {
			case err == nil:
				created.Add(1)
			case strings.Contains(err.Error(), `failed calling webhook "object-label.sds-injector.io"`):
				refusedNamed.Add(1)
			default:
				otherErrors.Add(1)
				firstOther.CompareAndSwap(nil, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wg.Add(2)
	go load(openNS, nil, "open")
	go load(closedNS, map[string]string{labelInject: "true"}, "closed")
	// Kill once both streams are admitting through the live webhook, and
	// stop once the dead webhook has been seen from both sides: the
	// fail-closed stream refused by name, the fail-open one counted by the
	// apiserver.
	waitFor(t, "admissions through the live webhook", func() bool { return created.Load() >= 20 })
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, time.Minute, "admissions while the webhook is dead", func(context.Context) (bool, error) {
		if otherErrors.Load() != 0 {
			return false, fmt.Errorf("a creation failed for another reason than the fail-closed webhook: %v", firstOther.Load())
		}
		return refusedNamed.Load() >= 5 &&
			apiserverMetric(t, "apiserver_admission_webhook_fail_open_count", `name="namespace.sds-injector.io"`) > failOpenBefore, nil
	})
	close(stop)
	wg.Wait()

	if n := otherErrors.Load(); n > 0 {
		t.Fatalf("%d creations failed for another reason than the fail-closed webhook: %v", n, firstOther.Load())
	}
	if refusedNamed.Load() == 0 {
		t.Error("no fail-closed creation was refused while the webhook was dead")
	}
	var open, closed corev1.PodList
	if err := cp.Client.List(context.Background(), &open, client.InNamespace(openNS)); err != nil {
		t.Fatal(err)
	}
	if err := cp.Client.List(context.Background(), &closed, client.InNamespace(closedNS)); err != nil {
		t.Fatal(err)
	}
	injected, untouched := 0, 0
	for i := range append(open.Items, closed.Items...) {
		pod := append(open.Items, closed.Items...)[i]
		_, hasStatus := pod.Annotations[inject.AnnotationStatus]
		agents := 0
		for _, c := range pod.Spec.Containers {
			if c.Name == "istio-proxy" {
				agents++
			}
		}
		switch {
		case hasStatus && agents == 1 && len(pod.Spec.Volumes) > 1:
			injected++
		case !hasStatus && agents == 0 && len(pod.Spec.Volumes) == 1:
			untouched++
		default:
			t.Errorf("pod %s/%s is half-injected: status=%t agents=%d volumes=%d", pod.Namespace, pod.Name, hasStatus, agents, len(pod.Spec.Volumes))
		}
	}
	for _, pod := range closed.Items {
		if _, ok := pod.Annotations[inject.AnnotationStatus]; !ok {
			t.Errorf("fail-closed pod %s was admitted without injection", pod.Name)
		}
	}
	t.Logf("stored pods: %d injected, %d untouched (admitted while the webhook was down); %d refused by the fail-closed mode",
		injected, untouched, refusedNamed.Load())
	if untouched == 0 {
		t.Error("no pod was admitted uninjected in the fail-open mode while the webhook was dead")
	}
	if after := apiserverMetric(t, "apiserver_admission_webhook_fail_open_count", `name="namespace.sds-injector.io"`); after <= failOpenBefore {
		t.Errorf("apiserver_admission_webhook_fail_open_count for namespace.sds-injector.io did not rise (%v -> %v): the fail-open admissions are invisible", failOpenBefore, after)
	}
}

// lb is a TCP load balancer standing in for the webhook Service: new
// connections go round-robin to backends whose /readyz succeeds, as
// EndpointSlices would route them.
type lb struct {
	ln       net.Listener
	backends []lbBackend
	next     atomic.Uint64
	stop     chan struct{}
}

type lbBackend struct {
	addr, readyz string
	ready        *atomic.Bool
}

func startLB(t *testing.T, backends []lbBackend) *lb {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &lb{ln: ln, backends: backends, stop: make(chan struct{})}
	go func() { // readiness probing, like the kubelet + EndpointSlice controller
		hc := &http.Client{Timeout: 200 * time.Millisecond}
		for {
			for _, b := range l.backends {
				resp, err := hc.Get(b.readyz)
				ok := err == nil && resp.StatusCode == http.StatusOK
				if resp != nil {
					resp.Body.Close()
				}
				b.ready.Store(ok)
			}
			select {
			case <-l.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go l.serve(c)
		}
	}()
	t.Cleanup(func() { close(l.stop); ln.Close() })
	return l
}

func (l *lb) serve(c net.Conn) {
	defer c.Close()
	for try := 0; try < 2*len(l.backends); try++ {
		b := l.backends[l.next.Add(1)%uint64(len(l.backends))]
		if !b.ready.Load() {
			continue
		}
		up, err := net.DialTimeout("tcp", b.addr, time.Second)
		if err != nil {
			continue
		}
		defer up.Close()
		go func() { _, _ = io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
		_, _ = io.Copy(c, up)
		return
	}
}

// TestReplicaRestartUnderLoad: two replicas behind a Service-like balancer,
// one restarted (graceful drain) while a fail-closed webhook admits a
// stream of pods: zero failed admissions.
func TestReplicaRestartUnderLoad(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	w := cp.WebhookInstallOptions
	settings := inject.DefaultConfig().MustResolve()
	type replica struct {
		port, health int
		cancel       context.CancelFunc
		done         chan error
	}
	start := func(r *replica) {
		srv, err := server.New(server.Options{Settings: settings, Host: "127.0.0.1", Port: r.port, CertDir: w.LocalServingCertDir,
			MetricsAddr: "0", HealthAddr: fmt.Sprintf("127.0.0.1:%d", r.health), DrainDelay: time.Second, Logger: logr.Discard()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		r.cancel, r.done = cancel, make(chan error, 1)
		go func() { r.done <- srv.Start(ctx) }()
		harness.WaitReady(t, 30*time.Second, fmt.Sprintf("http://127.0.0.1:%d/readyz", r.health))
	}
	replicas := []*replica{{port: harness.FreePort(t, "127.0.0.1"), health: harness.FreePort(t, "127.0.0.1")}, {port: harness.FreePort(t, "127.0.0.1"), health: harness.FreePort(t, "127.0.0.1")}}
	var backends []lbBackend
	for _, r := range replicas {
		start(r)
		backends = append(backends, lbBackend{addr: fmt.Sprintf("127.0.0.1:%d", r.port), readyz: fmt.Sprintf("http://127.0.0.1:%d/readyz", r.health), ready: new(atomic.Bool)})
	}
	t.Cleanup(func() {
		for _, r := range replicas {
			r.cancel()
			<-r.done
		}
	})
	balancer := startLB(t, backends)
	mwc, err := cp.InstallMutatingWebhookFileAt(context.Background(), filepath.Join(repoRoot, "deploy", "webhook", string(ModePerGateway)+".yaml"), balancer.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeWebhooks(t, mwc) })
	waitWebhooks(t, mwc, true)
	ns := namespace(t, nil)

	load := startAdmissionLoad(t, ns, 3)
	load.waitMore(t, 20, "before the restart")
	r := replicas[0]
	r.cancel()
	<-r.done
	load.waitMore(t, 20, "while one replica is gone")
	start(r)
	load.waitMore(t, 20, "after the replica came back")
	load.stop(t, "while a replica restarted", 50)
}
