package istio

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// StaleAgent is an injected pod whose agent no longer matches what the
// webhook would inject now: typically its Istio revision was upgraded (new
// image) or removed. Restarting the pod's workload re-injects it.
type StaleAgent struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Revision and Image are what the pod runs (from its status).
	Revision string `json:"revision,omitempty"`
	Image    string `json:"image"`
	// WantRevision and WantImage are what it would get now ("" when its
	// revision is gone).
	WantRevision string `json:"wantRevision,omitempty"`
	WantImage    string `json:"wantImage,omitempty"`
	Reason       string `json:"reason"`
}

// Stale compares an injected pod (its metadata is enough) with the
// current state. ok is false for pods that are not injected or are up to
// date.
func (s *Snapshot) Stale(meta *metav1.ObjectMeta, nsLabels map[string]string) (StaleAgent, bool) {
	v, ok := meta.Annotations[inject.AnnotationStatus]
	if !ok {
		return StaleAgent{}, false
	}
	st, err := inject.ParseStatus(v)
	if err != nil {
		return StaleAgent{}, false
	}
	if st.IdentityProvider != "" {
		// Its identity comes from another provider (SPIRE): Istio's
		// revisions and agent images do not concern it.
		return StaleAgent{}, false
	}
	out := StaleAgent{Namespace: meta.Namespace, Name: meta.Name, Revision: st.Revision, Image: st.Image}
	sel := s.Select(meta.Labels, meta.Annotations, nsLabels)
	if sel.Problem != "" {
		if st.Revision == "" {
			return StaleAgent{}, false // injected without discovery; nothing to compare with
		}
		out.Reason = "revision " + st.Revision + " is no longer usable: " + sel.Problem
		return out, true
	}
	pod := &corev1.Pod{ObjectMeta: *meta}
	// The flavor the pod was injected with decides the image kind.
	if pod.Annotations[inject.AnnotationFlavor] == "" && st.Flavor != "" {
		pod.Annotations = copyMap(pod.Annotations)
		pod.Annotations[inject.AnnotationFlavor] = string(st.Flavor)
	}
	want, err := sel.Settings.AgentImageFor(pod)
	if err != nil {
		return StaleAgent{}, false
	}
	out.WantRevision, out.WantImage = sel.Revision, want
	switch {
	case want != st.Image:
		out.Reason = fmt.Sprintf("agent image %s, revision %s now injects %s", st.Image, orBase(sel.Revision), want)
	case st.Revision != sel.Revision && sel.Revision != "":
		out.Reason = fmt.Sprintf("injected for revision %s, now selects revision %s", orBase(st.Revision), sel.Revision)
	default:
		return StaleAgent{}, false
	}
	return out, true
}

func orBase(rev string) string {
	if rev == "" {
		return "(no revision)"
	}
	return rev
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// StaleAgents is the result of the last scan.
func (d *Discovery) StaleAgents() []StaleAgent {
	d.staleMu.Lock()
	defer d.staleMu.Unlock()
	return append([]StaleAgent(nil), d.stale...)
}

// ScanNow compares every injected pod with the current state (the
// periodic scan calls it; tests too).
func (d *Discovery) ScanNow(ctx context.Context) ([]StaleAgent, error) {
	s := d.snap.Load()
	if s == nil || d.meta == nil {
		return nil, nil
	}
	var out []StaleAgent
	opts := metav1.ListOptions{Limit: 500}
	gvr := schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	for {
		list, err := d.meta.Resource(gvr).List(ctx, opts)
		if err != nil {
			return nil, err
		}
		for i := range list.Items {
			m := &list.Items[i].ObjectMeta
			if m.DeletionTimestamp != nil {
				continue
			}
			if sa, ok := s.Stale(m, d.NamespaceLabels(m.Namespace)); ok {
				out = append(out, sa)
			}
		}
		if list.Continue == "" {
			break
		}
		opts.Continue = list.Continue
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	d.staleMu.Lock()
	d.stale = out
	d.staleMu.Unlock()
	d.metrics.stale.Reset()
	for _, sa := range out {
		d.metrics.stale.WithLabelValues(sa.Namespace, sa.Revision, sa.WantRevision).Inc()
	}
	return out, nil
}

// scanLoop scans every StaleScanInterval and shortly after the discovered
// state changes (an upgrade makes pods stale at once).
func (d *Discovery) scanLoop(ctx context.Context) {
	t := time.NewTicker(d.opts.StaleScanInterval)
	defer t.Stop()
	for {
		if _, err := d.ScanNow(ctx); err != nil && ctx.Err() == nil {
			d.opts.Logger.Error(err, "scanning injected pods for stale agents")
		} else {
			d.logStaleChange()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.kick:
			// Let a burst of ConfigMap updates (an upgrade) settle.
			select {
			case <-ctx.Done():
				return
			case <-time.After(2 * time.Second):
			}
		}
	}
}

// logStaleChange logs the stale pods when the set changed since the last
// scan (not on every scan: scans follow every discovered change).
func (d *Discovery) logStaleChange() {
	stale := d.StaleAgents()
	now := make(map[string]bool, len(stale))
	var pods []string
	for _, sa := range stale {
		key := sa.Namespace + "/" + sa.Name
		now[key] = true
		pods = append(pods, key)
	}
	if maps.Equal(now, d.lastStale) {
		return
	}
	prev := len(d.lastStale)
	d.lastStale = now
	switch {
	case len(now) > 0:
		d.opts.Logger.Info("injected gateway pods run an agent that no longer matches the installed Istio; restart them (sds-injector check lists the commands)", "count", len(now), "pods", pods)
	case prev > 0:
		d.opts.Logger.Info("every injected gateway pod's agent matches the installed Istio again")
	}
}

type metrics struct {
	revisions *prometheus.GaugeVec
	stale     *prometheus.GaugeVec
	synced    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		revisions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sds_injector_istio_revision_info",
			Help: "Installed Istio revisions as discovered (1 per revision) with the agent version and image injected for each.",
		}, []string{"revision", "version", "image", "default"}),
		stale: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sds_injector_stale_agents",
			Help: "Injected pods whose agent no longer matches the installed Istio revision (restart them), by namespace, injected revision and the revision they would get now.",
		}, []string{"namespace", "revision", "want_revision"}),
		synced: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sds_injector_istio_discovery_synced",
			Help: "1 once Istio discovery has listed its objects; 0 means injection uses the configuration alone.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.revisions, err = register(reg, m.revisions); err != nil {
		return nil, err
	}
	if m.stale, err = register(reg, m.stale); err != nil {
		return nil, err
	}
	if m.synced, err = register(reg, m.synced); err != nil {
		return nil, err
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		if are := (prometheus.AlreadyRegisteredError{}); errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
