package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"sync"

	jsonv2 "github.com/go-json-experiment/json"
	jsonv1 "github.com/go-json-experiment/json/v1"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// ServeHTTP answers one AdmissionReview. Like the API server expects, every
// answer to a POST is HTTP 200 with an AdmissionReview; problems with the
// request are carried in response.status.
//
// The transport checks are sds-injector's own and come first: POST only,
// the read deadline, Connection: close while draining, Content-Type
// application/json (parameters allowed, else 415), the body size (413),
// an empty body, and strict JSON with an AdmissionReview envelope (v1 or
// v1beta1, a request) — each with a precise message. Then the fast path
// (fast.go) answers the common request; every other request goes to
// controller-runtime's admission.Webhook, which decodes it and calls
// Handle. The fast path gives exactly the answer that path would (the
// differential tests and fuzz targets check it).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.now()
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
	// On the stack: only controller-runtime's path needs it in the heap.
	o := observation{apiVersion: admissionV1, result: inject.OutcomeError, reason: inject.ReasonInvalidInput}
	defer func() {
		// After the answer is written: the histogram covers reading the
		// body, decoding, the engine, encoding and writing.
		h.metrics.observe(o.result, o.reason, h.now().Sub(start))
		if log := h.log.V(1); log.Enabled() {
			log.Info("admission", "uid", o.uid, "result", o.result, "reason", o.reason, "allowed", o.allowed, "patchBytes", o.patchBytes)
		}
	}()
	w.Header().Set("Content-Type", "application/json")

	sc := scratchPool.Get().(*scratch)
	defer sc.release()
	buf := &sc.body
	if v, ok := readBody(r, buf); !ok {
		o.record(v)
		_, _ = w.Write(encodeReview(admissionV1, "", v))
		return
	}
	body := buf.Bytes()
	if h.fast.Load() {
		if out, ok := h.serveFast(&o, body, sc); ok {
			// Content-Length instead of chunked encoding: one less framing
			// step, and the whole answer in as few TLS records as fit.
			w.Header().Set("Content-Length", strconv.Itoa(len(out)))
			_, _ = w.Write(out)
			return
		}
	}
	if v, ok := checkEnvelope(&o, body); !ok {
		o.record(v)
		_, _ = w.Write(encodeReview(o.apiVersion, o.uid, v))
		return
	}
	// controller-runtime's path: it reads the body again, from memory, and
	// wants exactly "application/json" (parameters were accepted above).
	ho := new(observation)
	*ho = o
	cr := r.WithContext(context.WithValue(r.Context(), observationKey{}, ho))
	cr.Header = r.Header.Clone()
	cr.Header.Set("Content-Type", "application/json")
	cr.Body, cr.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	h.webhook.ServeHTTP(w, cr)
	o = *ho
}

// scratch holds one request's buffers: the body as read, the patch and
// the encoded answer of the fast path. They are reused across requests
// (sync.Pool), which takes most of the bytes a review allocates off the
// garbage collector.
type scratch struct {
	body       bytes.Buffer
	patch, out []byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// scratchKeep is the largest buffer put back: an occasional huge pod
// should not pin its memory.
const scratchKeep = 1 << 20

func (sc *scratch) release() {
	if sc.body.Cap() > scratchKeep || cap(sc.patch) > scratchKeep || cap(sc.out) > scratchKeep {
		return
	}
	sc.body.Reset()
	scratchPool.Put(sc)
}

// readBody applies the Content-Type, size and emptiness checks and reads
// the body into buf.
func readBody(r *http.Request, buf *bytes.Buffer) (verdict, bool) {
	// The API server sends exactly "application/json"; anything else is
	// parsed (parameters allowed).
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return reject(http.StatusUnsupportedMediaType, "Content-Type %q is not supported: send application/json", ct), false
		}
	}
	if n := r.ContentLength; n > 0 && n <= MaxRequestBytes {
		buf.Grow(int(n) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(&io.LimitedReader{R: r.Body, N: MaxRequestBytes}); err != nil {
		return reject(http.StatusBadRequest, "reading the request body: %v", err), false
	}
	// Like controller-runtime: a body that reaches the limit is too large.
	if buf.Len() >= MaxRequestBytes {
		return reject(http.StatusRequestEntityTooLarge, "request body reaches the %d-byte limit", MaxRequestBytes), false
	}
	if buf.Len() == 0 {
		return reject(http.StatusBadRequest, "empty request body: expected an AdmissionReview"), false
	}
	return verdict{}, true
}

const (
	admissionV1      = "admission.k8s.io/v1"
	admissionV1beta1 = "admission.k8s.io/v1beta1"
)

// envelopeOptions decode the envelope's apiVersion and kind as the API
// machinery finds them (encoding/json: case-insensitive, no other folding),
// everything else case-sensitively, and reject what RFC 8259 calls invalid
// (duplicate names, invalid UTF-8) as jsonv2 does by default.
var envelopeOptions = jsonv1.MatchCaseSensitiveDelimiter(true)

// envelope is the part of an AdmissionReview the transport checks read.
type envelope struct {
	APIVersion string `json:"apiVersion,case:ignore"`
	Kind       string `json:"kind,case:ignore"`
	Request    *struct {
		UID string `json:"uid"`
	} `json:"request"`
}

func validEnvelope(apiVersion, kind string, hasRequest bool) bool {
	return (apiVersion == admissionV1 || apiVersion == admissionV1beta1) && kind == "AdmissionReview" && hasRequest
}

// checkEnvelope rejects a body that is not strict JSON holding a v1 or
// v1beta1 AdmissionReview with a request.
func checkEnvelope(o *observation, body []byte) (verdict, bool) {
	var env envelope
	if err := jsonv2.Unmarshal(body, &env, envelopeOptions); err != nil {
		return reject(http.StatusBadRequest, "request is not a valid AdmissionReview: %v", err), false
	}
	if env.Request != nil {
		o.uid = env.Request.UID
	}
	switch {
	case env.APIVersion != admissionV1 && env.APIVersion != admissionV1beta1:
		return reject(http.StatusBadRequest, "AdmissionReview apiVersion %q is not supported: use %s", env.APIVersion, admissionV1), false
	case env.Kind != "AdmissionReview":
		return reject(http.StatusBadRequest, "kind %q is not AdmissionReview", env.Kind), false
	case env.Request == nil:
		return reject(http.StatusBadRequest, "AdmissionReview has no request"), false
	}
	o.apiVersion = env.APIVersion
	return verdict{}, true
}

// observation is what one request's metrics and log line report; Handle
// fills it in through the request context.
type observation struct {
	apiVersion, uid string
	result          inject.Outcome
	reason          inject.Reason
	allowed         bool
	patchBytes      int
}

type observationKey struct{}

func observationFrom(ctx context.Context) *observation {
	if o, ok := ctx.Value(observationKey{}).(*observation); ok {
		return o
	}
	return &observation{} // Handle called directly, not through ServeHTTP
}

func (o *observation) record(v verdict) {
	o.result, o.reason, o.allowed, o.patchBytes = v.result, v.reason, v.allowed, len(v.patch)
}

// encodeReview writes an AdmissionReview response: what controller-runtime
// writes for the same verdict (encoding/json of admissionv1.AdmissionReview),
// built directly.
func encodeReview(apiVersion, uid string, v verdict) []byte {
	return appendReview(nil, apiVersion, uid, v)
}

// appendReview is encodeReview appending to dst.
func appendReview(dst []byte, apiVersion, uid string, v verdict) []byte {
	b := slices.Grow(dst, 192+base64.StdEncoding.EncodedLen(len(v.patch))+len(v.message))
	b = append(b, `{"kind":"AdmissionReview","apiVersion":`...)
	b = appendString(b, apiVersion)
	b = append(b, `,"response":{"uid":`...)
	b = appendString(b, uid)
	b = append(b, `,"allowed":`...)
	b = strconv.AppendBool(b, v.allowed)
	b = append(b, `,"status":{"metadata":{},"code":`...)
	b = strconv.AppendInt(b, int64(v.statusCode()), 10)
	if v.message != "" {
		b = append(b, `,"message":`...)
		b = appendString(b, v.message)
	}
	b = append(b, '}')
	if len(v.patch) > 0 {
		b = append(b, `,"patch":"`...)
		b = base64.StdEncoding.AppendEncode(b, v.patch)
		b = append(b, `","patchType":"JSONPatch"`...)
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
	if plainJSONString(s) {
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	raw, err := json.Marshal(s)
	if err != nil {
		return append(b, `""`...)
	}
	return append(b, raw...)
}

// plainJSONString reports whether encoding/json writes s as it is between
// quotes: printable ASCII without '"', '\\' and the HTML characters it
// escapes. UIDs, API versions and most messages are.
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
