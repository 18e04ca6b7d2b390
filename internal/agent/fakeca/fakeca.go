// Package fakeca is an in-process stand-in for istiod's CA, for tests: a real
// gRPC server over TLS implementing istio.v1.auth.IstioCertificateService,
// which authenticates callers by a bearer token and signs their CSRs the way
// istiod does (identity from the token, NotBefore backdated, chain = leaf +
// root). Tokens are unsigned JWTs made by Token.
package fakeca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Audience is the audience tokens must carry.
const Audience = "istio-ca"

// ClockSkew is how far istiod backdates NotBefore.
const ClockSkew = 2 * time.Minute

// Token returns an unsigned JWT for namespace/serviceAccount expiring at exp.
func Token(namespace, serviceAccount string, exp time.Time, audiences ...string) string {
	if len(audiences) == 0 {
		audiences = []string{Audience}
	}
	claims := map[string]any{
		"aud": audiences,
		"exp": exp.Unix(),
		"sub": "system:serviceaccount:" + namespace + ":" + serviceAccount,
		"kubernetes.io": map[string]any{
			"namespace":      namespace,
			"serviceaccount": map[string]string{"name": serviceAccount},
		},
	}
	b, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none"}`)) + "." + enc(b) + ".fake"
}

// Request is what the CA saw of one call.
type Request struct {
	ClusterID string
	TTL       time.Duration
	CSRURIs   []string
	Err       error
}

// CA is a running fake CA.
type CA struct {
	pb.UnimplementedIstioCertificateServiceServer

	TrustDomain string
	ClusterID   string // required ClusterID metadata ("" accepts any)

	mu         sync.Mutex
	root       *x509.Certificate
	rootKey    *ecdsa.PrivateKey
	serving    *tls.Certificate
	failWith   error
	requests   []Request
	defaultTTL time.Duration

	lis  net.Listener
	srv  *grpc.Server
	addr string
}

// New creates a CA with a fresh root; call Start to serve it.
func New(trustDomain, clusterID string) (*CA, error) {
	c := &CA{TrustDomain: trustDomain, ClusterID: clusterID, defaultTTL: time.Hour}
	if err := c.RotateRoot(); err != nil {
		return nil, err
	}
	return c, nil
}

// RotateRoot replaces the root and the serving certificate signed by it.
func (c *CA) RotateRoot() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{Organization: []string{c.TrustDomain}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	root, _ := x509.ParseCertificate(der)

	skey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	stmpl := &x509.Certificate{
		SerialNumber: serial(), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost", "istiod.istio-system.svc"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	sder, err := x509.CreateCertificate(rand.Reader, stmpl, root, &skey.PublicKey, key)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.root, c.rootKey = root, key
	c.serving = &tls.Certificate{Certificate: [][]byte{sder}, PrivateKey: skey}
	c.mu.Unlock()
	return nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// RootPEM is the current root in PEM.
func (c *CA) RootPEM() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.root.Raw})
}

// Root is the current root.
func (c *CA) Root() *x509.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.root
}

// Start serves on addr ("127.0.0.1:0" for any port).
func (c *CA) Start(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.serving, nil
	}}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tc)))
	pb.RegisterIstioCertificateServiceServer(srv, c)
	c.mu.Lock()
	c.lis, c.srv, c.addr = lis, srv, lis.Addr().String()
	c.mu.Unlock()
	go func() { _ = srv.Serve(lis) }()
	return nil
}

// Addr is the address served, as "localhost:port" (the name in the serving
// certificate, as CA_ADDR would be).
func (c *CA) Addr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, port, _ := net.SplitHostPort(c.addr)
	return "localhost:" + port
}

// ListenAddr is the address listened on ("127.0.0.1:port"), for a restart.
func (c *CA) ListenAddr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addr
}

// Stop stops serving (an outage); Start may be called again with the same
// address.
func (c *CA) Stop() {
	c.mu.Lock()
	srv := c.srv
	c.srv = nil
	c.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// FailWith makes every call fail with err (nil: work again).
func (c *CA) FailWith(err error) {
	c.mu.Lock()
	c.failWith = err
	c.mu.Unlock()
}

// Requests returns what the CA has seen so far.
func (c *CA) Requests() []Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.requests)
}

// Issued counts the successful calls.
func (c *CA) Issued() int {
	n := 0
	for _, r := range c.Requests() {
		if r.Err == nil {
			n++
		}
	}
	return n
}

// CreateCertificate implements the CA service.
func (c *CA) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	rec := Request{TTL: time.Duration(req.ValidityDuration) * time.Second}
	resp, err := c.sign(ctx, req, &rec)
	rec.Err = err
	c.mu.Lock()
	c.requests = append(c.requests, rec)
	c.mu.Unlock()
	return resp, err
}

func (c *CA) sign(ctx context.Context, req *pb.IstioCertificateRequest, rec *Request) (*pb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("clusterid"); len(v) == 1 {
		rec.ClusterID = v[0]
	}
	c.mu.Lock()
	failWith, root, rootKey, ttl := c.failWith, c.root, c.rootKey, c.defaultTTL
	c.mu.Unlock()
	if failWith != nil {
		return nil, failWith
	}
	if c.ClusterID != "" && rec.ClusterID != c.ClusterID {
		return nil, status.Errorf(codes.Unauthenticated, "client claims to be in cluster %q, but we only know about local cluster %q", rec.ClusterID, c.ClusterID)
	}
	ns, sa, err := authenticate(md)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	block, _ := pem.Decode([]byte(req.Csr))
	if block == nil {
		return nil, status.Error(codes.InvalidArgument, "no PEM CSR")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad CSR: %v", err)
	}
	for _, u := range csr.URIs {
		rec.CSRURIs = append(rec.CSRURIs, u.String())
	}
	if req.ValidityDuration > 0 {
		ttl = time.Duration(req.ValidityDuration) * time.Second
	}
	id, _ := url.Parse("spiffe://" + c.TrustDomain + "/ns/" + ns + "/sa/" + sa)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), NotBefore: now.Add(-ClockSkew), NotAfter: now.Add(ttl), URIs: []*url.URL{id},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, csr.PublicKey, rootKey)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &pb.IstioCertificateResponse{CertChain: []string{
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})),
	}}, nil
}

// authenticate checks a Token-made bearer token: audience and expiry.
func authenticate(md metadata.MD) (ns, sa string, err error) {
	auth := md.Get("authorization")
	if len(auth) != 1 || !strings.HasPrefix(auth[0], "Bearer ") {
		return "", "", fmt.Errorf("no bearer token")
	}
	parts := strings.Split(strings.TrimPrefix(auth[0], "Bearer "), ".")
	if len(parts) != 3 {
		return "", "", fmt.Errorf("malformed token")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", "", fmt.Errorf("malformed token: %w", err)
	}
	var cl struct {
		Aud  []string `json:"aud"`
		Exp  int64    `json:"exp"`
		Kube struct {
			Namespace      string            `json:"namespace"`
			ServiceAccount map[string]string `json:"serviceaccount"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &cl); err != nil {
		return "", "", fmt.Errorf("malformed token: %w", err)
	}
	if !slices.Contains(cl.Aud, Audience) {
		return "", "", fmt.Errorf("token audiences %q is invalid for the target audiences [%q]", cl.Aud, Audience)
	}
	if time.Now().Unix() >= cl.Exp {
		return "", "", fmt.Errorf("token has expired")
	}
	return cl.Kube.Namespace, cl.Kube.ServiceAccount["name"], nil
}
