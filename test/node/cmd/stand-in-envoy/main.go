// Command stand-in-envoy is a STAND-IN for Envoy (test only; it is not
// Envoy). The proxyv2 test image ships it as /usr/local/bin/envoy, where
// pilot-agent (Envoy enabled, the istio-proxy flavor) starts it and serves
// SDS for as long as it lives.
//
// What it plays, and nothing more:
//   - the one thing a real Envoy needs before it can become ready in a
//     mesh: the workload certificate. A real Envoy gets its xDS from
//     istiod over mTLS with the certificate the agent serves on the SDS
//     socket; the stand-in reads the sds-grpc cluster's socket and the node
//     ID from the bootstrap the agent rendered (-c), and asks the agent for
//     `default` over SDS (test/sdsclient) until it gets a certificate.
//   - Envoy's admin /stats on 127.0.0.1:15000, answering the two queries
//     pilot-agent's readiness check makes: INITIALIZING with no CDS/LDS
//     update until the certificate arrived, then a LIVE server, started
//     workers and one accepted CDS and LDS update. No xDS is fetched: these
//     stats stand for "Envoy got its configuration", earned only on the
//     certificate.
//   - the bootstrap's health listener on :15021, whose /healthz/ready
//     forwards to the agent's status port 127.0.0.1:15020/healthz/ready as
//     the bootstrap's route does, so the injected probes and
//     `pilot-agent wait` reach the agent's real readiness logic through the
//     port they name.
//
// It prints its argv once and exits on SIGTERM/SIGINT.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sds-injector/sds-injector/test/sdsclient"
)

func main() {
	fmt.Printf("stand-in-envoy (NOT Envoy) started: %q\n", os.Args)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var configured atomic.Bool
	socket, node, err := fromBootstrap(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "stand-in-envoy:", err)
		os.Exit(1)
	}
	go func() {
		for ctx.Err() == nil {
			fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			s, err := sdsclient.Fetch(fctx, socket, node, sdsclient.WorkloadCert)
			cancel()
			if err == nil && len(s[sdsclient.WorkloadCert].CertificateChain) > 0 {
				fmt.Printf("stand-in-envoy: got %s from the agent's SDS at %s: reporting LIVE with CDS/LDS accepted\n", sdsclient.WorkloadCert, socket)
				configured.Store(true)
				return
			}
			fmt.Printf("stand-in-envoy: no %s from %s yet (%v): staying INITIALIZING\n", sdsclient.WorkloadCert, socket, err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()

	admin := http.NewServeMux()
	admin.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		f := r.URL.Query().Get("filter")
		ok := configured.Load()
		state, updates := 3, 0 // INITIALIZING, nothing accepted
		if ok {
			state, updates = 0, 1 // LIVE, one CDS and LDS update
		}
		switch {
		case strings.Contains(f, "server"):
			fmt.Fprintf(w, "listener_manager.workers_started: %d\nserver.state: %d\n", updates, state)
		case strings.Contains(f, "cds"):
			fmt.Fprintf(w, "cluster_manager.cds.update_rejected: 0\ncluster_manager.cds.update_success: %d\nlistener_manager.lds.update_rejected: 0\nlistener_manager.lds.update_success: %d\n", updates, updates)
		}
	})
	health := http.NewServeMux()
	client := &http.Client{Timeout: 3 * time.Second}
	health.HandleFunc("/healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get("http://127.0.0.1:15020/healthz/ready")
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	})
	servers := []*http.Server{
		{Addr: "127.0.0.1:15000", Handler: admin, ReadHeaderTimeout: 5 * time.Second},
		{Addr: ":15021", Handler: health, ReadHeaderTimeout: 5 * time.Second},
	}
	for _, s := range servers {
		go func() {
			if err := s.ListenAndServe(); err != nil && err != http.ErrServerClosed {
				fmt.Fprintln(os.Stderr, "stand-in-envoy:", err)
				os.Exit(1)
			}
		}()
	}
	<-ctx.Done()
	for _, s := range servers {
		_ = s.Close()
	}
}

// fromBootstrap reads the bootstrap the agent gave Envoy (-c <file>): the
// Unix socket of its sds-grpc cluster and the node ID.
func fromBootstrap(args []string) (socket, node string, err error) {
	var file string
	for i, a := range args {
		if a == "-c" && i+1 < len(args) {
			file = args[i+1]
		}
	}
	if file == "" {
		return "", "", fmt.Errorf("no -c <bootstrap> in %q", args)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", "", err
	}
	var boot struct {
		Node struct {
			ID string `json:"id"`
		} `json:"node"`
		StaticResources struct {
			Clusters []json.RawMessage `json:"clusters"`
		} `json:"static_resources"`
	}
	if err := json.Unmarshal(data, &boot); err != nil {
		return "", "", fmt.Errorf("bootstrap %s: %w", file, err)
	}
	for _, raw := range boot.StaticResources.Clusters {
		var c struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(raw, &c) != nil || c.Name != "sds-grpc" {
			continue
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return "", "", err
		}
		if p := pipePath(v); p != "" {
			return p, boot.Node.ID, nil
		}
	}
	return "", "", errors.New("bootstrap " + file + " has no sds-grpc cluster with a pipe address")
}

// pipePath finds the first {"pipe": {"path": ...}} below v.
func pipePath(v any) string {
	switch x := v.(type) {
	case map[string]any:
		if p, ok := x["pipe"].(map[string]any); ok {
			if s, ok := p["path"].(string); ok {
				return s
			}
		}
		for _, e := range x {
			if s := pipePath(e); s != "" {
				return s
			}
		}
	case []any:
		for _, e := range x {
			if s := pipePath(e); s != "" {
				return s
			}
		}
	}
	return ""
}
