package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
)

// runFloorServer is the floor the cpu mode compares sds-injector with
// (`load -floor cpu` runs this binary as the server): controller-runtime's
// webhook server with the TLS settings sds-injector uses, its metrics
// server, and a handler that reads the body and writes a fixed answer of
// the real answer's size (a patch of the injection's size for the Gloo
// review, a bare "allowed" for the other) — everything a review costs but
// the decoding, the engine and the encoding. It accepts the flags
// startServer passes.
func runFloorServer(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	host := fs.String("host", "", "")
	port := fs.Int("port", 0, "")
	certDir := fs.String("cert-dir", "", "")
	metrics := fs.String("metrics-bind-address", "0", "")
	health := fs.String("health-probe-bind-address", "", "")
	fs.String("zap-log-level", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := webhook.NewServer(webhook.Options{Host: *host, Port: *port, CertDir: *certDir})
	// The answer sds-injector gives the recorded Gloo review is about 5 KB
	// (a ~3.6 KB patch, base64): the floor answers with a patch as long.
	patch := bytes.Repeat([]byte("A"), 4800)
	injected := []byte(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","response":{"uid":"x","allowed":true,"status":{"metadata":{},"code":200},"patch":"` +
		string(patch) + `","patchType":"JSONPatch"}}`)
	allowed := []byte(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","response":{"uid":"x","allowed":true,"status":{"metadata":{},"code":200}}}`)
	gateway := []byte(`"gloo":"gateway-proxy"`)
	srv.Register("/inject", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		if _, err := io.Copy(&b, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		out := allowed
		if bytes.Contains(b.Bytes(), gateway) {
			out = injected
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(out)))
		_, _ = w.Write(out)
	}))
	// sds-injector's binary registers the Go collector in
	// server.NewMetrics; this floor server does not call it.
	if err := ctrlmetrics.Registry.Register(collectors.NewGoCollector()); err != nil {
		if !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	if *metrics != "0" {
		ms, err := metricsserver.NewServer(metricsserver.Options{BindAddress: *metrics}, nil, nil)
		if err != nil {
			return err
		}
		go func() { _ = ms.Start(ctx) }()
	}
	if *health != "" && *health != "0" {
		l, err := net.Listen("tcp", *health)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := srv.StartedChecker()(r); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprint(w, "ok")
		}))
		go func() { _ = http.Serve(l, mux) }()
	}
	return srv.Start(ctx)
}

// selfBinary is this load tool's own executable, run as the floor server.
func selfBinary() (string, error) { return os.Executable() }
