// Package spire runs a real SPIRE server and agent (v1.13.3, built from the
// Go module proxy and cached, see build-spire.sh) on loopback with private
// paths: join_token node attestation, unix workload attestation, sqlite in
// the run's directory. The agent's Workload API socket serves Envoy SDS
// (default, ROOTCA), which the spire flavor wires gateways to.
package spire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/sds-injector/sds-injector/test/harness"
)

// Version is the SPIRE release the tests run.
const Version = "1.13.3"

// TrustDomain is the trust domain of the test server (Istio's default).
const TrustDomain = "cluster.local"

// Binaries are the built spire-server and spire-agent.
type Binaries struct {
	Server, Agent string
	// Built is how long the build took (zero when cached).
	Built time.Duration
}

// Build returns the cached binaries, building them first when missing
// (about 15 minutes cold).
func Build(ctx context.Context) (Binaries, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return Binaries{}, errors.New("cannot locate build-spire.sh")
	}
	script := filepath.Join(filepath.Dir(file), "build-spire.sh")
	started := time.Now()
	cmd := exec.CommandContext(ctx, script)
	cmd.Env = append(os.Environ(), "SPIRE_VERSION="+Version)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Binaries{}, fmt.Errorf("%s: %w\n%s", script, err, stderr.String())
	}
	dir := strings.TrimSpace(string(out))
	b := Binaries{Server: filepath.Join(dir, "spire-server"), Agent: filepath.Join(dir, "spire-agent")}
	if strings.Contains(stderr.String(), "building ") {
		b.Built = time.Since(started)
	}
	return b, nil
}

// process is a running SPIRE binary (its own process group, stopped by its
// PID) with its output kept for errors.
type process struct{ *harness.Process }

func start(name, bin string, args ...string) (*process, error) {
	p, err := harness.StartProcess(name, exec.Command(bin, args...))
	if err != nil {
		return nil, err
	}
	return &process{p}, nil
}

func (p *process) stop() { _ = p.Stop(10 * time.Second) }

// healthy polls `<bin> healthcheck -socketPath socket` until it succeeds,
// the process exits or ctx ends.
func (p *process) healthy(ctx context.Context, bin, socket string) error {
	for {
		hc := exec.CommandContext(ctx, bin, "healthcheck", "-socketPath", socket)
		out, err := hc.CombinedOutput()
		if err == nil {
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("%s exited (%v) before it was healthy:\n%s", p.Name, p.Err(), p.Output())
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy: %s (%w)\n%s", p.Name, strings.TrimSpace(string(out)), ctx.Err(), p.Output())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Server is a running spire-server.
type Server struct {
	bin    string
	Socket string
	Port   int
	proc   *process
	// release frees Port's reservation (test/harness).
	release func()
}

// StartServer starts spire-server with its state in dir and waits until it
// is healthy.
func StartServer(ctx context.Context, b Binaries, dir string) (*Server, error) {
	port, release, err := harness.ReservePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	s := &Server{bin: b.Server, Socket: filepath.Join(dir, "server.sock"), Port: port, release: release}
	started := false
	defer func() {
		if !started {
			s.Stop()
		}
	}()
	conf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "INFO"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
}
`, port, s.Socket, TrustDomain, filepath.Join(dir, "server-data"), filepath.Join(dir, "datastore.sqlite3"))
	confPath := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if s.proc, err = start("spire-server", b.Server, "run", "-config", confPath); err != nil {
		return nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := s.proc.healthy(hctx, b.Server, s.Socket); err != nil {
		return nil, err
	}
	started = true
	return s, nil
}

// CLI runs `spire-server <command...> -socketPath <socket> <flags...>`.
func (s *Server) CLI(ctx context.Context, command []string, flags ...string) (string, error) {
	args := append(append(append([]string(nil), command...), "-socketPath", s.Socket), flags...)
	out, err := exec.CommandContext(ctx, s.bin, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("spire-server %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

var tokenRE = regexp.MustCompile(`(?m)^Token: (\S+)$`)

// JoinToken generates a join token (valid once, for 10 minutes).
func (s *Server) JoinToken(ctx context.Context) (string, error) {
	out, err := s.CLI(ctx, []string{"token", "generate"}, "-ttl", "600")
	if err != nil {
		return "", err
	}
	m := tokenRE.FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("no token in %q", out)
	}
	return m[1], nil
}

// AgentID is the SPIFFE ID of the agent attested with token.
func AgentID(token string) string {
	return "spiffe://" + TrustDomain + "/spire/agent/join_token/" + token
}

// RegisterUID registers spiffeID for processes of uid under the agent,
// with X.509 SVIDs of the given TTL.
func (s *Server) RegisterUID(ctx context.Context, parentID, spiffeID string, uid int, svidTTL time.Duration) error {
	return s.Register(ctx, parentID, spiffeID, svidTTL, "unix:uid:"+strconv.Itoa(uid))
}

// Register registers spiffeID under the agent for the workloads that have
// every one of selectors ("<attestor>:<key>:<value>", e.g. k8s:ns:edge),
// with X.509 SVIDs of the given TTL.
func (s *Server) Register(ctx context.Context, parentID, spiffeID string, svidTTL time.Duration, selectors ...string) error {
	if len(selectors) == 0 {
		return errors.New("a registration entry needs at least one selector")
	}
	flags := []string{"-parentID", parentID, "-spiffeID", spiffeID, "-x509SVIDTTL", strconv.Itoa(int(svidTTL / time.Second))}
	for _, sel := range selectors {
		flags = append(flags, "-selector", sel)
	}
	_, err := s.CLI(ctx, []string{"entry", "create"}, flags...)
	return err
}

// Bundle is the trust domain's X.509 bundle (the CA certificates, PEM).
func (s *Server) Bundle(ctx context.Context) ([]byte, error) {
	out, err := s.CLI(ctx, []string{"bundle", "show"}, "-format", "pem")
	if err != nil {
		return nil, err
	}
	if !strings.Contains(out, "-----BEGIN CERTIFICATE-----") {
		return nil, fmt.Errorf("spire-server bundle show printed no certificate: %q", out)
	}
	return []byte(out), nil
}

// Stop ends the server.
func (s *Server) Stop() {
	if s.proc != nil {
		s.proc.stop()
	}
	s.release()
}

// Log is the server's output so far.
func (s *Server) Log() string { return s.proc.Output() }

// Agent is a running spire-agent.
type Agent struct {
	// Socket is the Workload API socket, <socketDir>/socket.
	Socket string
	proc   *process
}

// StartAgent starts spire-agent attested with token, its Workload API
// socket at <socketDir>/socket, and waits until it is healthy. Its only
// workload attestor is unix (by uid, gid, ...).
func StartAgent(ctx context.Context, b Binaries, dir, socketDir string, srv *Server, token string) (*Agent, error) {
	return StartAgentWith(ctx, b, dir, socketDir, srv, token, "")
}

// StartAgentWith is StartAgent with more plugins: extraPlugins is HCL
// inside the configuration's plugins block, e.g. another workload attestor
// (`WorkloadAttestor "k8s" { plugin_data { ... } }`).
func StartAgentWith(ctx context.Context, b Binaries, dir, socketDir string, srv *Server, token, extraPlugins string) (*Agent, error) {
	a := &Agent{Socket: filepath.Join(socketDir, "socket")}
	conf := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  insecure_bootstrap = true
  trust_domain = %q
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
%s
}
`, filepath.Join(dir, "agent-data"), srv.Port, a.Socket, TrustDomain, extraPlugins)
	confPath := filepath.Join(dir, "agent.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	var err error
	if a.proc, err = start("spire-agent", b.Agent, "run", "-config", confPath, "-joinToken", token); err != nil {
		return nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := a.proc.healthy(hctx, b.Agent, a.Socket); err != nil {
		a.Stop()
		return nil, err
	}
	return a, nil
}

// Stop ends the agent.
func (a *Agent) Stop() { a.proc.stop() }

// Log is the agent's output so far.
func (a *Agent) Log() string { return a.proc.Output() }
