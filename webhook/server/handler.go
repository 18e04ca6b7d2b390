// Package server is the admission webhook: a thin handler that decodes the
// pod once, runs the injection engine and answers with its JSON Patch, plus
// the HTTPS, metrics and health servers around it.
package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
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

// Handler answers AdmissionReviews for pod creation.
type Handler struct {
	settings *inject.Settings
	onError  ErrorPolicy
	metrics  *Metrics
	log      logr.Logger
}

// NewHandler returns the admission handler for the given settings.
func NewHandler(s *inject.Settings, onError ErrorPolicy, m *Metrics, log logr.Logger) *Handler {
	return &Handler{settings: s, onError: onError, metrics: m, log: log}
}

var podResource = struct{ group, version, resource string }{"", "v1", "pods"}

// Handle implements admission.Handler. Dry-run requests need no special
// care: the handler has no side effects besides its own metrics.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, result, reason := h.handle(req)
	h.metrics.observe(result, reason, time.Since(start))
	if log := h.log.V(1); log.Enabled() {
		name := req.Name
		if name == "" {
			name = "(generated)"
		}
		log.Info("admission", "namespace", req.Namespace, "name", name, "uid", req.UID,
			"dryRun", req.DryRun != nil && *req.DryRun, "result", result, "reason", reason,
			"allowed", resp.Allowed, "patchOps", len(resp.Patches))
	}
	return resp
}

func (h *Handler) handle(req admission.Request) (admission.Response, inject.Outcome, inject.Reason) {
	if req.Resource.Group != podResource.group || req.Resource.Resource != podResource.resource || req.SubResource != "" {
		// Only a misconfigured webhook sends these; admit them untouched.
		return admission.Allowed("sds-injector only mutates pods"), inject.OutcomeSkipped, "not-a-pod"
	}
	if req.Operation != admissionv1.Create {
		return admission.Allowed("sds-injector only acts on pod creation"), inject.OutcomeSkipped, "not-create"
	}
	if len(req.Object.Raw) == 0 {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("AdmissionReview request has no object")), inject.OutcomeError, inject.ReasonInvalidInput
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("request object is not a pod: %w", err)), inject.OutcomeError, inject.ReasonInvalidInput
	}
	if pod.Namespace == "" {
		pod.Namespace = req.Namespace
	}
	// Never diffed or patched, and sometimes large: not worth copying.
	pod.ManagedFields = nil

	res := inject.Inject(&pod, h.settings)
	d := res.Decision
	switch d.Outcome {
	case inject.OutcomeInjected:
		return admission.Patched(d.Message, res.Patch...), d.Outcome, d.Reason
	case inject.OutcomeSkipped:
		resp := admission.Allowed(string(d.Reason))
		if d.Warn {
			resp = resp.WithWarnings(fmt.Sprintf("%snot injected (%s): %s", warningPrefix, d.Reason, d.Message))
		}
		return resp, d.Outcome, d.Reason
	default:
		if h.onError == ErrorPolicyAllow {
			return admission.Allowed(string(d.Reason)).WithWarnings(fmt.Sprintf("%snot injected (%s): %s", warningPrefix, d.Reason, d.Message)),
				d.Outcome, d.Reason
		}
		return admission.Denied(warningPrefix + d.Message), d.Outcome, d.Reason
	}
}
