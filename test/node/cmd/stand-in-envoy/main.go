// Command stand-in-envoy is a STAND-IN for Envoy (test only; it is not
// Envoy). The proxyv2 test image ships it as /usr/local/bin/envoy, where
// pilot-agent (Envoy enabled, the istio-proxy flavor) starts it and serves
// SDS for as long as it lives.
//
// What it plays, and nothing more:
//   - Envoy's admin /stats on 127.0.0.1:15000, answering the two queries
//     pilot-agent's readiness check makes with a LIVE server, started
//     workers and one accepted CDS and LDS update. These values are
//     asserted by the stand-in, not earned: no xDS is fetched.
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
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	fmt.Printf("stand-in-envoy (NOT Envoy) started: %q\n", os.Args)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	admin := http.NewServeMux()
	admin.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		f := r.URL.Query().Get("filter")
		switch {
		case strings.Contains(f, "server"):
			fmt.Fprint(w, "listener_manager.workers_started: 1\nserver.state: 0\n")
		case strings.Contains(f, "cds"):
			fmt.Fprint(w, "cluster_manager.cds.update_rejected: 0\ncluster_manager.cds.update_success: 1\nlistener_manager.lds.update_rejected: 0\nlistener_manager.lds.update_success: 1\n")
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
