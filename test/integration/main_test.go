// Package integration proves the webhook end to end: a real kube-apiserver
// and etcd (and kube-controller-manager) run locally, the project's shipped
// MutatingWebhookConfigurations are installed, and pods are created through
// the API, so the apiserver's selectors, CEL matchConditions, patch
// application and pod validation are all part of every test.
package integration

import (
	"context"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/server"

	"github.com/sds-injector/sds-injector/test/harness"
)

var cp *controlplane.ControlPlane

// TestMain starts the local control plane (with kube-controller-manager).
// No configurations are installed at start: each test installs the shipped
// file for the mode it exercises (see installMode). envtest still prepares
// the local serving certificate and port.
func TestMain(m *testing.M) {
	os.Exit(controlplane.RunSuite(m, &cp, controlplane.Options{
		WithControllerManager: true,
		WebhookInstallOptions: envtest.WebhookInstallOptions{},
	}, nil))
}

// webhookServer is one running sds-injector webhook in this process,
// configured exactly as `sds-injector serve` configures it.
type webhookServer struct {
	cancel context.CancelFunc
	done   chan error
	srv    *server.Server
}

func startWebhook(t *testing.T, cfg inject.Config, extra map[string]http.Handler) *webhookServer {
	t.Helper()
	settings, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	w := cp.WebhookInstallOptions
	srv, err := server.New(server.Options{
		Settings:    settings,
		OnError:     server.ErrorPolicyDeny,
		Host:        w.LocalServingHost,
		Port:        w.LocalServingPort,
		CertDir:     w.LocalServingCertDir,
		MetricsAddr: "0",
		HealthAddr:  "127.0.0.1:0",
		DrainDelay:  -1,
		Logger:      logr.Discard(),
	})
	if err != nil {
		t.Fatal(err)
	}
	for path, h := range extra {
		srv.Webhook().Register(path, h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ws := &webhookServer{cancel: cancel, done: make(chan error, 1), srv: srv}
	go func() { ws.done <- srv.Start(ctx) }()
	t.Cleanup(ws.stop)
	harness.WaitReady(t, 30*time.Second, "http://"+srv.HealthAddr()+"/readyz")
	return ws
}

func (w *webhookServer) stop() {
	if w.cancel == nil {
		return
	}
	w.cancel()
	<-w.done
	w.cancel = nil
}
