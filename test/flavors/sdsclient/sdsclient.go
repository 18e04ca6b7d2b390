// Package sdsclient fetches secrets from an SDS server on a Unix socket the
// way Envoy does: a gRPC SecretDiscoveryService.StreamSecrets stream per
// secret (Envoy opens one subscription per SDS secret config when it does
// not use ADS), a DiscoveryRequest carrying the node, the response, and an
// ACK of its version and nonce.
package sdsclient

import (
	"context"
	"errors"
	"fmt"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// SecretTypeURL is the type of SDS resources.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// Resource names Istio's agents serve.
const (
	WorkloadCert = "default"
	RootCA       = "ROOTCA"
)

// Secret is one SDS secret, flattened to what a gateway uses.
type Secret struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// CertificateChain and PrivateKey are set for a tls_certificate secret.
	CertificateChain []byte `json:"certificateChain,omitempty"`
	PrivateKey       []byte `json:"privateKey,omitempty"`
	// TrustedCA is set for a validation_context secret.
	TrustedCA []byte `json:"trustedCA,omitempty"`
}

// Fetch dials the Unix socket at socketPath (absolute, or relative to the
// working directory) and returns the first response for each name. node is
// the Envoy node ID sent with the first request. It waits for the server
// until ctx ends.
func Fetch(ctx context.Context, socketPath, node string, names ...string) (map[string]*Secret, error) {
	conn, err := grpc.NewClient("unix:"+socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := secretv3.NewSecretDiscoveryServiceClient(conn)

	var (
		mu   sync.Mutex
		out  = map[string]*Secret{}
		errs []error
		wg   sync.WaitGroup
	)
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := fetchOne(ctx, client, node, name)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				return
			}
			out[name] = s
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func fetchOne(ctx context.Context, client secretv3.SecretDiscoveryServiceClient, node, name string) (*Secret, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.StreamSecrets(ctx, grpc.WaitForReady(true))
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{
		Node:          &corev3.Node{Id: node},
		TypeUrl:       SecretTypeURL,
		ResourceNames: []string{name},
	}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	// ACK, as Envoy does; the server may then push updates on the stream.
	_ = stream.Send(&discoveryv3.DiscoveryRequest{
		VersionInfo:   resp.GetVersionInfo(),
		ResponseNonce: resp.GetNonce(),
		TypeUrl:       SecretTypeURL,
		ResourceNames: []string{name},
	})
	if resp.GetTypeUrl() != SecretTypeURL {
		return nil, fmt.Errorf("response type %q, want %q", resp.GetTypeUrl(), SecretTypeURL)
	}
	for _, res := range resp.GetResources() {
		var sec tlsv3.Secret
		if err := res.UnmarshalTo(&sec); err != nil {
			return nil, fmt.Errorf("decoding resource: %w", err)
		}
		if sec.GetName() != name {
			continue
		}
		s := &Secret{Name: name, Version: resp.GetVersionInfo()}
		if tc := sec.GetTlsCertificate(); tc != nil {
			s.CertificateChain = tc.GetCertificateChain().GetInlineBytes()
			s.PrivateKey = tc.GetPrivateKey().GetInlineBytes()
		}
		if vc := sec.GetValidationContext(); vc != nil {
			s.TrustedCA = vc.GetTrustedCa().GetInlineBytes()
		}
		return s, nil
	}
	return nil, fmt.Errorf("response (version %q) has no secret %q among %d resources", resp.GetVersionInfo(), name, len(resp.GetResources()))
}

// Watch keeps one StreamSecrets stream for name open on the Unix socket at
// socketPath, as Envoy does, and calls fn with every secret the server
// pushes (the first response and each later push, e.g. a rotation), ACKing
// each one. It returns when ctx ends or the stream fails; fn returning an
// error ends it too.
func Watch(ctx context.Context, socketPath, node, name string, fn func(*Secret) error) error {
	conn, err := grpc.NewClient("unix:"+socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := secretv3.NewSecretDiscoveryServiceClient(conn)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.StreamSecrets(ctx, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: SecretTypeURL, ResourceNames: []string{name}}
	for {
		if err := stream.Send(req); err != nil {
			return err
		}
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		req = &discoveryv3.DiscoveryRequest{VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(), TypeUrl: SecretTypeURL, ResourceNames: []string{name}}
		if resp.GetTypeUrl() != SecretTypeURL {
			return fmt.Errorf("response type %q, want %q", resp.GetTypeUrl(), SecretTypeURL)
		}
		for _, res := range resp.GetResources() {
			var sec tlsv3.Secret
			if err := res.UnmarshalTo(&sec); err != nil {
				return fmt.Errorf("decoding resource: %w", err)
			}
			if sec.GetName() != name {
				continue
			}
			s := &Secret{Name: name, Version: resp.GetVersionInfo()}
			if tc := sec.GetTlsCertificate(); tc != nil {
				s.CertificateChain = tc.GetCertificateChain().GetInlineBytes()
				s.PrivateKey = tc.GetPrivateKey().GetInlineBytes()
			}
			if vc := sec.GetValidationContext(); vc != nil {
				s.TrustedCA = vc.GetTrustedCa().GetInlineBytes()
			}
			if err := fn(s); err != nil {
				return err
			}
		}
	}
}
