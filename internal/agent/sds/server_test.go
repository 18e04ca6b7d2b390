package sds

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/sds-injector/sds-injector/test/harness"
)

const wait = 30 * time.Second

// serve runs a Server for store on a Unix socket and returns a client.
func serve(t *testing.T, store *Store) (*Server, secretv3.SecretDiscoveryServiceClient) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdst")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "socket")
	l, err := ListenUnix(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(store, slog.New(slog.NewTextHandler(io.Discard, nil)))
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(func() { srv.CloseStreams(); g.Stop() })
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return srv, secretv3.NewSecretDiscoveryServiceClient(conn)
}

type rawStream struct {
	t     *testing.T
	s     secretv3.SecretDiscoveryService_StreamSecretsClient
	resps chan *discoveryv3.DiscoveryResponse
	errs  chan error
}

func open(t *testing.T, c secretv3.SecretDiscoveryServiceClient) *rawStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := c.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := &rawStream{t: t, s: s, resps: make(chan *discoveryv3.DiscoveryResponse, 8), errs: make(chan error, 1)}
	go func() {
		for {
			resp, err := s.Recv()
			if err != nil {
				r.errs <- err
				return
			}
			r.resps <- resp
		}
	}()
	return r
}

func (r *rawStream) send(req *discoveryv3.DiscoveryRequest) {
	r.t.Helper()
	if req.TypeUrl == "" {
		req.TypeUrl = TypeURL
	}
	if err := r.s.Send(req); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawStream) next() *discoveryv3.DiscoveryResponse {
	r.t.Helper()
	select {
	case resp := <-r.resps:
		return resp
	case err := <-r.errs:
		r.t.Fatalf("stream ended: %v", err)
	case <-time.After(wait):
		r.t.Fatal("no response")
	}
	return nil
}

func (r *rawStream) quiet() {
	r.t.Helper()
	select {
	case resp := <-r.resps:
		r.t.Fatalf("unexpected response %s with %d resources", resp.VersionInfo, len(resp.Resources))
	case err := <-r.errs:
		r.t.Fatalf("stream ended: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
}

func names(t *testing.T, resp *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range resp.Resources {
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s.Name)
	}
	return out
}

func testCert(d time.Duration) Certificate {
	return Certificate{ChainPEM: []byte("chain"), KeyPEM: []byte("key"), NotAfter: time.Now().Add(d)}
}

func TestProtocol(t *testing.T) {
	store := NewStore()
	defer store.Close()
	srv, client := serve(t, store)
	s := open(t, client)

	// Subscribed before anything exists: no response yet.
	s.send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy"}, ResourceNames: []string{Default}})
	s.quiet()
	store.SetRoots([]byte("roots"))
	s.quiet() // ROOTCA is not subscribed

	store.SetCertificate(testCert(time.Hour))
	r1 := s.next()
	if got := names(t, r1); len(got) != 1 || got[0] != Default || r1.Nonce == "" || r1.TypeUrl != TypeURL {
		t.Fatalf("first response %v nonce %q", got, r1.Nonce)
	}
	// ACK: silent.
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{Default}, VersionInfo: r1.VersionInfo, ResponseNonce: r1.Nonce})
	s.quiet()

	// Adding ROOTCA to the subscription sends the state of the world.
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{Default, RootCA}, VersionInfo: r1.VersionInfo, ResponseNonce: r1.Nonce})
	r2 := s.next()
	if got := names(t, r2); len(got) != 2 {
		t.Fatalf("second response %v", got)
	}
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{Default, RootCA}, VersionInfo: r2.VersionInfo, ResponseNonce: r2.Nonce})
	s.quiet()

	// A request with a stale nonce is ignored, even if it changes names.
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{GlooCertificate}, ResponseNonce: r1.Nonce})
	s.quiet()

	// NACK: logged, not resent.
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{Default, RootCA}, VersionInfo: r1.VersionInfo, ResponseNonce: r2.Nonce,
		ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: "bad key"}})
	s.quiet()

	// A rotation is pushed.
	store.SetCertificate(testCert(time.Hour))
	r3 := s.next()
	if r3.VersionInfo == r2.VersionInfo || len(r3.Resources) != 2 {
		t.Fatalf("rotation push version %s (was %s), %d resources", r3.VersionInfo, r2.VersionInfo, len(r3.Resources))
	}
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{Default, RootCA}, VersionInfo: r3.VersionInfo, ResponseNonce: r3.Nonce})
	s.quiet()

	// Unknown names are never answered, but do not break the stream.
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{Default, RootCA, "file-cert:/a~/b"}, VersionInfo: r3.VersionInfo, ResponseNonce: r3.Nonce})
	s.quiet()

	if srv.Streams() != 1 || srv.Pushes() != 3 {
		t.Errorf("streams %d pushes %d", srv.Streams(), srv.Pushes())
	}
}

func TestWrongTypeURL(t *testing.T) {
	store := NewStore()
	defer store.Close()
	_, client := serve(t, store)
	s := open(t, client)
	s.send(&discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster", ResourceNames: []string{Default}})
	select {
	case err := <-s.errs:
		if grpcstatus.Code(err) != codes.InvalidArgument {
			t.Fatalf("%v", err)
		}
	case <-time.After(wait):
		t.Fatal("stream not closed")
	}
}

func TestExpiryWithdraws(t *testing.T) {
	store := NewStore()
	defer store.Close()
	store.SetCertificate(testCert(150 * time.Millisecond))
	if _, ok := store.Certificate(); !ok {
		t.Fatal("no certificate")
	}
	harness.Eventually(t, wait, "certificate withdrawn at expiry", func(context.Context) (bool, error) {
		_, ok := store.Certificate()
		return !ok, nil
	})
	if sn := store.snapshot(); sn.cert != nil {
		t.Fatal("snapshot still holds the expired certificate")
	}
	if _, ok := store.snapshot().secret(Default); ok {
		t.Fatal("expired certificate served")
	}
}

func TestFetchSecrets(t *testing.T) {
	store := NewStore()
	defer store.Close()
	_, client := serve(t, store)
	req := &discoveryv3.DiscoveryRequest{ResourceNames: []string{GlooCertificate, GlooValidationContext}}
	if _, err := client.FetchSecrets(context.Background(), req); grpcstatus.Code(err) != codes.Unavailable {
		t.Fatalf("empty store: %v", err)
	}
	store.Update(&Certificate{ChainPEM: []byte("c"), KeyPEM: []byte("k"), NotAfter: time.Now().Add(time.Hour)}, []byte("r"))
	resp, err := client.FetchSecrets(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(t, resp); len(got) != 2 || got[0] != GlooCertificate || got[1] != GlooValidationContext {
		t.Fatalf("%v", got)
	}
}

func TestListenUnixRefusesNonSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "socket")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := ListenUnix(path, 0o666); err == nil {
		l.Close()
		t.Fatal("replaced a regular file")
	}
}

func TestListenUnixMode(t *testing.T) {
	dir, err := os.MkdirTemp("", "sdsm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "socket")
	l, err := ListenUnix(path, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("mode %v", fi.Mode())
	}
	if c, err := net.Dial("unix", path); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
}

// The exported name lists are what the server resolves: every listed name
// gets its secret, and nothing else does.
func TestServedNameLists(t *testing.T) {
	for _, n := range CertificateNames() {
		if kindOf(n) != kindCert {
			t.Errorf("%s is listed as a certificate name but resolves to %d", n, kindOf(n))
		}
	}
	for _, n := range RootNames() {
		if kindOf(n) != kindRoot {
			t.Errorf("%s is listed as a trust bundle name but resolves to %d", n, kindOf(n))
		}
	}
	if kindOf("ROOTCA ") != kindUnknown || kindOf("") != kindUnknown {
		t.Error("unlisted names resolve")
	}
}
