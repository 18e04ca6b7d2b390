// Command demo shows sds-injector end to end on a local control plane:
// it starts kube-apiserver and etcd (built from source on first use), runs
// the real `sds-injector serve` binary, registers the shipped namespace-mode
// webhook, creates an opted-in namespace with a Gloo Edge gateway pod and a
// plain app pod, prints what the API server stored, and cleans up.
//
// Run it with `make demo` from the repository root.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/webhook/inject"

	"github.com/sds-injector/sds-injector/test/harness"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, err := repoRoot()
	if err != nil {
		return err
	}

	step("building sds-injector")
	bin, err := harness.Build(ctx, harness.Injector, harness.BuildOptions{})
	if err != nil {
		return err
	}

	step("starting kube-apiserver and etcd (the first run builds them from source, ~10 minutes)")
	started := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Options{WebhookInstallOptions: envtest.WebhookInstallOptions{}})
	if err != nil {
		return err
	}
	defer func() {
		step("cleaning up")
		if err := cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the control plane:", err)
		}
	}()
	fmt.Printf("control plane up in %s (kubeconfig %s)\n", time.Since(started).Round(time.Millisecond), cp.KubeconfigPath)

	w := cp.WebhookInstallOptions
	healthPort, releasePort, err := harness.ReservePort("127.0.0.1")
	if err != nil {
		return err
	}
	defer releasePort()
	step("running sds-injector serve on %s:%d", w.LocalServingHost, w.LocalServingPort)
	serve := exec.Command(bin, "serve",
		"--host", w.LocalServingHost, "--port", strconv.Itoa(w.LocalServingPort), "--cert-dir", w.LocalServingCertDir,
		"--metrics-bind-address", "0", "--health-probe-bind-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(healthPort)))
	serve.Stdout, serve.Stderr = os.Stdout, os.Stderr
	if err := serve.Start(); err != nil {
		return err
	}
	defer func() {
		_ = serve.Process.Signal(syscall.SIGTERM)
		_ = serve.Wait()
	}()
	readyCtx, readyCancel := context.WithTimeout(ctx, 30*time.Second)
	defer readyCancel()
	if err := harness.WaitHTTP(readyCtx, fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort)); err != nil {
		return err
	}

	step("registering deploy/webhook/namespace-mode.yaml")
	mwc, err := cp.InstallMutatingWebhookFile(ctx, filepath.Join(root, "deploy", "webhook", "namespace-mode.yaml"))
	if err != nil {
		return err
	}
	fmt.Printf("MutatingWebhookConfiguration %s: webhook %s, failurePolicy %s\n", mwc.Name, mwc.Webhooks[0].Name, *mwc.Webhooks[0].FailurePolicy)
	// The apiserver loads webhook configurations asynchronously.
	if err := cp.WaitShippedWebhooks(ctx, mwc, true, nil); err != nil {
		return err
	}

	const ns = "gloo-system"
	step("creating namespace %s with label %s=enabled", ns, inject.NamespaceLabel)
	c := cp.Client
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{inject.NamespaceLabel: "enabled"}}}); err != nil {
		return err
	}
	for _, sa := range []string{"gateway-proxy", "default"} {
		if err := c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: ns}}); err != nil {
			return err
		}
	}

	for _, file := range []string{"gloo-gateway-proxy.yaml", "plain-app.yaml"} {
		pod, err := readPod(filepath.Join(root, "docs", "examples", file))
		if err != nil {
			return err
		}
		step("creating pod %s from docs/examples/%s", pod.Name, file)
		before := summary(pod)
		if err := c.Create(ctx, pod); err != nil {
			return err
		}
		var stored corev1.Pod
		if err := c.Get(ctx, client.ObjectKeyFromObject(pod), &stored); err != nil {
			return err
		}
		fmt.Printf("sent:   %s\nstored: %s\n", before, summary(&stored))
		if st, ok := stored.Annotations[inject.AnnotationStatus]; ok {
			fmt.Printf("INJECTED, %s=%s\n", inject.AnnotationStatus, st)
			for _, ctr := range stored.Spec.Containers {
				for _, m := range ctr.VolumeMounts {
					if m.Name == inject.VolumeWorkloadSocket {
						fmt.Printf("  container %-14s mounts the SDS socket dir %s\n", ctr.Name, m.MountPath)
					}
				}
			}
		} else {
			fmt.Println("UNTOUCHED (not a gateway)")
		}
	}
	return nil
}

func summary(p *corev1.Pod) string {
	var names, vols []string
	for _, c := range p.Spec.InitContainers {
		names = append(names, "init:"+c.Name)
	}
	for _, c := range p.Spec.Containers {
		names = append(names, c.Name)
	}
	for _, v := range p.Spec.Volumes {
		vols = append(vols, v.Name)
	}
	return fmt.Sprintf("containers [%s] volumes [%s]", strings.Join(names, " "), strings.Join(vols, " "))
}

func readPod(path string) (*corev1.Pod, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &pod, nil
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "deploy", "webhook", "namespace-mode.yaml")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("run the demo from inside the sds-injector repository")
		}
		dir = parent
	}
}
