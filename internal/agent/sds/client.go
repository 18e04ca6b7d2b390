package sds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Stream is one SDS subscription held the way Envoy holds it: a
// StreamSecrets stream, a first request carrying the node and the resource
// names, then an ACK (version and nonce) of every response. It is the one
// SDS client of the project: the agent's probe and wait subcommands and
// every test that talks SDS use it (test/sdsclient builds on it).
type Stream struct {
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	stream secretv3.SecretDiscoveryService_StreamSecretsClient
	req    *discoveryv3.DiscoveryRequest
	resps  chan *discoveryv3.DiscoveryResponse
	done   chan struct{}
	err    error // set before done is closed
}

// Response is one SDS response: its version, nonce and secrets by name.
type Response struct {
	Version, Nonce string
	Secrets        map[string]*tlsv3.Secret
}

// Subscribe dials target (a gRPC target: "unix:///abs/path", "unix:rel" or
// "host:port") and subscribes as node to names. The stream waits for the
// server to come up; it ends when ctx ends or Close is called.
func Subscribe(ctx context.Context, target string, node *corev3.Node, names ...string) (*Stream, error) {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx, grpc.WaitForReady(true))
	if err != nil {
		cancel()
		conn.Close()
		return nil, err
	}
	s := &Stream{conn: conn, cancel: cancel, stream: stream,
		req:   &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: TypeURL, ResourceNames: names},
		resps: make(chan *discoveryv3.DiscoveryResponse, 16), done: make(chan struct{})}
	if err := stream.Send(s.req); err != nil {
		s.Close()
		return nil, err
	}
	go func() {
		defer close(s.done)
		for {
			r, err := stream.Recv()
			if err != nil {
				s.err = err
				return
			}
			select {
			case s.resps <- r:
			case <-ctx.Done():
				s.err = ctx.Err()
				return
			}
		}
	}()
	return s, nil
}

// Next returns the next response, decoded, after ACKing it. It fails when
// the stream has ended, a resource is not a secret, or ctx ends first.
func (s *Stream) Next(ctx context.Context) (*Response, error) {
	var r *discoveryv3.DiscoveryResponse
	select {
	case r = <-s.resps:
	case <-s.done:
		select { // a response that arrived before the end still counts
		case r = <-s.resps:
		default:
			return nil, fmt.Errorf("SDS stream ended: %w", s.err)
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("no SDS response: %w", ctx.Err())
	}
	if r.GetTypeUrl() != TypeURL {
		return nil, fmt.Errorf("response type %q, want %q", r.GetTypeUrl(), TypeURL)
	}
	out := &Response{Version: r.GetVersionInfo(), Nonce: r.GetNonce(), Secrets: map[string]*tlsv3.Secret{}}
	for _, a := range r.GetResources() {
		if a.GetTypeUrl() != TypeURL {
			return nil, fmt.Errorf("resource of type %q, want %q", a.GetTypeUrl(), TypeURL)
		}
		sec := &tlsv3.Secret{}
		if err := a.UnmarshalTo(sec); err != nil {
			return nil, fmt.Errorf("decoding a secret: %w", err)
		}
		out.Secrets[sec.GetName()] = sec
	}
	// ACK, as Envoy does; the server may then push updates on the stream.
	s.req.VersionInfo, s.req.ResponseNonce = r.GetVersionInfo(), r.GetNonce()
	if err := s.stream.Send(s.req); err != nil {
		return nil, fmt.Errorf("ACK: %w", err)
	}
	return out, nil
}

// Until reads responses until every name in names has been received,
// merging them (later responses win).
func (s *Stream) Until(ctx context.Context, names ...string) (map[string]*tlsv3.Secret, error) {
	all := map[string]*tlsv3.Secret{}
	for {
		r, err := s.Next(ctx)
		if err != nil {
			return all, err
		}
		for k, v := range r.Secrets {
			all[k] = v
		}
		missing := false
		for _, n := range names {
			if all[n] == nil {
				missing = true
			}
		}
		if !missing {
			return all, nil
		}
	}
}

// Close ends the stream and its connection.
func (s *Stream) Close() {
	s.cancel()
	_ = s.conn.Close()
}

// Fetch opens an SDS stream to target (a gRPC target such as
// "unix:///var/run/secrets/workload-spiffe-uds/socket") as node nodeID, asks
// for names and returns them once all have arrived, or ctx's error.
func Fetch(ctx context.Context, target, nodeID string, names ...string) (map[string]*tlsv3.Secret, error) {
	s, err := Subscribe(ctx, target, &corev3.Node{Id: nodeID}, names...)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Until(ctx, names...)
}

// CheckCertificate verifies that sec is a usable TLS certificate (chain and
// matching key) valid at now, and returns its leaf.
func CheckCertificate(sec *tlsv3.Secret, now time.Time) (*x509.Certificate, error) {
	tc := sec.GetTlsCertificate()
	if tc == nil {
		return nil, fmt.Errorf("secret %q holds no TLS certificate", sec.GetName())
	}
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", sec.GetName(), err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		return nil, errors.New("no leaf certificate")
	}
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("secret %q: certificate valid %s to %s, not now", sec.GetName(), leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339))
	}
	return leaf, nil
}
