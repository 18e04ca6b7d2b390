package server

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// durationHelp says what the histogram measures: ServeHTTP starts the
// clock when it is called (the request's headers have been read) and
// stops it after the response is written.
const durationHelp = "Time from receiving an admission request's headers to writing the response: reading and decoding the body, the engine, encoding and writing the answer, by result."

// Metrics are the webhook's own Prometheus series. controller-runtime's
// controller_runtime_webhook_* series count HTTP status codes, which are 200
// for injections, skips and denials alike; these say what happened.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics registers the series with reg, with the Go runtime's
// (go_*) and the process's (process_*) collectors: controller-runtime
// registers those only from its controller package, which the webhook
// does not link. Registering twice (several servers in one test process,
// or a binary that links the controller package too) reuses the
// existing collectors.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if _, err := register(reg, c); err != nil {
			return nil, err
		}
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sds_injector_admission_requests_total",
		Help: "Pod admission requests by result (injected, skipped, error) and machine-readable reason.",
	}, []string{"result", "reason"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sds_injector_admission_duration_seconds",
		Help: durationHelp,
		// Injection costs tens of microseconds; the buckets resolve that
		// and still show a pathological request.
		Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1},
	}, []string{"result"})
	var err error
	if requests, err = register(reg, requests); err != nil {
		return nil, err
	}
	if duration, err = register(reg, duration); err != nil {
		return nil, err
	}
	return &Metrics{requests: requests, duration: duration}, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

func (m *Metrics) observe(result inject.Outcome, reason inject.Reason, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(string(result), string(reason)).Inc()
	m.duration.WithLabelValues(string(result)).Observe(d.Seconds())
}
