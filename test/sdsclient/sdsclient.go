// Package sdsclient is the tests' view of the project's one SDS client
// (internal/agent/sds.Stream): it fetches secrets from an SDS server on a
// Unix socket the way Envoy does (a StreamSecrets stream per secret, as Envoy
// opens one subscription per SDS secret config when it does not use ADS; the
// node on the first request; an ACK of every response) and flattens them to
// what a gateway uses.
package sdsclient

import (
	"context"
	"errors"
	"fmt"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sds-injector/sds-injector/internal/agent/sds"
	"github.com/sds-injector/sds-injector/internal/agentcontract"
)

// SecretTypeURL is the type of SDS resources.
const SecretTypeURL = agentcontract.SecretTypeURL

// Resource names Istio's agents serve.
const (
	WorkloadCert = agentcontract.SecretCertificate
	RootCA       = agentcontract.SecretRootCA
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

// Flatten turns a decoded secret of a response with version into a Secret.
func Flatten(sec *tlsv3.Secret, version string) *Secret {
	s := &Secret{Name: sec.GetName(), Version: version}
	if tc := sec.GetTlsCertificate(); tc != nil {
		s.CertificateChain = tc.GetCertificateChain().GetInlineBytes()
		s.PrivateKey = tc.GetPrivateKey().GetInlineBytes()
	}
	if vc := sec.GetValidationContext(); vc != nil {
		s.TrustedCA = vc.GetTrustedCa().GetInlineBytes()
	}
	return s
}

// Target is the gRPC target of the Unix socket at path (absolute, or
// relative to the working directory).
func Target(path string) string { return "unix:" + path }

// Fetch dials the Unix socket at socketPath (absolute, or relative to the
// working directory) and returns the first response for each name, one
// stream per name. node is the Envoy node ID sent with the first request.
// It waits for the server until ctx ends.
func Fetch(ctx context.Context, socketPath, node string, names ...string) (map[string]*Secret, error) {
	var (
		mu   sync.Mutex
		out  = map[string]*Secret{}
		errs []error
		wg   sync.WaitGroup
	)
	for _, name := range names {
		wg.Go(func() {
			s, err := First(ctx, socketPath, &corev3.Node{Id: node}, name)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				return
			}
			out[name] = Flatten(s.sec, s.version)
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// Raw is a secret as the server sent it, with its response's version.
type Raw struct {
	sec     *tlsv3.Secret
	version string
}

// Secret is the decoded secret; Version its response's version.
func (r Raw) Secret() *tlsv3.Secret { return r.sec }
func (r Raw) Version() string       { return r.version }

// First subscribes to name alone as node and returns it from the first
// response (which must hold it).
func First(ctx context.Context, socketPath string, node *corev3.Node, name string) (Raw, error) {
	st, err := sds.Subscribe(ctx, Target(socketPath), node, name)
	if err != nil {
		return Raw{}, err
	}
	defer st.Close()
	r, err := st.Next(ctx)
	if err != nil {
		return Raw{}, err
	}
	sec := r.Secrets[name]
	if sec == nil {
		return Raw{}, fmt.Errorf("response (version %q) has no secret %q among %d resources", r.Version, name, len(r.Secrets))
	}
	return Raw{sec: sec, version: r.Version}, nil
}

// WatchRaw keeps one stream for name open as node and calls fn with the
// secret of every response (the first and each later push, e.g. a
// rotation), ACKing each one. It returns when ctx ends, the stream fails or
// fn returns false (then nil) or an error.
func WatchRaw(ctx context.Context, socketPath string, node *corev3.Node, name string, fn func(Raw) (bool, error)) error {
	st, err := sds.Subscribe(ctx, Target(socketPath), node, name)
	if err != nil {
		return err
	}
	defer st.Close()
	for {
		r, err := st.Next(ctx)
		if err != nil {
			return err
		}
		if sec := r.Secrets[name]; sec != nil {
			more, err := fn(Raw{sec: sec, version: r.Version})
			if err != nil || !more {
				return err
			}
		}
	}
}

// Watch is WatchRaw with node ID node and flattened secrets; fn returning
// an error ends it.
func Watch(ctx context.Context, socketPath, node, name string, fn func(*Secret) error) error {
	return WatchRaw(ctx, socketPath, &corev3.Node{Id: node}, name, func(r Raw) (bool, error) {
		return true, fn(Flatten(r.sec, r.version))
	})
}
