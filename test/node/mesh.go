package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/sds-injector/sds-injector/test/istiod"
)

// IstiodHost is the engine's default CA host. On a Mesh the node's pods
// reach istiod there, at NodeIP:15012: host-network pods through the
// namespace's /etc/hosts, pod-network pods through hostAliases.
const IstiodHost = "istiod.istio-system.svc"

// Mesh is a Ready node with a real istiod on its control plane, whose CA
// and secure xDS (on loopback) are relayed to IstiodHost:15012 on the node
// IP, so that TLS is end to end with istiod (its certificate carries that
// DNS name).
type Mesh struct {
	*Node
	Istiod *istiod.Istiod
	// IstiodStart is how long istiod took to be ready.
	IstiodStart time.Duration
	stopRelay   func()
}

// StartMesh starts the node (Start with opts), then istiod, then the relay.
// Stop the result with Mesh.Stop.
func StartMesh(ctx context.Context, p *Prepared, opts Options) (_ *Mesh, retErr error) {
	n, err := Start(ctx, p, opts)
	if err != nil {
		return nil, fmt.Errorf("starting the node: %w", err)
	}
	m := &Mesh{Node: n}
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, m.Stop())
		}
	}()
	started := time.Now()
	if m.Istiod, err = istiod.Start(ctx, n.CP, istiod.Options{}); err != nil {
		return nil, err
	}
	m.IstiodStart = time.Since(started)
	_, port, err := net.SplitHostPort(m.Istiod.CAAddr)
	if err != nil {
		return nil, err
	}
	if m.stopRelay, err = p.relay(IstiodHost, "15012", net.JoinHostPort("127.0.0.1", port)); err != nil {
		return nil, err
	}
	return m, nil
}

// Stop ends the relay, istiod and the node.
func (m *Mesh) Stop() error {
	if m.stopRelay != nil {
		m.stopRelay()
	}
	var errs []error
	if err := m.Istiod.Stop(); err != nil {
		errs = append(errs, fmt.Errorf("stopping istiod: %w", err))
	}
	if err := m.Node.Stop(); err != nil {
		errs = append(errs, fmt.Errorf("stopping the node: %w", err))
	}
	return errors.Join(errs...)
}
