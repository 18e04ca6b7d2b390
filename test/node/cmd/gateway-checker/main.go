// Command gateway-checker plays the gateway container in the real-node
// flavor proof (test only). It runs as the gateway container's user, with
// the gateway's mounts, and reads the workload certificate the way the
// gateway would: over the SDS socket (one StreamSecrets stream kept open, as
// Envoy does, so rotations pushed by the agent arrive on it) or from the PEM
// files. Every certificate is verified: the chain against the expected root,
// the key against the leaf, the leaf's only URI SAN against the expected
// SPIFFE ID. It reports one JSON line per event on stdout, prefixed with
// "CHECK ", which the test reads from the kubelet's container log.
//
// Environment: CHECK_MODE (sds or files), CHECK_PATH (the socket, or the
// directory of cert-chain.pem/key.pem/root-cert.pem), CHECK_SPIFFE (the
// expected SPIFFE ID), CHECK_ROOT (the expected root, PEM), CHECK_NODE (the
// SDS node ID), CHECK_ROOTCA_SHAPE (sds mode: the form ROOTCA must have,
// trusted_ca by default, as istiod's agents serve it, or spiffe, the SPIRE
// agent's default: Envoy's SPIFFE certificate validator config with exactly
// the trust domain of CHECK_SPIFFE, its bundle holding the root).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sds-injector/sds-injector/test/node/checkreport"
	"github.com/sds-injector/sds-injector/test/sdsclient"
)

// Event is one line of the checker's report.
type Event = checkreport.Line

var started = time.Now()

func emit(e Event) {
	e.Time = time.Now()
	e.Since = time.Since(started).String()
	b, _ := json.Marshal(e)
	fmt.Println(checkreport.Prefix + string(b))
}

func main() {
	mode, path := os.Getenv("CHECK_MODE"), os.Getenv("CHECK_PATH")
	want, root := os.Getenv("CHECK_SPIFFE"), []byte(os.Getenv("CHECK_ROOT"))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	groups, _ := os.Getgroups()
	var present bool
	switch mode {
	case "sds":
		_, err := os.Stat(path)
		present = err == nil
	case "files":
		present = true
		for _, f := range []string{"cert-chain.pem", "key.pem", "root-cert.pem"} {
			if _, err := os.Stat(filepath.Join(path, f)); err != nil {
				present = false
			}
		}
	default:
		emit(Event{Event: "error", Error: fmt.Sprintf("CHECK_MODE %q: want sds or files", mode)})
		os.Exit(2)
	}
	emit(Event{Event: "start", UID: os.Getuid(), GID: os.Getgid(), Groups: groups, PresentAtStart: &present})
	if want == "" || len(root) == 0 {
		emit(Event{Event: "error", Error: "CHECK_SPIFFE and CHECK_ROOT are required"})
		os.Exit(2)
	}
	shape := os.Getenv("CHECK_ROOTCA_SHAPE")
	if shape != "" && shape != shapeTrustedCA && shape != shapeSPIFFE {
		emit(Event{Event: "error", Error: fmt.Sprintf("CHECK_ROOTCA_SHAPE %q: want %s or %s", shape, shapeTrustedCA, shapeSPIFFE)})
		os.Exit(2)
	}
	if mode == "sds" {
		watchSDS(ctx, path, os.Getenv("CHECK_NODE"), want, root, shape)
	} else {
		watchFiles(ctx, path, want, root)
	}
}

// The ROOTCA shapes CHECK_ROOTCA_SHAPE names.
const (
	shapeTrustedCA = "trusted_ca"
	shapeSPIFFE    = "spiffe"
)

func watchSDS(ctx context.Context, socket, node, want string, root []byte, shape string) {
	go func() {
		// ROOTCA once per connection is enough to show it carries the root.
		for ctx.Err() == nil {
			fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			r, err := sdsclient.First(fctx, socket, &corev3.Node{Id: node}, sdsclient.RootCA)
			cancel()
			if err == nil {
				if err := checkRootCA(r.Secret(), shape, want, root); err != nil {
					emit(Event{Event: "error", Version: r.Version(), Error: "ROOTCA: " + err.Error()})
				} else {
					emit(Event{Event: "rootca", Version: r.Version()})
				}
				return
			}
			emit(Event{Event: "error", Error: "ROOTCA: " + err.Error()})
			sleep(ctx, time.Second)
		}
	}()
	for ctx.Err() == nil {
		err := sdsclient.Watch(ctx, socket, node, sdsclient.WorkloadCert, func(s *sdsclient.Secret) error {
			leaf, err := verify(s.CertificateChain, s.PrivateKey, root, want)
			if err != nil {
				emit(Event{Event: "error", Version: s.Version, Error: err.Error()})
				return nil
			}
			emit(Event{Event: "cert", Serial: leaf.SerialNumber.String(), NotAfter: leaf.NotAfter, SPIFFE: want, Version: s.Version})
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		// The agent went away (e.g. killed and being restarted by the
		// kubelet): reconnect, as Envoy does.
		emit(Event{Event: "stream-end", Error: fmt.Sprint(err)})
		sleep(ctx, 200*time.Millisecond)
	}
}

// checkRootCA checks that sec, the ROOTCA secret, has the given shape and
// carries root.
func checkRootCA(sec *tlsv3.Secret, shape, want string, root []byte) error {
	vc := sec.GetValidationContext()
	var bundle []byte
	switch shape {
	case shapeSPIFFE:
		cvc := vc.GetCustomValidatorConfig()
		if cvc.GetName() != "envoy.tls.cert_validator.spiffe" {
			return fmt.Errorf("not a SPIFFE certificate validator config (custom validator %q, trusted_ca %d bytes)", cvc.GetName(), len(vc.GetTrustedCa().GetInlineBytes()))
		}
		var cfg tlsv3.SPIFFECertValidatorConfig
		if err := cvc.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
			return fmt.Errorf("SPIFFE validator config: %w", err)
		}
		id, err := url.Parse(want)
		if err != nil {
			return fmt.Errorf("CHECK_SPIFFE: %w", err)
		}
		tds := cfg.GetTrustDomains()
		if len(tds) != 1 || tds[0].GetName() != id.Host {
			names := make([]string, 0, len(tds))
			for _, td := range tds {
				names = append(names, td.GetName())
			}
			return fmt.Errorf("trust domains %v, want exactly [%s]", names, id.Host)
		}
		bundle = tds[0].GetTrustBundle().GetInlineBytes()
	default:
		bundle = vc.GetTrustedCa().GetInlineBytes()
	}
	if !bytes.Contains(bundle, bytes.TrimSpace(root)) {
		return errors.New("does not contain the expected root")
	}
	return nil
}

func watchFiles(ctx context.Context, dir, want string, root []byte) {
	var last []byte
	var lastErr string
	for ctx.Err() == nil {
		chain, err1 := os.ReadFile(filepath.Join(dir, "cert-chain.pem"))
		key, err2 := os.ReadFile(filepath.Join(dir, "key.pem"))
		fileRoot, err3 := os.ReadFile(filepath.Join(dir, "root-cert.pem"))
		if err := errors.Join(err1, err2, err3); err != nil {
			if err.Error() != lastErr {
				emit(Event{Event: "error", Error: err.Error()})
				lastErr = err.Error()
			}
		} else if !bytes.Equal(chain, last) {
			leaf, err := verify(chain, key, root, want)
			switch {
			case err != nil:
				// A half-written pair (chain renewed, key not yet) is
				// retried on the next poll.
				if err.Error() != lastErr {
					emit(Event{Event: "error", Error: err.Error()})
					lastErr = err.Error()
				}
			case !bytes.Equal(bytes.TrimSpace(fileRoot), bytes.TrimSpace(root)):
				emit(Event{Event: "error", Error: "root-cert.pem is not the expected root"})
				lastErr = "root"
			default:
				last, lastErr = chain, ""
				emit(Event{Event: "cert", Serial: leaf.SerialNumber.String(), NotAfter: leaf.NotAfter, SPIFFE: want})
			}
		}
		sleep(ctx, 250*time.Millisecond)
	}
}

// verify checks chain (leaf first, PEM) and key as a gateway would use them.
func verify(chainPEM, keyPEM, rootPEM []byte, want string) (*x509.Certificate, error) {
	pair, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("key pair: %w", err)
	}
	var certs []*x509.Certificate
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	leaf := certs[0]
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return nil, errors.New("no root certificate in CHECK_ROOT")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("chain: %w", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		return nil, fmt.Errorf("leaf URI SANs %v, want exactly %s", leaf.URIs, want)
	}
	if p, _ := pem.Decode(chainPEM); p == nil {
		return nil, errors.New("chain is not PEM")
	}
	return leaf, nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
