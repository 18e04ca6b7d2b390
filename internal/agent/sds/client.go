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

// Fetch opens an SDS stream to target (a gRPC target such as
// "unix:///var/run/secrets/workload-spiffe-uds/socket") as node nodeID, asks
// for names and returns them once all have arrived, or ctx's error.
func Fetch(ctx context.Context, target, nodeID string, names ...string) (map[string]*tlsv3.Secret, error) {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx, grpc.WaitForReady(true))
	if err != nil {
		return nil, err
	}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: nodeID}, TypeUrl: TypeURL, ResourceNames: names}
	if err := stream.Send(req); err != nil {
		return nil, err
	}
	got := map[string]*tlsv3.Secret{}
	for len(got) < len(names) {
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		for _, a := range resp.Resources {
			sec := &tlsv3.Secret{}
			if err := a.UnmarshalTo(sec); err != nil {
				return nil, fmt.Errorf("decoding a secret: %w", err)
			}
			got[sec.Name] = sec
		}
		// ACK, as Envoy does.
		req.VersionInfo, req.ResponseNonce = resp.VersionInfo, resp.Nonce
		if err := stream.Send(req); err != nil {
			return nil, err
		}
	}
	return got, nil
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
