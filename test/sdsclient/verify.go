package sdsclient

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"
)

// VerifyWorkload checks a workload certificate as served under default:
// chain and key form a pair, the leaf is valid at now, its only URI SAN is
// wantID, and it chains (through the chain's intermediates) to roots. It
// returns the leaf.
func VerifyWorkload(chain, key []byte, wantID string, roots *x509.CertPool, now time.Time) (*x509.Certificate, error) {
	pair, err := tls.X509KeyPair(chain, key)
	if err != nil {
		return nil, err
	}
	leaf := pair.Leaf
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("certificate not valid at %s: %s – %s", now.Format(time.RFC3339), leaf.NotBefore, leaf.NotAfter)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != wantID {
		return nil, fmt.Errorf("certificate identity %v, want [%s]", leaf.URIs, wantID)
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("%s does not chain to the roots: %w", wantID, err)
	}
	return leaf, nil
}
