package sds

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
)

// serveAt runs a Server for store on a Unix socket and returns its path
// and a function that stops the gRPC server.
func serveAt(t *testing.T, store *Store) (string, func()) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdsc")
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
	stop := func() { srv.CloseStreams(); g.Stop() }
	t.Cleanup(stop)
	return path, stop
}

// The client's contract: Until merges responses until every name came, a
// push arrives after the ACK, and the ends are told apart (ctx, stream).
func TestStream(t *testing.T) {
	store := NewStore()
	path, stop := serveAt(t, store)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Subscribe(ctx, "unix://"+path, &corev3.Node{Id: "router~10.0.0.1~gw-0.gw~gw.svc.cluster.local"}, RootCA)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// Nothing to serve yet: Next ends with its own ctx, the stream lives on.
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = s.Next(short)
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next before any secret: %v, want its deadline", err)
	}

	store.SetRoots([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	got, err := s.Until(ctx, RootCA)
	if err != nil || got[RootCA].GetValidationContext() == nil {
		t.Fatalf("Until(ROOTCA): %v %v", got, err)
	}
	// A change is pushed on the same stream after the ACK.
	store.SetRoots([]byte("-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"))
	r, err := s.Next(ctx)
	if err != nil || !strings.Contains(string(r.Secrets[RootCA].GetValidationContext().GetTrustedCa().GetInlineBytes()), "BBBB") {
		t.Fatalf("push after ACK: %v %v", r, err)
	}

	stop()
	if _, err := s.Next(ctx); err == nil || !strings.Contains(err.Error(), "SDS stream ended") {
		t.Fatalf("Next after the server stopped: %v, want the stream's end", err)
	}
}

func TestFetchWaitsForAllNames(t *testing.T) {
	store := NewStore()
	path, _ := serveAt(t, store)
	store.SetRoots([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	// default is never served (no certificate): Fetch must not return
	// ROOTCA alone as if it were complete.
	got, err := Fetch(ctx, "unix://"+path, ProbeNodeID, RootCA, Default)
	if err == nil {
		t.Fatalf("Fetch returned %v without default", got)
	}
}
