package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	certutil "k8s.io/client-go/util/cert"
)

// Issued is a checked CA response.
type Issued struct {
	// ChainPEM is every certificate of the response, leaf first and root
	// last, as istio-agent serves it under "default".
	ChainPEM []byte
	Leaf     *x509.Certificate
	// Root is the response's last certificate, the CA's root.
	Root    *x509.Certificate
	RootPEM []byte
	// NotAfter is the earliest expiry of the leaf and intermediates.
	NotAfter time.Time
}

// ParseChain decodes a CreateCertificate response and checks that the leaf
// holds key's public key and chains to the response's root.
func ParseChain(chain []string, key crypto.Signer) (*Issued, error) {
	var certs []*x509.Certificate
	for _, elem := range chain {
		rest := []byte(elem)
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parsing the CA's certificate chain: %w", err)
			}
			certs = append(certs, c)
		}
	}
	if len(certs) < 2 {
		return nil, fmt.Errorf("the CA returned %d certificates, want the workload certificate and the root", len(certs))
	}
	leaf, root := certs[0], certs[len(certs)-1]
	type publicKey interface{ Equal(crypto.PublicKey) bool }
	if pk, ok := leaf.PublicKey.(publicKey); !ok || !pk.Equal(key.Public()) {
		return nil, errors.New("the issued certificate does not hold the requested key")
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	notAfter := leaf.NotAfter
	for _, c := range certs[1 : len(certs)-1] {
		inter.AddCert(c)
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	// Check signatures and constraints at the first instant the whole chain
	// is valid; expiry is the caller's business.
	at := leaf.NotBefore
	for _, c := range certs[1:] {
		if c.NotBefore.After(at) {
			at = c.NotBefore
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("the issued certificate does not chain to the CA's root: %w", err)
	}
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return &Issued{
		ChainPEM: buf.Bytes(),
		Leaf:     leaf,
		Root:     root,
		RootPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}),
		NotAfter: notAfter,
	}, nil
}

// ParsePEMCerts decodes every CERTIFICATE block of data (client-go's
// parser: other blocks are skipped, no certificate at all is an error).
func ParsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	return certutil.ParseCertsPEM(data)
}

// TokenClaims are the parts of a Kubernetes service-account token the agent
// reads without verifying it (istiod verifies it with a TokenReview).
type TokenClaims struct {
	Expiry         time.Time
	Audiences      []string
	Namespace      string
	ServiceAccount string
}

// ParseToken decodes a JWT's claims without verifying its signature.
func ParseToken(tok string) (TokenClaims, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return TokenClaims{}, errors.New("not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return TokenClaims{}, fmt.Errorf("decoding the JWT payload: %w", err)
	}
	var raw struct {
		Exp  float64         `json:"exp"`
		Aud  json.RawMessage `json:"aud"`
		Sub  string          `json:"sub"`
		Kube struct {
			Namespace      string `json:"namespace"`
			ServiceAccount struct {
				Name string `json:"name"`
			} `json:"serviceaccount"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &raw); err != nil {
		return TokenClaims{}, fmt.Errorf("decoding the JWT claims: %w", err)
	}
	c := TokenClaims{Namespace: raw.Kube.Namespace, ServiceAccount: raw.Kube.ServiceAccount.Name}
	if raw.Exp > 0 {
		c.Expiry = time.Unix(int64(raw.Exp), 0)
	}
	if len(raw.Aud) > 0 {
		var one string
		if json.Unmarshal(raw.Aud, &one) == nil {
			c.Audiences = []string{one}
		} else {
			_ = json.Unmarshal(raw.Aud, &c.Audiences)
		}
	}
	// Legacy tokens only carry sub = system:serviceaccount:<ns>:<sa>.
	if c.Namespace == "" {
		if p := strings.Split(raw.Sub, ":"); len(p) == 4 && p[0] == "system" && p[1] == "serviceaccount" {
			c.Namespace, c.ServiceAccount = p[2], p[3]
		}
	}
	return c, nil
}
