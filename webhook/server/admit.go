package server

import (
	"context"
	"fmt"
	"net/http"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	admissionmetrics "sigs.k8s.io/controller-runtime/pkg/webhook/admission/metrics"
	kjson "sigs.k8s.io/json"

	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/internal/fastpath"
)

// engine is the part of the engine only the webhook uses: screening a
// partially decoded pod, the patch without the mutated pod, the byte hints
// (kept out of package inject's API, see webhook/internal/fastpath).
var engine = fastpath.Lookup[inject.Settings, inject.Decision]()

// Handle is the admission.Handler: controller-runtime's admission.Webhook
// has decoded the AdmissionReview (v1 or v1beta1) into req and encodes the
// response. The pod is decoded here with sigs.k8s.io/json, the API server's
// own JSON decoder.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	o := observationFrom(ctx)
	o.uid = string(req.UID)
	v := h.guard(func() verdict { return h.admitRaw(metaOf(&req.AdmissionRequest), req.Object.Raw) })
	o.record(v)
	return v.response()
}

// requestMeta is what the handler reads of an AdmissionRequest besides the
// object.
type requestMeta struct {
	resource    metav1.GroupVersionResource
	subResource string
	namespace   string
	operation   admissionv1.Operation
}

func metaOf(r *admissionv1.AdmissionRequest) requestMeta {
	return requestMeta{resource: r.Resource, subResource: r.SubResource, namespace: r.Namespace, operation: r.Operation}
}

// verdict is what goes into AdmissionReview.response, with the outcome and
// reason for the metrics.
type verdict struct {
	allowed  bool
	code     int32 // status code; 0 for a plain allow (answered as 200)
	message  string
	patch    []byte
	warnings []string

	result inject.Outcome
	reason inject.Reason
}

func reject(code int32, format string, args ...any) verdict {
	return verdict{code: code, message: fmt.Sprintf(format, args...), result: inject.OutcomeError, reason: inject.ReasonInvalidInput}
}

// response is the verdict as controller-runtime's Response; the Webhook
// completes it with the request's UID.
func (v verdict) response() admission.Response {
	r := admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{
		Allowed:  v.allowed,
		Result:   &metav1.Status{Code: v.statusCode(), Message: v.message},
		Warnings: v.warnings,
	}}
	if len(v.patch) > 0 {
		pt := admissionv1.PatchTypeJSONPatch
		r.Patch, r.PatchType = v.patch, &pt
	}
	return r
}

func (v verdict) statusCode() int32 {
	if v.code == 0 {
		return http.StatusOK
	}
	return v.code
}

// guard runs f and turns a panic into an answer under the error policy,
// counted in controller-runtime's controller_runtime_webhook_panics_total.
func (h *Handler) guard(f func() verdict) (v verdict) {
	defer func() {
		if p := recover(); p != nil {
			admissionmetrics.WebhookPanics.WithLabelValues().Inc()
			h.log.Error(fmt.Errorf("%v", p), "panic while handling an admission review")
			v = h.onEngineError(fmt.Sprintf("internal error in sds-injector (%v); please report it", p))
			v.result, v.reason = inject.OutcomeError, "panic"
		}
	}()
	return f()
}

// notForUs answers requests the engine has nothing to say about: only a
// misconfigured webhook sends them, and they are admitted untouched.
func notForUs(m requestMeta) (verdict, bool) {
	if m.resource.Group != "" || m.resource.Resource != "pods" || m.subResource != "" {
		return verdict{allowed: true, result: inject.OutcomeSkipped, reason: "not-a-pod"}, true
	}
	if m.operation != admissionv1.Create {
		return verdict{allowed: true, result: inject.OutcomeSkipped, reason: "not-create"}, true
	}
	return verdict{}, false
}

// admitRaw decides for the raw object of a request. A pod without any
// gateway hint is screened from a partial decode first (the same decode
// and decision as the fast path's); otherwise, or when screening does not
// settle it, the whole pod is decoded.
func (h *Handler) admitRaw(m requestMeta, raw []byte) verdict {
	if v, done := notForUs(m); done {
		return v
	}
	if len(raw) == 0 {
		return reject(http.StatusBadRequest, "AdmissionReview request has no object")
	}
	if !engine.MayBeGateway(h.settings, raw) {
		var sp screenPod
		if err := jsonv2.Unmarshal(raw, &sp); err == nil {
			if v, final := h.screened(m, &sp); final {
				return v
			}
		}
	}
	pod := new(corev1.Pod)
	if err := kjson.UnmarshalCaseSensitivePreserveInts(raw, pod); err != nil {
		return reject(http.StatusBadRequest, "request object is not a pod: %v", err)
	}
	return h.decide(m, pod, nil)
}

// screenPod is the partial decode of a pod: enough for engine.Screen
// (metadata and containers' names and images), so that pods which are not
// gateways are answered without a full decode.
type screenPod struct {
	Metadata struct {
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Containers     []screenContainer `json:"containers"`
		InitContainers []screenContainer `json:"initContainers"`
		// HostNetwork is read for the resolver: Istio's injector never
		// injects hostNetwork pods.
		HostNetwork bool `json:"hostNetwork"`
	} `json:"spec"`
}

type screenContainer struct {
	Name  string `json:"name"`
	Image string `json:"image"`
}

// screened decides from a partial decode when that is final.
func (h *Handler) screened(m requestMeta, sp *screenPod) (verdict, bool) {
	pod := &corev1.Pod{}
	pod.Namespace, pod.Labels, pod.Annotations = sp.Metadata.Namespace, sp.Metadata.Labels, sp.Metadata.Annotations
	if pod.Namespace == "" {
		pod.Namespace = m.namespace
	}
	pod.Spec.HostNetwork = sp.Spec.HostNetwork
	pod.Spec.Containers = make([]corev1.Container, 0, len(sp.Spec.Containers))
	if len(sp.Spec.InitContainers) > 0 {
		pod.Spec.InitContainers = make([]corev1.Container, 0, len(sp.Spec.InitContainers))
	}
	for _, c := range sp.Spec.Containers {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	for _, c := range sp.Spec.InitContainers {
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	s, _, rd := h.settingsFor(pod)
	if rd != nil {
		return h.fromDecision(*rd), true
	}
	d, final := engine.Screen(pod, s)
	if !final {
		return verdict{}, false
	}
	return h.fromDecision(d), true
}

// decide runs the engine on a decoded pod (which it may modify: it is the
// request's own copy). The patch is appended to patchBuf (nil: a new
// slice), which the verdict then holds.
func (h *Handler) decide(m requestMeta, pod *corev1.Pod, patchBuf []byte) verdict {
	if pod.Namespace == "" {
		pod.Namespace = m.namespace
	}
	// Never read, and sometimes large: not worth keeping.
	pod.ManagedFields = nil

	s, nsLabels, rd := h.settingsFor(pod)
	if rd != nil {
		return h.fromDecision(*rd)
	}
	d, ops := engine.Patch(pod, s)
	if d.Outcome != inject.OutcomeInjected {
		return h.fromDecision(d)
	}
	patch, err := fastpath.AppendPatch(patchBuf, ops)
	if err != nil {
		v := h.onEngineError("encoding the patch: " + err.Error())
		v.reason = "encoding"
		return v
	}
	v := verdict{allowed: true, patch: patch, result: d.Outcome, reason: d.Reason}
	if w := inject.AmbientHostNetworkWarning(pod, nsLabels); w != "" {
		v.warnings = []string{warningPrefix + w}
	}
	return v
}

// fromDecision turns a decision without a patch into a verdict.
func (h *Handler) fromDecision(d inject.Decision) verdict {
	if d.Outcome == inject.OutcomeSkipped {
		v := verdict{allowed: true, result: d.Outcome, reason: d.Reason}
		if d.Warn {
			v.warnings = []string{fmt.Sprintf("%snot injected (%s): %s", warningPrefix, d.Reason, d.Message)}
		}
		return v
	}
	v := h.onEngineError(d.Message)
	v.result, v.reason = d.Outcome, d.Reason
	return v
}

// onEngineError applies the error policy.
func (h *Handler) onEngineError(msg string) verdict {
	if h.onError == ErrorPolicyAllow {
		return verdict{allowed: true, warnings: []string{warningPrefix + "not injected: " + msg}, result: inject.OutcomeError}
	}
	return verdict{code: http.StatusForbidden, message: warningPrefix + msg, result: inject.OutcomeError}
}

// errorsOnly passes on a logger's errors and drops its info messages: the
// sink given to controller-runtime's admission.Webhook.
type errorsOnly struct{ logr.LogSink }

func (e errorsOnly) Enabled(int) bool         { return false }
func (e errorsOnly) Info(int, string, ...any) {}
func (e errorsOnly) WithValues(kv ...any) logr.LogSink {
	return errorsOnly{e.LogSink.WithValues(kv...)}
}
func (e errorsOnly) WithName(name string) logr.LogSink      { return errorsOnly{e.LogSink.WithName(name)} }
func (e errorsOnly) Error(err error, msg string, kv ...any) { e.LogSink.Error(err, msg, kv...) }
func (e errorsOnly) Init(info logr.RuntimeInfo)             { e.LogSink.Init(info) }
