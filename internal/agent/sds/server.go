package sds

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"

	"github.com/sds-injector/sds-injector/internal/agentcontract"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// TypeURL is the type of every resource the server sends.
const TypeURL = agentcontract.SecretTypeURL

// ProbeNodeID is the node ID `sds-agent probe` sends, so that its short
// streams are not counted as gateway connections.
const ProbeNodeID = "sds-agent-probe"

// Server implements SecretDiscoveryService over a Store.
type Server struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer

	store *Store
	log   *slog.Logger

	streams atomic.Int64 // open streams that are not probes
	probes  atomic.Int64
	pushes  atomic.Uint64

	mu       sync.Mutex
	closing  chan struct{}
	closed   bool
	changeFn []func() // called when the number of streams changes
}

// NewServer returns a server for store.
func NewServer(store *Store, log *slog.Logger) *Server {
	return &Server{store: store, log: log, closing: make(chan struct{})}
}

// Register adds the SDS service to g.
func (s *Server) Register(g *grpc.Server) { secretv3.RegisterSecretDiscoveryServiceServer(g, s) }

// Streams is the number of open SDS streams, probes excluded.
func (s *Server) Streams() int64 { return s.streams.Load() }

// Pushes is the number of responses sent on streams.
func (s *Server) Pushes() uint64 { return s.pushes.Load() }

// OnStreamsChange registers f to run whenever Streams changes.
func (s *Server) OnStreamsChange(f func()) {
	s.mu.Lock()
	s.changeFn = append(s.changeFn, f)
	s.mu.Unlock()
}

func (s *Server) streamsChanged() {
	s.mu.Lock()
	fns := s.changeFn
	s.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

// CloseStreams ends every open stream (with Unavailable, so clients
// reconnect elsewhere or later) and refuses new ones. Call it before
// grpc.Server.GracefulStop, which otherwise waits for streams forever.
func (s *Server) CloseStreams() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
}

// StreamSecrets serves the state-of-the-world protocol: every response holds
// all subscribed secrets that are available; a response is sent when the
// subscription changes or a subscribed secret changes; ACKs are silent.
func (s *Server) StreamSecrets(stream secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	ctx := stream.Context()
	st := &streamState{sent: map[string]uint64{}}

	reqs := make(chan *discoveryv3.DiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	counted := false
	defer func() {
		if counted {
			if st.probe {
				s.probes.Add(-1)
			} else {
				s.streams.Add(-1)
				s.streamsChanged()
			}
		}
	}()

	for {
		sn := s.store.snapshot()
		if st.pending(sn) {
			resp, err := st.response(sn)
			if err != nil {
				return status.Error(codes.Internal, err.Error())
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			s.pushes.Add(1)
			s.log.Debug("sds: pushed", "node", st.node, "names", st.names, "version", resp.VersionInfo)
		}
		select {
		case req := <-reqs:
			if !counted {
				counted = true
				st.node = req.GetNode().GetId()
				st.probe = st.node == ProbeNodeID
				if st.probe {
					s.probes.Add(1)
				} else {
					s.streams.Add(1)
					s.streamsChanged()
					s.log.Info("sds: stream opened", "node", st.node, "names", req.ResourceNames)
				}
			}
			if err := s.handleRequest(st, req); err != nil {
				return err
			}
		case <-sn.changed:
		case err := <-recvErr:
			if !st.probe && counted {
				s.log.Info("sds: stream closed", "node", st.node, "reason", err)
			}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-s.closing:
			return status.Error(codes.Unavailable, "sds-agent is shutting down")
		}
	}
}

func (s *Server) handleRequest(st *streamState, req *discoveryv3.DiscoveryRequest) error {
	if req.TypeUrl != "" && req.TypeUrl != TypeURL {
		return status.Errorf(codes.InvalidArgument, "type %q is not served here; only %s", req.TypeUrl, TypeURL)
	}
	if req.ResponseNonce != "" && req.ResponseNonce != st.lastNonce() {
		// A request answering an older response: superseded, ignore it.
		return nil
	}
	if req.ErrorDetail != nil {
		s.log.Warn("sds: client rejected a response", "node", st.node, "names", st.names, "version", req.VersionInfo, "error", req.ErrorDetail.GetMessage())
	}
	st.subscribe(req.ResourceNames, func(name string) {
		s.log.Warn("sds: unknown resource requested; it will never be sent", "node", st.node, "name", name,
			"served", []string{Default, RootCA, GlooCertificate, GlooValidationContext})
	})
	return nil
}

// FetchSecrets answers a one-off request with the requested secrets, or
// Unavailable if any of them is not available yet.
func (s *Server) FetchSecrets(_ context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	if req.TypeUrl != "" && req.TypeUrl != TypeURL {
		return nil, status.Errorf(codes.InvalidArgument, "type %q is not served here", req.TypeUrl)
	}
	sn := s.store.snapshot()
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: TypeURL, VersionInfo: sn.version()}
	for _, name := range req.ResourceNames {
		sec, ok := sn.secret(name)
		if !ok {
			return nil, status.Errorf(codes.Unavailable, "secret %q is not available", name)
		}
		a, err := anypb.New(sec)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		resp.Resources = append(resp.Resources, a)
	}
	return resp, nil
}

func (sn snapshot) version() string {
	return strconv.FormatUint(sn.certGen, 10) + "." + strconv.FormatUint(sn.rootGen, 10)
}

// streamState is one stream's subscription and what it was last sent.
type streamState struct {
	node    string
	probe   bool
	names   []string
	sent    map[string]uint64 // name -> generation last sent
	nonce   uint64
	unknown map[string]bool
}

func (st *streamState) lastNonce() string {
	if st.nonce == 0 {
		return ""
	}
	return strconv.FormatUint(st.nonce, 10)
}

// subscribe replaces the subscription with names.
func (st *streamState) subscribe(names []string, warnUnknown func(string)) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
		if kindOf(n) == kindUnknown {
			if st.unknown == nil {
				st.unknown = map[string]bool{}
			}
			if !st.unknown[n] {
				st.unknown[n] = true
				warnUnknown(n)
			}
		}
	}
	for n := range st.sent {
		if !want[n] {
			delete(st.sent, n)
		}
	}
	st.names = slices.Sorted(maps.Keys(want))
}

// pending reports whether a subscribed secret is available in a version the
// stream has not been sent.
func (st *streamState) pending(sn snapshot) bool {
	for _, n := range st.names {
		gen, ok := sn.gen(n)
		if ok {
			if sent, was := st.sent[n]; !was || sent != gen {
				return true
			}
		}
	}
	return false
}

// response holds every available subscribed secret and records it as sent.
func (st *streamState) response(sn snapshot) (*discoveryv3.DiscoveryResponse, error) {
	st.nonce++
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: TypeURL, VersionInfo: sn.version(), Nonce: st.lastNonce()}
	for _, n := range st.names {
		sec, ok := sn.secret(n)
		if !ok {
			continue
		}
		a, err := anypb.New(sec)
		if err != nil {
			return nil, fmt.Errorf("encoding secret %s: %w", n, err)
		}
		resp.Resources = append(resp.Resources, a)
		st.sent[n], _ = sn.gen(n)
	}
	return resp, nil
}
