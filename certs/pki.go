// Package certs keeps the webhook's serving certificate trusted by the API
// server for its whole life, without cert-manager: a CA and a serving
// certificate live in one Secret (the source of truth every replica
// shares), the serving files are written for the webhook server (which
// reloads them), and the caBundle of the injector's own webhook
// configurations is kept in step, including across CA rotations.
//
// Why not open-policy-agent/cert-controller: it issues RSA keys, replaces
// the CA and the serving certificate in one step (the caBundle then trusts
// only the new CA while replicas may still serve the old certificate), and
// leaves multi-replica races to leader election. This package issues ECDSA
// P-256, rolls the CA with an overlap (old and new CA both trusted until the
// old one expires), and uses the Secret's resourceVersion for agreement.
package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"

	certutil "k8s.io/client-go/util/cert"
)

// backdate covers clock skew between the injector and the API server.
const backdate = time.Hour

// keyPair is a parsed certificate with its private key and PEM forms.
type keyPair struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
	keyPEM  []byte
}

func newKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func serialNumber() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// newCA creates a self-signed ECDSA P-256 CA valid from now-backdate.
func newCA(now time.Time, validity time.Duration) (*keyPair, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// A subject is required: an empty issuer DN is invalid (RFC 5280).
		Subject:               pkix.Name{CommonName: "sds-injector webhook CA " + now.UTC().Format("2006-01-02T15:04:05Z"), Organization: []string{"sds-injector"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM: keyPEM}, nil
}

// issueServing signs a serving certificate for the given names. It never
// outlives its CA.
func issueServing(ca *keyPair, now time.Time, validity time.Duration, dnsNames []string, ips []net.IP) (*keyPair, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	cn := "sds-injector"
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"sds-injector"}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	// tls.crt carries the leaf only: the API server trusts the CA through
	// caBundle, and a chain would grow with every CA in the bundle.
	return &keyPair{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM: keyPEM}, nil
}

func parseKeyPair(certPEM, keyPEM []byte) (*keyPair, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("no PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("private key cannot sign")
	}
	if !publicKeysEqual(cert.PublicKey, signer.Public()) {
		return nil, errors.New("private key does not match the certificate")
	}
	return &keyPair{cert: cert, key: signer, certPEM: certPEM, keyPEM: keyPEM}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// parseBundle decodes every certificate in a PEM bundle (client-go's
// parser: non-certificate blocks are skipped, an empty bundle is an error).
func parseBundle(data []byte) ([]*x509.Certificate, error) {
	return certutil.ParseCertsPEM(data)
}

func encodeBundle(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// bundleContains reports whether PEM bundle data holds cert.
func bundleContains(data []byte, cert *x509.Certificate) bool {
	certs, err := parseBundle(data)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(certs, func(c *x509.Certificate) bool { return c.Equal(cert) })
}

// verifies reports whether leaf chains to one of the CAs in the bundle.
func verifies(leaf *x509.Certificate, bundle []*x509.Certificate, now time.Time) bool {
	pool := x509.NewCertPool()
	for _, c := range bundle {
		pool.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err == nil
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:8])
}

// renewalDue says whether a certificate has entered its renewal window:
// the last renewFraction of its lifetime.
func renewalDue(c *x509.Certificate, now time.Time, renewFraction float64) bool {
	life := c.NotAfter.Sub(c.NotBefore)
	return now.After(c.NotAfter.Add(-time.Duration(float64(life) * renewFraction)))
}

func describe(c *x509.Certificate) string {
	return fmt.Sprintf("%s (serial %s, expires %s)", c.Subject.CommonName, fingerprint(c), c.NotAfter.UTC().Format(time.RFC3339))
}
