package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"
)

func issue(t *testing.T, signer *ecdsa.PrivateKey, parent *x509.Certificate, pub any, isCA bool) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "x"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: isCA, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func pemOf(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})) + "\n"
}

func TestKeyCSRAndChain(t *testing.T) {
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root := issue(t, rootKey, nil, &rootKey.PublicKey, true)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	inter := issue(t, rootKey, root, &interKey.PublicKey, true)

	for _, alg := range KeyAlgorithms {
		key, keyPEM, err := NewKey(alg)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
			t.Fatalf("%s: key PEM %q", alg, keyPEM)
		}
		id := SpiffeID("cluster.local", "gw", "gateway")
		csrPEM, err := NewCSR(key, id)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(csrPEM)
		csr, err := x509.ParseCertificateRequest(b.Bytes)
		if err != nil || csr.CheckSignature() != nil {
			t.Fatalf("%s: CSR %v", alg, err)
		}
		if len(csr.URIs) != 1 || csr.URIs[0].String() != "spiffe://cluster.local/ns/gw/sa/gateway" {
			t.Fatalf("CSR URIs %v", csr.URIs)
		}
		leaf := issue(t, interKey, inter, key.Public(), false)
		got, err := ParseChain([]string{pemOf(leaf), pemOf(inter), pemOf(root)}, key)
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if got.Root.Equal(root) == false || got.Leaf.Equal(leaf) == false || strings.Count(string(got.ChainPEM), "BEGIN") != 3 {
			t.Errorf("%s: parsed %+v", alg, got)
		}
		// Concatenated PEM elements are split too.
		if _, err := ParseChain([]string{pemOf(leaf) + pemOf(inter), pemOf(root)}, key); err != nil {
			t.Errorf("concatenated: %v", err)
		}
	}
	if _, _, err := NewKey("dsa"); err == nil {
		t.Error("unknown algorithm accepted")
	}

	key, _, _ := NewKey(ECDSAP256)
	other, _, _ := NewKey(ECDSAP256)
	leaf := issue(t, rootKey, root, key.Public(), false)
	if _, err := ParseChain([]string{pemOf(leaf), pemOf(root)}, other); err == nil || !strings.Contains(err.Error(), "requested key") {
		t.Errorf("wrong key: %v", err)
	}
	strangerKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	stranger := issue(t, strangerKey, nil, &strangerKey.PublicKey, true)
	if _, err := ParseChain([]string{pemOf(leaf), pemOf(stranger)}, key); err == nil || !strings.Contains(err.Error(), "chain") {
		t.Errorf("foreign root: %v", err)
	}
	if _, err := ParseChain([]string{pemOf(leaf)}, key); err == nil {
		t.Error("chain without root accepted")
	}
}

func TestParseToken(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	tok := enc(`{"alg":"RS256"}`) + "." + enc(`{"aud":["istio-ca"],"exp":1900000000,"kubernetes.io":{"namespace":"gw","serviceaccount":{"name":"gateway"}}}`) + ".sig"
	c, err := ParseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.Namespace != "gw" || c.ServiceAccount != "gateway" || c.Expiry.Unix() != 1900000000 || len(c.Audiences) != 1 || c.Audiences[0] != "istio-ca" {
		t.Errorf("%+v", c)
	}
	legacy := enc(`{}`) + "." + enc(`{"aud":"istio-ca","sub":"system:serviceaccount:ns1:sa1"}`) + ".sig"
	c, err = ParseToken(legacy)
	if err != nil || c.Namespace != "ns1" || c.ServiceAccount != "sa1" || c.Audiences[0] != "istio-ca" || !c.Expiry.IsZero() {
		t.Errorf("legacy %+v %v", c, err)
	}
	for _, bad := range []string{"", "a.b", "a.!!!.c", enc("{}") + "." + enc("not json") + ".s"} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestNewClientAddress(t *testing.T) {
	if _, err := NewClient(Options{Addr: "no-port"}); err == nil {
		t.Error("address without port accepted")
	}
	c, err := NewClient(Options{Addr: "istiod.istio-system.svc:15012"})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	u, _ := url.Parse(SpiffeID("td", "n", "s"))
	if u.Scheme != "spiffe" || u.Host != "td" || u.Path != "/ns/n/sa/s" {
		t.Errorf("%v", u)
	}
}
