package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/sds-injector/sds-injector/test/harness"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// testServer is a running Server on loopback with a self-signed certificate.
type testServer struct {
	srv    *Server
	url    string
	health string
	client *http.Client
	cancel context.CancelFunc
	done   chan error
}

// writeServingCert writes a self-signed ECDSA certificate for 127.0.0.1.
func writeServingCert(t testing.TB, dir string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

func startTestServer(t testing.TB, mutate func(*Options)) *testServer {
	t.Helper()
	dir := t.TempDir()
	pool := writeServingCert(t, dir)
	port := harness.FreePort(t, "127.0.0.1")
	o := Options{
		Settings: inject.DefaultConfig().MustResolve(), Host: "127.0.0.1", Port: port, CertDir: dir,
		MetricsAddr: "0", HealthAddr: "127.0.0.1:0", DrainDelay: -1, Logger: logr.Discard(),
	}
	if mutate != nil {
		mutate(&o)
	}
	srv, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{srv: srv, url: fmt.Sprintf("https://127.0.0.1:%d%s", port, InjectPath), health: "http://" + srv.HealthAddr(),
		cancel: cancel, done: make(chan error, 1),
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 64}}}
	go func() { ts.done <- srv.Start(ctx) }()
	t.Cleanup(ts.stop)
	waitCtx, cancelWait := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancelWait()
	if err := harness.WaitHTTP(waitCtx, ts.health+"/readyz"); err != nil {
		t.Fatalf("server not ready: %v", err)
	}
	return ts
}

func (ts *testServer) stop() {
	if ts.cancel != nil {
		ts.cancel()
		<-ts.done
		ts.cancel = nil
	}
}

// send posts a body and decodes the AdmissionReview answer.
func (ts *testServer) send(t testing.TB, contentType string, body []byte) (int, *admissionv1.AdmissionResponse, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, ts.url, bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatalf("request failed: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var ar admissionv1.AdmissionReview
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(raw, &ar); err != nil || ar.Response == nil {
			t.Fatalf("malformed answer: %s", raw)
		}
	}
	return resp.StatusCode, ar.Response, raw
}

func bigPod(t testing.TB, containers int) []byte {
	t.Helper()
	var pod corev1.Pod
	if err := json.Unmarshal(examplePodJSONB(t, "gloo-gateway-proxy.yaml"), &pod); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < containers; i++ {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%04d", i), Image: "busybox"})
	}
	raw, _ := json.Marshal(&pod)
	return raw
}

// TestBadInputBattery sends malformed, hostile and extreme requests to the
// running HTTPS server. Each gets a clear error or an unchanged admission,
// and the server keeps serving.
func TestBadInputBattery(t *testing.T) {
	ts := startTestServer(t, nil)
	gloo := examplePodJSONB(t, "gloo-gateway-proxy.yaml")
	rev := func(obj []byte, mutate func(*admissionv1.AdmissionRequest)) []byte {
		return review(t, "admission.k8s.io/v1", obj, mutate)
	}
	withPodField := func(field, value string) []byte {
		return bytes.Replace(gloo, []byte(`"spec":{`), []byte(`"spec":{"`+field+`":`+value+`,`), 1)
	}
	longName := strings.Repeat("a", 253)
	maxNames := bytes.Replace(bytes.Replace(gloo, []byte(`"name":"gateway-proxy-6b9d7c5f8d-q4xkz"`), []byte(`"name":"`+longName+`"`), 1),
		[]byte(`"gateway-proxy-id":"gateway-proxy"`), []byte(`"gateway-proxy-id":"`+strings.Repeat("g", 63)+`"`), 1)
	maxNames = bytes.Replace(maxNames, []byte(`"name":"gateway-proxy"`), []byte(`"name":"`+strings.Repeat("g", 63)+`"`), 1)
	deep := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","resource":{"resource":"pods"},"operation":"CREATE","object":{"metadata":{"labels":` +
		strings.Repeat(`{"a":`, 20000) + `1` + strings.Repeat(`}`, 20000) + `}}}}`)

	type want struct {
		status  int    // HTTP status (200 unless said)
		allowed bool   // response.allowed
		patched bool   // response carries a patch
		code    int32  // response.status.code when rejected
		text    string // substring of the rejection message
	}
	cases := map[string]struct {
		contentType string
		body        []byte
		want        want
	}{
		"truncated JSON":              {body: rev(gloo, nil)[:200], want: want{code: 400, text: "not a valid AdmissionReview"}},
		"not JSON":                    {body: []byte("hello, webhook"), want: want{code: 400, text: "not a valid AdmissionReview"}},
		"YAML instead of JSON":        {body: []byte("apiVersion: admission.k8s.io/v1\nkind: AdmissionReview\n"), want: want{code: 400}},
		"empty body":                  {body: nil, want: want{code: 400, text: "empty request body"}},
		"whitespace body":             {body: []byte("   \n"), want: want{code: 400}},
		"JSON array":                  {body: []byte(`[1,2,3]`), want: want{code: 400}},
		"JSON null":                   {body: []byte(`null`), want: want{code: 400}},
		"wrong content type":          {contentType: "text/plain", body: rev(gloo, nil), want: want{code: 415, text: "application/json"}},
		"no content type":             {contentType: "-", body: rev(gloo, nil), want: want{code: 415}},
		"v1beta1 review is served":    {body: review(t, "admission.k8s.io/v1beta1", gloo, nil), want: want{allowed: true, patched: true}},
		"unknown review version":      {body: review(t, "admission.k8s.io/v9", gloo, nil), want: want{code: 400, text: "not supported"}},
		"missing apiVersion":          {body: bytes.Replace(rev(gloo, nil), []byte(`"apiVersion":"admission.k8s.io/v1",`), nil, 1), want: want{code: 400, text: "apiVersion"}},
		"wrong kind":                  {body: bytes.Replace(rev(gloo, nil), []byte(`"kind":"AdmissionReview"`), []byte(`"kind":"Pod"`), 1), want: want{code: 400, text: "is not AdmissionReview"}},
		"missing request":             {body: []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), want: want{code: 400, text: "no request"}},
		"null request":                {body: []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}`), want: want{code: 400, text: "no request"}},
		"missing object":              {body: rev(nil, nil), want: want{code: 400, text: "no object"}},
		"oldObject only":              {body: bytes.Replace(rev(nil, nil), []byte(`"oldObject":null`), append([]byte(`"oldObject":`), gloo...), 1), want: want{code: 400, text: "no object"}},
		"object is a string":          {body: rev([]byte(`"pod"`), nil), want: want{code: 400, text: "not a pod"}},
		"object of wrong shape":       {body: rev(withPodField("hostNetwork", `"yes"`), nil), want: want{code: 400, text: "not a pod"}},
		"number overflow":             {body: rev(withPodField("terminationGracePeriodSeconds", `1e400`), nil), want: want{code: 400, text: "not a pod"}},
		"wrong resource":              {body: rev([]byte(`{"data":{}}`), func(r *admissionv1.AdmissionRequest) { r.Resource.Resource = "configmaps" }), want: want{allowed: true}},
		"subresource":                 {body: rev(gloo, func(r *admissionv1.AdmissionRequest) { r.SubResource = "status" }), want: want{allowed: true}},
		"update":                      {body: rev(gloo, func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update }), want: want{allowed: true}},
		"delete":                      {body: rev(nil, func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Delete }), want: want{allowed: true}},
		"deeply nested JSON":          {body: deep, want: want{code: 400}},
		"duplicate keys":              {body: bytes.Replace(rev(gloo, nil), []byte(`"kind":"AdmissionReview"`), []byte(`"kind":"AdmissionReview","kind":"AdmissionReview"`), 1), want: want{code: 400, text: "duplicate"}},
		"invalid UTF-8":               {body: bytes.Replace(rev(gloo, nil), []byte(`"gloo-system"`), []byte("\"gloo-\xff\xfesystem\""), 1), want: want{code: 400, text: "UTF-8"}},
		"huge annotation (5 MiB)":     {body: rev(withAnnotations(t, gloo, map[string]string{"big": strings.Repeat("x", 5<<20)}, nil), nil), want: want{allowed: true, patched: true}},
		"body over the limit":         {body: rev(withAnnotations(t, gloo, map[string]string{"big": strings.Repeat("x", MaxRequestBytes)}, nil), nil), want: want{code: 413, text: "limit"}},
		"1,000 containers":            {body: rev(bigPod(t, 1000), nil), want: want{allowed: true, patched: true}},
		"names at maximum length":     {body: rev(maxNames, nil), want: want{allowed: true, patched: true}},
		"invalid inject label":        {body: rev(withAnnotations(t, gloo, nil, map[string]string{inject.LabelInject: "maybe"}), nil), want: want{code: 403, text: "use \"true\" or \"false\""}},
		"corrupt status annotation":   {body: rev(withAnnotations(t, gloo, map[string]string{inject.AnnotationStatus: "{"}, nil), nil), want: want{code: 403, text: "not valid JSON"}},
		"hostile override annotation": {body: rev(withAnnotations(t, gloo, map[string]string{inject.AnnotationAgentMemory: "1Ei; rm -rf /"}, nil), nil), want: want{allowed: true}},
		"uid with control characters": {body: rev(gloo, func(r *admissionv1.AdmissionRequest) { r.UID = "a\"b\n\x00c" }), want: want{allowed: true, patched: true}},
	}
	if len(cases) < 30 {
		t.Fatalf("only %d cases", len(cases))
	}
	// The byte-level edits above must have hit their targets.
	for name, marker := range map[string]string{
		"oldObject only": `"oldObject":{`, "object of wrong shape": `"hostNetwork":"yes"`, "number overflow": `1e400`,
		"duplicate keys": `"kind":"AdmissionReview","kind"`, "invalid UTF-8": "\xff", "missing apiVersion": "",
	} {
		body := cases[name].body
		if name == "missing apiVersion" {
			if bytes.Contains(body, []byte(`"apiVersion":"admission.k8s.io`)) {
				t.Fatalf("case %q was not built", name)
			}
			continue
		}
		if !bytes.Contains(body, []byte(marker)) && !(name == "invalid UTF-8" && bytes.Contains(body, []byte{0xff})) {
			t.Fatalf("case %q was not built", name)
		}
	}
	if !bytes.Contains(maxNames, []byte(longName)) || !bytes.Contains(maxNames, []byte(strings.Repeat("g", 63))) {
		t.Fatal("maximum-length names were not applied")
	}
	// Every case through the fast path and through controller-runtime's.
	for _, fast := range []bool{true, false} {
		ts.srv.handler.fast.Store(fast)
		for name, tc := range cases {
			t.Run(fmt.Sprintf("%s/fast=%t", name, fast), func(t *testing.T) {
				ct := tc.contentType
				switch ct {
				case "":
					ct = "application/json"
				case "-":
					ct = ""
				}
				status, resp, raw := ts.send(t, ct, tc.body)
				wantStatus := tc.want.status
				if wantStatus == 0 {
					wantStatus = http.StatusOK
				}
				if status != wantStatus {
					t.Fatalf("HTTP %d, want %d: %.300s", status, wantStatus, raw)
				}
				if resp.Allowed != tc.want.allowed {
					t.Fatalf("allowed=%t, want %t: %.300s", resp.Allowed, tc.want.allowed, raw)
				}
				if (len(resp.Patch) > 0) != tc.want.patched {
					t.Fatalf("patched=%t, want %t", len(resp.Patch) > 0, tc.want.patched)
				}
				if !tc.want.allowed {
					if resp.Result == nil || resp.Result.Code != tc.want.code || resp.Result.Message == "" {
						t.Fatalf("rejection %+v, want code %d with a message", resp.Result, tc.want.code)
					}
					if !strings.Contains(resp.Result.Message, tc.want.text) {
						t.Fatalf("message %q does not say %q", resp.Result.Message, tc.want.text)
					}
				}
				// The server still serves a normal review after each case.
				if _, ok, _ := ts.send(t, "application/json", rev(gloo, nil)); !ok.Allowed || len(ok.Patch) == 0 {
					t.Fatal("the server stopped injecting after this input")
				}
			})
		}
	}
	ts.srv.handler.fast.Store(true)
	t.Run("GET is refused", func(t *testing.T) {
		resp, err := ts.client.Get(ts.url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("GET answered %d", resp.StatusCode)
		}
	})
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapInuse > 256<<20 {
		t.Errorf("heap in use %d MiB after the battery: memory is not bounded", ms.HeapInuse>>20)
	}
}

// TestSlowClient: a client that trickles its body is cut off by the read
// timeout and does not hold the server.
func TestSlowClient(t *testing.T) {
	ts := startTestServer(t, func(o *Options) { o.RequestReadTimeout = 500 * time.Millisecond })
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, ts.url, pr)
	req.Header.Set("Content-Type", "application/json")
	errc := make(chan error, 1)
	go func() {
		resp, err := ts.client.Do(req)
		if err == nil {
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Contains(raw, []byte(`"allowed":false`)) {
				err = fmt.Errorf("slow body was answered as a valid review: %s", raw)
			}
		}
		errc <- err
	}()
	_, _ = pw.Write([]byte(`{"apiVersion":`))
	start := time.Now()
	select {
	case <-errc:
	case <-time.After(10 * time.Second):
		t.Fatal("the server waited for a slow client for 10s despite a 500ms read timeout")
	}
	pw.Close()
	if time.Since(start) > 5*time.Second {
		t.Error("slow client was not cut off promptly")
	}
	if _, resp, _ := ts.send(t, "application/json", review(t, "admission.k8s.io/v1", examplePodJSONB(t, "gloo-gateway-proxy.yaml"), nil)); !resp.Allowed {
		t.Fatal("server not serving after a slow client")
	}
}

// TestConcurrentReviews: 1,000 concurrent reviews (run under -race by make
// test), no errors, identical answers for identical input.
func TestConcurrentReviews(t *testing.T) {
	ts := startTestServer(t, nil)
	bodies := [][]byte{
		review(t, "admission.k8s.io/v1", examplePodJSONB(t, "gloo-gateway-proxy.yaml"), nil),
		review(t, "admission.k8s.io/v1", examplePodJSONB(t, "envoy-gateway-proxy.yaml"), nil),
		review(t, "admission.k8s.io/v1", examplePodJSONB(t, "plain-app.yaml"), nil),
	}
	want := make([][]byte, len(bodies))
	for i, b := range bodies {
		_, _, want[i] = ts.send(t, "application/json", b)
	}
	// 1,000 reviews in flight at once over at most 64 connections (as a
	// client's pool would carry them): what is tested is concurrency in the
	// server, not 1,000 simultaneous TLS handshakes, which under the race
	// detector on a loaded 2-core machine outlast the client's timeout.
	tr := ts.client.Transport.(*http.Transport).Clone()
	tr.MaxConnsPerHost = 64
	client := &http.Client{Timeout: ts.client.Timeout, Transport: tr}
	defer tr.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			b := bodies[i%len(bodies)]
			req, _ := http.NewRequest(http.MethodPost, ts.url, bytes.NewReader(b))
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Equal(raw, want[i%len(bodies)]) {
				errs <- fmt.Errorf("review %d answered differently: %.200s", i, raw)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 3 {
			t.Error(err)
		}
	}
	if n > 0 {
		t.Fatalf("%d of 1000 concurrent reviews failed", n)
	}
}

// TestGracefulShutdown: on shutdown /readyz fails at once, the webhook keeps
// answering during the drain, and a review in flight completes.
func TestGracefulShutdown(t *testing.T) {
	ts := startTestServer(t, func(o *Options) { o.DrainDelay = 3 * time.Second })
	body := review(t, "admission.k8s.io/v1", examplePodJSONB(t, "gloo-gateway-proxy.yaml"), nil)

	// A review whose body is still arriving when shutdown starts.
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, ts.url, pr)
	req.Header.Set("Content-Type", "application/json")
	inflight := make(chan []byte, 1)
	go func() {
		resp, err := ts.client.Do(req)
		if err != nil {
			inflight <- []byte("error: " + err.Error())
			return
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		inflight <- raw
	}()
	_, _ = pw.Write(body[:100])
	harness.Eventually(t, 10*time.Second, "the review in the webhook's handler", func(context.Context) (bool, error) {
		return webhookInFlight(t) == 1, nil
	})

	// Within the drain, /readyz fails while the health endpoint stays up.
	ts.cancel()
	harness.Eventually(t, time.Second, "/readyz failing after shutdown began", func(context.Context) (bool, error) {
		resp, err := http.Get(ts.health + "/readyz")
		if err != nil {
			return false, fmt.Errorf("health endpoint gone during the drain: %w", err)
		}
		resp.Body.Close()
		return resp.StatusCode != http.StatusOK, nil
	})
	status, r, _ := ts.send(t, "application/json", body)
	if status != http.StatusOK || !r.Allowed || len(r.Patch) == 0 {
		t.Fatal("a new review during the drain was not served")
	}
	_, _ = pw.Write(body[100:])
	pw.Close()
	if raw := <-inflight; !bytes.Contains(raw, []byte(`"patchType":"JSONPatch"`)) {
		t.Fatalf("the in-flight review did not complete: %.200s", raw)
	}
	<-ts.done
	ts.cancel = nil
}

// webhookInFlight is controller-runtime's in-flight gauge for the inject
// path: the reviews its instrumented handler has started and not finished.
func webhookInFlight(t testing.TB) float64 {
	t.Helper()
	families, err := crmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "controller_runtime_webhook_requests_in_flight" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "webhook" && l.GetValue() == InjectPath {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

// TestTLSPolicy: TLS 1.2 minimum, forward-secret AEAD suites only, HTTP/2
// offered (and reviews answered over it) unless disabled, and no plaintext
// admission endpoint.
func TestTLSPolicy(t *testing.T) {
	ts := startTestServer(t, nil)
	addr := strings.TrimSuffix(strings.TrimPrefix(ts.url, "https://"), InjectPath)
	pool := ts.client.Transport.(*http.Transport).TLSClientConfig.RootCAs
	dial := func(addr string, cfg *tls.Config) (*tls.Conn, error) {
		if cfg.RootCAs == nil {
			cfg.RootCAs = pool
		}
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	}
	if c, err := dial(addr, &tls.Config{MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10}); err == nil { //nolint:gosec // must be refused
		c.Close()
		t.Error("a TLS 1.1 handshake succeeded")
	}
	if c, err := dial(addr, &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}); err == nil {
		c.Close()
		t.Error("a CBC cipher suite was accepted")
	}
	c, err := dial(addr, &tls.Config{MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatalf("a modern TLS 1.2 client was refused: %v", err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Errorf("negotiated %q with a client offering h2, want h2", p)
	}
	c.Close()

	// A review over HTTP/2, as the API server's webhook client sends it.
	h2 := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	defer h2.CloseIdleConnections()
	resp, err := h2.Post(ts.url, "application/json", bytes.NewReader(review(t, "admission.k8s.io/v1", examplePodJSONB(t, "gloo-gateway-proxy.yaml"), nil)))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ar admissionv1.AdmissionReview
	if resp.ProtoMajor != 2 {
		t.Errorf("answered over %s, want HTTP/2", resp.Proto)
	}
	if err := json.Unmarshal(raw, &ar); err != nil || ar.Response == nil || !ar.Response.Allowed || len(ar.Response.Patch) == 0 {
		t.Errorf("the review over HTTP/2 was not answered with an injection: %.300s", raw)
	}

	off := startTestServer(t, func(o *Options) { o.DisableHTTP2 = true })
	offAddr := strings.TrimSuffix(strings.TrimPrefix(off.url, "https://"), InjectPath)
	c, err = dial(offAddr, &tls.Config{NextProtos: []string{"h2", "http/1.1"}, RootCAs: off.client.Transport.(*http.Transport).TLSClientConfig.RootCAs})
	if err != nil {
		t.Fatal(err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Errorf("DisableHTTP2: negotiated %q, want http/1.1", p)
	}
	c.Close()
	c.Close()
	// The admission port speaks TLS only.
	resp, err = http.Post("http://"+addr+InjectPath, "application/json", bytes.NewReader([]byte("{}")))
	if err == nil {
		raw, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if bytes.Contains(raw, []byte("AdmissionReview")) {
			t.Error("a plaintext request was served an admission review")
		}
	}
}
