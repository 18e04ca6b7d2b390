package certs

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the self-managed certificates.
type Metrics struct {
	expiryGauge prometheus.Gauge
	rotations   *prometheus.CounterVec
	repairs     *prometheus.CounterVec
}

// NewMetrics registers the series with reg (reusing them if registered).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		expiryGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sds_injector_serving_certificate_expiry_timestamp_seconds",
			Help: "Expiry (Unix time) of the serving certificate this replica serves.",
		}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sds_injector_certificate_rotations_total",
			Help: "Certificates this replica created, by kind (ca, serving).",
		}, []string{"kind"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sds_injector_cabundle_repairs_total",
			Help: "Times this replica wrote the caBundle of a webhook configuration that did not match the CA bundle.",
		}, []string{"configuration"}),
	}
	var err error
	if m.expiryGauge, err = register(reg, m.expiryGauge); err != nil {
		return nil, err
	}
	if m.rotations, err = register(reg, m.rotations); err != nil {
		return nil, err
	}
	if m.repairs, err = register(reg, m.repairs); err != nil {
		return nil, err
	}
	return m, nil
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

func (m *Metrics) rotated(k Kind) {
	if m != nil {
		m.rotations.WithLabelValues(string(k)).Inc()
	}
}

func (m *Metrics) repaired(config string) {
	if m != nil {
		m.repairs.WithLabelValues(config).Inc()
	}
}

func (m *Metrics) expiry(t time.Time) {
	if m != nil {
		m.expiryGauge.Set(float64(t.Unix()))
	}
}

// RepairsCollector exposes the caBundle repair counter (for tests and
// custom registries).
func (m *Metrics) RepairsCollector() prometheus.Collector { return m.repairs }
