// Package ca obtains workload certificates from istiod's CA
// (istio.v1.auth.IstioCertificateService) the way istio-agent does: a CSR
// for the workload's SPIFFE identity, over TLS verified with istiod's root,
// authenticated with the projected service-account token, with the cluster
// ID in the "ClusterID" metadata that istiod uses to pick the cluster whose
// API server reviews the token.
package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Key algorithms.
const (
	ECDSAP256 = "ecdsa-p256"
	RSA2048   = "rsa-2048"
)

// KeyAlgorithms lists the accepted key algorithms, the default first.
var KeyAlgorithms = []string{ECDSAP256, RSA2048}

// ClusterIDMetadata is the gRPC metadata key istiod reads the caller's
// cluster from (istio-agent sends it on every CSR).
const ClusterIDMetadata = "ClusterID"

// SpiffeID is the workload identity istiod issues for a service account.
func SpiffeID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}

// NewKey generates a private key and returns it with its PKCS#8 PEM.
func NewKey(alg string) (crypto.Signer, []byte, error) {
	var key crypto.Signer
	var err error
	switch alg {
	case ECDSAP256, "":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		return nil, nil, fmt.Errorf("unknown key algorithm %q (want one of %s)", alg, strings.Join(KeyAlgorithms, ", "))
	}
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// NewCSR returns a PEM certificate request for the SPIFFE ID id, signed by key.
func NewCSR(key crypto.Signer, id string) ([]byte, error) {
	u, err := url.Parse(id)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// Options configure a Client.
type Options struct {
	// Addr is the CA's host:port (CA_ADDR).
	Addr string
	// ServerName overrides the name checked in the CA's certificate; by
	// default the host part of Addr.
	ServerName string
	// Roots verify the CA's serving certificate.
	Roots *x509.CertPool
	// ClusterID is sent as ClusterIDMetadata.
	ClusterID string
}

// Client calls istiod's CA. It is safe for concurrent use.
type Client struct {
	conn      *grpc.ClientConn
	client    pb.IstioCertificateServiceClient
	clusterID string
}

// NewClient prepares a connection to the CA (no I/O happens until Sign).
func NewClient(o Options) (*Client, error) {
	serverName := o.ServerName
	if serverName == "" {
		host, _, err := net.SplitHostPort(o.Addr)
		if err != nil {
			return nil, fmt.Errorf("CA address %q: %w", o.Addr, err)
		}
		serverName = host
	}
	tc := &tls.Config{RootCAs: o.Roots, ServerName: serverName, MinVersion: tls.VersionTLS12}
	conn, err := grpc.NewClient(o.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, client: pb.NewIstioCertificateServiceClient(conn), clusterID: o.ClusterID}, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Sign sends csrPEM, authenticated with token, and returns the response's
// certificate chain: the leaf first and istiod's root last.
func (c *Client) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration, token string) ([]string, error) {
	resp, err := c.client.CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64(ttl / time.Second),
	}, grpc.PerRPCCredentials(tokenCredentials{token: token, clusterID: c.clusterID}))
	if err != nil {
		return nil, err
	}
	if len(resp.CertChain) < 2 {
		return nil, errors.New("the CA returned no certificate chain (want the certificate and the root)")
	}
	return resp.CertChain, nil
}

// tokenCredentials adds the bearer token and the cluster ID; gRPC refuses
// to send them over a connection without transport security.
type tokenCredentials struct {
	token     string
	clusterID string
}

func (t tokenCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	md := map[string]string{"authorization": "Bearer " + t.token}
	if t.clusterID != "" {
		md[strings.ToLower(ClusterIDMetadata)] = t.clusterID
	}
	return md, nil
}

func (tokenCredentials) RequireTransportSecurity() bool { return true }

// ReadToken reads a token file, trimming surrounding white space.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}
