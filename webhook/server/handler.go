// Package server is the admission webhook: a controller-runtime
// admission.Handler that runs the injection engine on the pod and answers
// with its JSON Patch (admit.go), served through controller-runtime's
// admission.Webhook behind a few transport checks (http.go), with a fast
// path for the common request that must answer exactly as that path does
// (fast.go); plus the HTTPS, metrics and health servers around it.
package server

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// ErrorPolicy decides what happens to a pod the engine reports an error for
// (an invalid sds-injector.io/inject value, a corrupt status annotation).
type ErrorPolicy string

const (
	// ErrorPolicyDeny rejects the pod with the engine's message. This is the
	// default: the pod asked for something invalid, and admitting a gateway
	// without its mesh identity only moves the failure to confusing TLS
	// errors at request time.
	ErrorPolicyDeny ErrorPolicy = "deny"
	// ErrorPolicyAllow admits the pod unchanged, with the message as an
	// admission warning.
	ErrorPolicyAllow ErrorPolicy = "allow"
)

// ParseErrorPolicy validates a policy name.
func ParseErrorPolicy(s string) (ErrorPolicy, error) {
	switch p := ErrorPolicy(s); p {
	case ErrorPolicyDeny, ErrorPolicyAllow:
		return p, nil
	}
	return "", fmt.Errorf("error policy %q: use %q or %q", s, ErrorPolicyDeny, ErrorPolicyAllow)
}

// warningPrefix starts every admission warning, so users can tell who
// speaks in `kubectl apply` output.
const warningPrefix = "sds-injector: "

// Resolver chooses the engine settings per pod, e.g. those of the pod's
// Istio revision (package webhook/istio). It must answer from memory: it
// runs on every admission request. A non-empty problem means the pod asked
// for settings that do not exist (an unknown revision); settings are then
// still non-nil, to screen the pod with (inject.RevisionUnavailable). A
// non-nil istio means Istio's own sidecar injector selects the pod (or
// already injected it): the pod is left to it (inject.LeftToIstio).
// nsLabels are the labels of the pod's namespace when the resolver knows
// them (Istio discovery watches namespaces; nil: unknown), read once for
// both the resolver's choice and the handler's: the handler then honours
// Istio ambient enrolment by namespace (istio.io/dataplane-mode=ambient);
// without them only the pod's own label counts.
type Resolver interface {
	Resolve(pod *corev1.Pod) (settings *inject.Settings, problem string, istio *inject.IstioInjection, nsLabels map[string]string)
}

// Handler answers AdmissionReviews for pod creation. It is a
// controller-runtime admission.Handler (Handle) and, with the transport
// checks and the fast path, an http.Handler (ServeHTTP).
type Handler struct {
	settings *inject.Settings
	resolver Resolver
	onError  ErrorPolicy
	metrics  *Metrics
	log      logr.Logger

	// readTimeout bounds reading a request body (0: no bound).
	readTimeout time.Duration
	// draining reports a graceful shutdown in progress: responses then ask
	// the client to close the connection, so keep-alive connections move to
	// other replicas instead of failing when this one stops.
	draining func() bool

	// webhook is controller-runtime's admission.Webhook around h: it
	// decodes the AdmissionReviews the fast path does not take.
	webhook http.Handler
	// fast enables the fast path (fast.go); the differential tests turn
	// it off to get controller-runtime's answer for the same request.
	fast atomic.Bool
	// now is the clock of the duration histogram (a test replaces it).
	now func() time.Time
}

var _ admission.Handler = (*Handler)(nil)

// NewHandler returns the admission handler for the given settings.
func NewHandler(s *inject.Settings, onError ErrorPolicy, m *Metrics, log logr.Logger) *Handler {
	h := &Handler{settings: s, onError: onError, metrics: m, log: log, now: time.Now}
	h.fast.Store(true)
	h.webhook = &admission.Webhook{
		Handler: h,
		// The handler recovers its own panics (with the error policy and a
		// clear message); this is the net under controller-runtime's code.
		RecoverPanic: &[]bool{true}[0],
		// controller-runtime logs requests and responses at V(5), messages
		// included, which can quote pod content; only its errors are kept.
		LogConstructor: func(_ logr.Logger, _ *admission.Request) logr.Logger {
			if h.log.GetSink() == nil {
				return logr.Discard()
			}
			return logr.New(errorsOnly{h.log.WithName("admission").GetSink()})
		},
	}
	return h
}

// WithResolver makes the handler choose settings per pod; the handler's
// own settings are then used only when the resolver returns none.
func (h *Handler) WithResolver(r Resolver) *Handler {
	h.resolver = r
	return h
}

// settingsFor returns the settings for pod and the labels of its namespace
// (nil when unknown), or a final decision when the pod is not to be
// injected whatever the engine says: Istio's injector takes it, Istio
// ambient enrols it, or its revision does not exist, in that order.
func (h *Handler) settingsFor(pod *corev1.Pod) (*inject.Settings, map[string]string, *inject.Decision) {
	if h.resolver == nil {
		return h.settings, nil, nil
	}
	s, problem, istio, nsLabels := h.resolver.Resolve(pod)
	if s == nil {
		s = h.settings
	}
	if istio != nil {
		// Before the revision: whichever revision the pod names, Istio's
		// injector gets it, and the warning must say that.
		d := inject.LeftToIstio(pod, s, *istio)
		return s, nil, &d
	}
	if d, ok := inject.Ambient(pod, s, nsLabels); ok {
		// ztunnel gives the pod its identity, whatever its revision.
		return s, nsLabels, &d
	}
	if problem != "" {
		d := inject.RevisionUnavailable(pod, s, problem)
		return s, nsLabels, &d
	}
	return s, nsLabels, nil
}
