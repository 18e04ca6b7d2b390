package server

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// The handler decodes AdmissionReviews itself, in one pass over the body
// with the encoding/json v2 implementation (github.com/go-json-experiment/json,
// the code behind Go's encoding/json/v2): it is two to three times faster
// than encoding/json on a pod and allocates less, and decoding is most of
// an admission request's cost. A differential fuzz test checks that it
// decodes pods exactly as encoding/json (and so the API server's types) do.
// The response is written directly; only its strings go through an encoder.

const (
	admissionV1      = "admission.k8s.io/v1"
	admissionV1beta1 = "admission.k8s.io/v1beta1"
)

// reviewRequest is the part of AdmissionReview.request the handler reads;
// oldObject, userInfo and options are skipped without being decoded.
type reviewRequest struct {
	UID         string                      `json:"uid"`
	Kind        metav1.GroupVersionKind     `json:"kind"`
	Resource    metav1.GroupVersionResource `json:"resource"`
	SubResource string                      `json:"subResource"`
	Name        string                      `json:"name"`
	Namespace   string                      `json:"namespace"`
	Operation   string                      `json:"operation"`
	DryRun      *bool                       `json:"dryRun"`
	Object      jsontext.Value              `json:"object"`
}

type reviewEnvelope struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Request    *reviewRequest `json:"request"`
}

// screenReview is the partial decode every request gets first: enough of
// the pod for inject.Screen (metadata and container names and images), so
// that pods which are not gateways are answered without a full decode.
type screenReview struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    *struct {
		UID         string                      `json:"uid"`
		Resource    metav1.GroupVersionResource `json:"resource"`
		SubResource string                      `json:"subResource"`
		Namespace   string                      `json:"namespace"`
		Operation   string                      `json:"operation"`
		Object      *struct {
			Metadata struct {
				Namespace   string            `json:"namespace"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
			Spec struct {
				Containers     []screenContainer `json:"containers"`
				InitContainers []screenContainer `json:"initContainers"`
				// HostNetwork is read for the resolver: Istio's injector
				// never injects hostNetwork pods.
				HostNetwork bool `json:"hostNetwork"`
			} `json:"spec"`
		} `json:"object"`
	} `json:"request"`
}

type screenContainer struct {
	Name  string `json:"name"`
	Image string `json:"image"`
}

// screen answers from the partial decode when it can.
func (h *Handler) screen(body []byte) (v verdict, apiVersion, uid string, result inject.Outcome, reason inject.Reason, done bool) {
	var sr screenReview
	if err := jsonv2.Unmarshal(body, &sr); err != nil || sr.Request == nil || sr.Request.Object == nil ||
		(sr.APIVersion != admissionV1 && sr.APIVersion != admissionV1beta1) || sr.Kind != "AdmissionReview" ||
		sr.Request.Resource.Group != "" || sr.Request.Resource.Resource != "pods" || sr.Request.SubResource != "" || sr.Request.Operation != "CREATE" {
		return v, "", "", "", "", false // the full path answers these, with precise errors
	}
	o := sr.Request.Object
	pod := &corev1.Pod{}
	pod.Namespace, pod.Labels, pod.Annotations = o.Metadata.Namespace, o.Metadata.Labels, o.Metadata.Annotations
	if pod.Namespace == "" {
		pod.Namespace = sr.Request.Namespace
	}
	pod.Spec.HostNetwork = o.Spec.HostNetwork
	for _, c := range o.Spec.Containers {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	for _, c := range o.Spec.InitContainers {
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	s, _, rd := h.settingsFor(pod)
	if rd != nil {
		return h.fromDecision(*rd, nil), sr.APIVersion, sr.Request.UID, rd.Outcome, rd.Reason, true
	}
	d, final := inject.Screen(pod, s)
	if !final {
		return v, "", "", "", "", false
	}
	return h.fromDecision(d, nil), sr.APIVersion, sr.Request.UID, d.Outcome, d.Reason, true
}

// podReview decodes a review whose object is a pod in a single pass, the
// case for every request the shipped configurations send. Anything else
// falls back to reviewEnvelope, which keeps the object raw.
type podReview struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    *struct {
		reviewRequest
		Object *corev1.Pod `json:"object"`
	} `json:"request"`
}

// verdict is what goes into AdmissionReview.response.
type verdict struct {
	allowed  bool
	code     int32 // status code; 0 for a plain allow
	message  string
	patch    []byte
	warnings []string
}

func allow() verdict { return verdict{allowed: true} }

func reject(code int32, format string, args ...any) verdict {
	return verdict{code: code, message: fmt.Sprintf(format, args...)}
}

var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// ServeHTTP answers one AdmissionReview. Like the API server expects, every
// answer to a POST is HTTP 200 with an AdmissionReview; problems with the
// request are carried in response.status.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "admission reviews must be POSTed", http.StatusMethodNotAllowed)
		return
	}
	if h.readTimeout > 0 {
		_ = http.NewResponseController(w).SetReadDeadline(start.Add(h.readTimeout))
	}
	if h.draining != nil && h.draining() {
		w.Header().Set("Connection", "close")
	}
	apiVersion := admissionV1
	uid := ""
	var v verdict
	result, reason := inject.OutcomeError, inject.ReasonInvalidInput
	func() {
		defer func() {
			if p := recover(); p != nil {
				h.log.Error(fmt.Errorf("%v", p), "panic while handling an admission review")
				v = h.onEngineError(fmt.Sprintf("internal error in sds-injector (%v); please report it", p))
				result, reason = inject.OutcomeError, "panic"
			}
		}()
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			v = reject(http.StatusUnsupportedMediaType, "Content-Type %q is not supported: send application/json", r.Header.Get("Content-Type"))
			return
		}
		buf := bodyPool.Get().(*bytes.Buffer)
		buf.Reset()
		if n := r.ContentLength; n > 0 && n <= MaxRequestBytes {
			buf.Grow(int(n) + bytes.MinRead)
		}
		defer func() {
			if buf.Cap() <= 1<<20 {
				bodyPool.Put(buf)
			}
		}()
		if _, err := buf.ReadFrom(io.LimitReader(r.Body, MaxRequestBytes+1)); err != nil {
			v = reject(http.StatusBadRequest, "reading the request body: %v", err)
			return
		}
		if buf.Len() > MaxRequestBytes {
			v = reject(http.StatusRequestEntityTooLarge, "request body is larger than the %d-byte limit", MaxRequestBytes)
			return
		}
		if buf.Len() == 0 {
			v = reject(http.StatusBadRequest, "empty request body: expected an AdmissionReview")
			return
		}
		// A body without any gateway hint is settled by the cheap partial
		// decode; one with a hint most likely needs the full pod anyway.
		if h.settings.MayBeGateway(buf.Bytes()) {
			// fall through to the full decode
		} else if sv, sav, suid, sres, sreason, done := h.screen(buf.Bytes()); done {
			v, apiVersion, uid, result, reason = sv, sav, suid, sres, sreason
			return
		}
		var fast podReview
		if err := jsonv2.Unmarshal(buf.Bytes(), &fast); err == nil && fast.Request != nil && fast.Request.Object != nil &&
			(fast.APIVersion == admissionV1 || fast.APIVersion == admissionV1beta1) && fast.Kind == "AdmissionReview" {
			apiVersion, uid = fast.APIVersion, fast.Request.UID
			v, result, reason = h.decide(&fast.Request.reviewRequest, fast.Request.Object)
			return
		}
		var env reviewEnvelope
		if err := jsonv2.Unmarshal(buf.Bytes(), &env); err != nil {
			v = reject(http.StatusBadRequest, "request is not a valid AdmissionReview: %v", err)
			return
		}
		if env.Request != nil {
			uid = env.Request.UID
		}
		switch {
		case env.APIVersion != admissionV1 && env.APIVersion != admissionV1beta1:
			v = reject(http.StatusBadRequest, "AdmissionReview apiVersion %q is not supported: use %s", env.APIVersion, admissionV1)
			return
		case env.Kind != "AdmissionReview":
			v = reject(http.StatusBadRequest, "kind %q is not AdmissionReview", env.Kind)
			return
		case env.Request == nil:
			v = reject(http.StatusBadRequest, "AdmissionReview has no request")
			return
		}
		apiVersion = env.APIVersion
		v, result, reason = h.decide(env.Request, nil)
	}()
	h.metrics.observe(result, reason, time.Since(start))
	if log := h.log.V(1); log.Enabled() {
		log.Info("admission", "uid", uid, "result", result, "reason", reason, "allowed", v.allowed, "patchBytes", len(v.patch))
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(encodeReview(apiVersion, uid, v))
}

// decide runs the engine on a decoded request; pod is the already decoded
// object, or nil to decode it from req.Object.
func (h *Handler) decide(req *reviewRequest, pod *corev1.Pod) (verdict, inject.Outcome, inject.Reason) {
	if req.Resource.Group != "" || req.Resource.Resource != "pods" || req.SubResource != "" {
		// Only a misconfigured webhook sends these; admit them untouched.
		return allow(), inject.OutcomeSkipped, "not-a-pod"
	}
	if req.Operation != "CREATE" {
		return allow(), inject.OutcomeSkipped, "not-create"
	}
	if pod == nil {
		if len(req.Object) == 0 || req.Object.Kind() == 'n' {
			return reject(http.StatusBadRequest, "AdmissionReview request has no object"), inject.OutcomeError, inject.ReasonInvalidInput
		}
		pod = new(corev1.Pod)
		if err := jsonv2.Unmarshal(req.Object, pod); err != nil {
			return reject(http.StatusBadRequest, "request object is not a pod: %v", err), inject.OutcomeError, inject.ReasonInvalidInput
		}
	}
	if pod.Namespace == "" {
		pod.Namespace = req.Namespace
	}
	// Never read, and sometimes large: not worth keeping.
	pod.ManagedFields = nil

	s, nsLabels, rd := h.settingsFor(pod)
	if rd != nil {
		return h.fromDecision(*rd, nil), rd.Outcome, rd.Reason
	}
	d, ops := inject.InjectPatch(pod, s)
	if d.Outcome == inject.OutcomeInjected {
		patch, err := inject.MarshalPatch(ops)
		if err != nil {
			return h.onEngineError("encoding the patch: " + err.Error()), inject.OutcomeError, "encoding"
		}
		v := verdict{allowed: true, patch: patch}
		if w := inject.AmbientHostNetworkWarning(pod, nsLabels); w != "" {
			v.warnings = []string{warningPrefix + w}
		}
		return v, d.Outcome, d.Reason
	}
	return h.fromDecision(d, nil), d.Outcome, d.Reason
}

// fromDecision turns a decision without a patch into a verdict.
func (h *Handler) fromDecision(d inject.Decision, _ []byte) verdict {
	switch d.Outcome {
	case inject.OutcomeSkipped:
		v := allow()
		if d.Warn {
			v.warnings = []string{fmt.Sprintf("%snot injected (%s): %s", warningPrefix, d.Reason, d.Message)}
		}
		return v
	default:
		return h.onEngineError(d.Message)
	}
}

// onEngineError applies the error policy.
func (h *Handler) onEngineError(msg string) verdict {
	if h.onError == ErrorPolicyAllow {
		return verdict{allowed: true, warnings: []string{warningPrefix + "not injected: " + msg}}
	}
	return verdict{code: http.StatusForbidden, message: warningPrefix + msg}
}

// encodeReview writes the AdmissionReview response.
func encodeReview(apiVersion, uid string, v verdict) []byte {
	b := make([]byte, 0, 160+base64.StdEncoding.EncodedLen(len(v.patch))+len(v.message))
	b = append(b, `{"kind":"AdmissionReview","apiVersion":`...)
	b = appendString(b, apiVersion)
	b = append(b, `,"response":{"uid":`...)
	b = appendString(b, uid)
	b = append(b, `,"allowed":`...)
	b = strconv.AppendBool(b, v.allowed)
	if v.code != 0 {
		b = append(b, `,"status":{"metadata":{},"code":`...)
		b = strconv.AppendInt(b, int64(v.code), 10)
		if v.message != "" {
			b = append(b, `,"message":`...)
			b = appendString(b, v.message)
		}
		b = append(b, '}')
	}
	if len(v.patch) > 0 {
		b = append(b, `,"patchType":"JSONPatch","patch":"`...)
		b = base64.StdEncoding.AppendEncode(b, v.patch)
		b = append(b, '"')
	}
	if len(v.warnings) > 0 {
		b = append(b, `,"warnings":[`...)
		for i, w := range v.warnings {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, w)
		}
		b = append(b, ']')
	}
	return append(b, "}}\n"...)
}

func appendString(b []byte, s string) []byte {
	raw, err := json.Marshal(s)
	if err != nil {
		return append(b, `""`...)
	}
	return append(b, raw...)
}
