package agent

import (
	"maps"
	"net/http"
	"slices"

	"github.com/sds-injector/sds-injector/internal/agent/metrics"
)

// httpHandler serves /metrics and /healthz/ready on the opt-in metrics
// listener.
func (a *Agent) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", metrics.ContentType)
		_ = metrics.Write(w, a.Metrics())
	})
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "no valid certificate yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// Metrics is the agent's metrics at this instant.
func (a *Agent) Metrics() []metrics.Family {
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	a.caErrMu.Lock()
	caErrors := metrics.Family{Name: "sds_agent_ca_errors_total", Type: metrics.Counter,
		Help: "Failed certificate requests, by reason (the gRPC status code, or token_unreadable, no_identity, invalid_response, expired_response)."}
	for _, reason := range slices.Sorted(maps.Keys(a.caErrors)) {
		caErrors.Samples = append(caErrors.Samples, metrics.Sample{Labels: map[string]string{"reason": reason}, Value: float64(a.caErrors[reason])})
	}
	a.caErrMu.Unlock()
	var expiry float64
	if cert, ok := a.store.Certificate(); ok {
		expiry = float64(cert.NotAfter.Unix())
	}
	return []metrics.Family{
		metrics.Single("sds_agent_ready", "1 when a valid certificate is held and the SDS socket is listening.", metrics.Gauge, b2f(a.Ready())),
		metrics.Single("sds_agent_certificate_expiry_timestamp_seconds", "Expiry (Unix time) of the certificate being served; 0 when none is.", metrics.Gauge, expiry),
		metrics.Single("sds_agent_certificate_renewals_total", "Certificates obtained from the CA, the first one included.", metrics.Counter, float64(a.renewals.Load())),
		caErrors,
		metrics.Single("sds_agent_root_cert_reloads_total", "Changes of the root certificate file picked up after the first load.", metrics.Counter, float64(a.rootReloads.Load())),
		metrics.Single("sds_agent_sds_streams", "Open SDS streams (the agent's own probes excluded).", metrics.Gauge, float64(a.sds.Streams())),
		metrics.Single("sds_agent_sds_pushes_total", "SDS responses sent on streams.", metrics.Counter, float64(a.sds.Pushes())),
	}
}
