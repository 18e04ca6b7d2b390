package server

import (
	jsonv2 "github.com/go-json-experiment/json"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

// The fast path answers the common request — a well-formed v1 or v1beta1
// AdmissionReview whose object decodes — without controller-runtime's
// decoding: one pass over the body with the encoding/json v2
// implementation (github.com/go-json-experiment/json, the code behind Go's
// encoding/json/v2, two to three times faster than encoding/json on a pod),
// the same decisions as Handle (admitRaw's screening, decide), and the
// response written directly (encodeReview). It takes a request only when
// its decode succeeds; anything else (a decode error, a missing object)
// goes to controller-runtime, so error messages come from one place.
//
// It must answer exactly as controller-runtime's admission.Webhook and
// Handle would: the same HTTP status, apiVersion and kind, allowed, status
// code and message, patch operations and warnings. The differential tests
// check that: TestFastPathOracle (every golden case of the engine, as v1
// and v1beta1 reviews), TestFastPathOracleEdgeCases,
// TestFastPathTakesAPIServerReviews, TestHandler and TestBadInputBattery
// (each case through both paths), and the fuzz targets FuzzReview and
// FuzzPodDecoding on every input. Where it could differ, it is built to
// agree:
//   - the request's fields other than the object are decoded with their
//     API types (admissionv1.AdmissionRequest), so a request
//     controller-runtime would refuse is not answered here either;
//   - apiVersion and kind are matched case-insensitively, as the API
//     machinery finds them (see envelopeOptions);
//   - jsonv2 is stricter than controller-runtime's decoder (duplicate
//     names, invalid UTF-8): what it refuses, controller-runtime's path
//     answers. Where it would be laxer, the oracle shows a disagreement;
//     none is known;
//   - a pod without any gateway hint is screened from a partial decode,
//     exactly as admitRaw does; the body holds the object, so no hint in
//     the body means none in the object either.

// fastReview is a whole AdmissionReview with its object decoded as O.
type fastReview[O any] struct {
	APIVersion string          `json:"apiVersion,case:ignore"`
	Kind       string          `json:"kind,case:ignore"`
	Request    *fastRequest[O] `json:"request"`
}

type fastRequest[O any] struct {
	// Every field but the object, with its API type (the object field of
	// the embedded request is shadowed by the one below).
	admissionv1.AdmissionRequest
	Object *O `json:"object"`
}

func (r *fastReview[O]) ok() bool {
	return validEnvelope(r.APIVersion, r.Kind, r.Request != nil) && r.Request.Object != nil
}

// serveFast answers from its own decode when it can; ok is false when
// controller-runtime's path must answer. The answer is built in the
// request's scratch buffers (out aliases sc.out).
func (h *Handler) serveFast(o *observation, body []byte, sc *scratch) (out []byte, ok bool) {
	var v verdict
	answered := false
	v = h.guard(func() verdict {
		// A body without any gateway hint is settled by the cheap partial
		// decode; one with a hint most likely needs the full pod anyway.
		if !engine.MayBeGateway(h.settings, body) {
			var sr fastReview[screenPod]
			if err := jsonv2.Unmarshal(body, &sr, envelopeOptions); err == nil && sr.ok() {
				o.apiVersion, o.uid = sr.APIVersion, string(sr.Request.UID)
				m := metaOf(&sr.Request.AdmissionRequest)
				if v, done := notForUs(m); done {
					answered = true
					return v
				}
				if v, final := h.screened(m, sr.Request.Object); final {
					answered = true
					return v
				}
			}
		}
		var fr fastReview[corev1.Pod]
		if err := jsonv2.Unmarshal(body, &fr, envelopeOptions); err != nil || !fr.ok() {
			return verdict{}
		}
		answered = true
		o.apiVersion, o.uid = fr.APIVersion, string(fr.Request.UID)
		m := metaOf(&fr.Request.AdmissionRequest)
		if v, done := notForUs(m); done {
			return v
		}
		return h.decide(m, fr.Request.Object, sc.patch[:0])
	})
	if !answered && v.reason != "panic" {
		return nil, false
	}
	o.record(v)
	if cap(v.patch) > cap(sc.patch) {
		sc.patch = v.patch // keep the grown buffer for the next request
	}
	sc.out = appendReview(sc.out[:0], o.apiVersion, o.uid, v)
	return sc.out, true
}
