// Package agent is the slim SDS agent: it obtains the workload certificate
// from istiod's CA, keeps it fresh and serves it to the gateway's Envoy over
// SDS on a Unix socket.
package agent

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sds-injector/sds-injector/internal/agent/ca"
	"github.com/sds-injector/sds-injector/internal/agent/sds"
	"github.com/sds-injector/sds-injector/internal/agentcontract"
)

// Default paths: the ones the injector mounts (Istio 1.14+ socket), from
// the agent contract the engine uses too.
const (
	DefaultSocketPath   = agentcontract.SocketPath
	DefaultTokenPath    = agentcontract.TokenPath
	DefaultRootCertPath = agentcontract.RootCertPath
	DefaultCAAddr       = agentcontract.DefaultCAAddr
	// GlooTCPAddr is where Gloo Edge's gateway_proxy_sds bootstrap cluster
	// looks for its SDS server.
	GlooTCPAddr = agentcontract.GlooTCPAddr
)

// Config is the agent's configuration. Every field has a flag and an
// environment variable (the flag wins); Settings lists them.
type Config struct {
	CAAddr       string
	CAServerName string
	ClusterID    string
	TrustDomain  string

	Namespace      string
	ServiceAccount string
	PodName        string
	InstanceIP     string
	HostIP         string

	TokenPath    string
	RootCertPath string

	SocketPath  string
	SocketMode  string
	TCPAddr     string
	MetricsAddr string

	KeyAlgorithm   string
	CertTTL        time.Duration
	RenewFraction  float64
	RenewJitter    float64
	CATimeout      time.Duration
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	WatchInterval  time.Duration
	DrainTimeout   time.Duration

	LogLevel string
}

// Setting describes one configuration knob.
type Setting struct {
	Flag, Env, Default, Usage string
	set                       func(c *Config, v string) error
}

func str(p func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *p(c) = v; return nil }
}

func dur(p func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		*p(c) = d
		return nil
	}
}

func float(p func(*Config) *float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return err
		}
		*p(c) = f
		return nil
	}
}

// Settings is the agent's whole configuration surface, in documentation
// order. The injector sets the variables marked so in docs/sds-agent.md.
var Settings = []Setting{
	{"ca-addr", agentcontract.EnvCAAddr, DefaultCAAddr, "istiod's CA address (host:port, TLS)", str(func(c *Config) *string { return &c.CAAddr })},
	{"ca-server-name", "CA_SERVER_NAME", "", "name to verify in the CA's certificate (default: the host of CA_ADDR)", str(func(c *Config) *string { return &c.CAServerName })},
	{"cluster-id", agentcontract.EnvClusterID, agentcontract.DefaultClusterID, "cluster ID sent to istiod (ClusterID metadata)", str(func(c *Config) *string { return &c.ClusterID })},
	{"trust-domain", agentcontract.EnvTrustDomain, agentcontract.DefaultTrustDomain, "trust domain of the SPIFFE identity", str(func(c *Config) *string { return &c.TrustDomain })},
	{"namespace", agentcontract.EnvPodNamespace, "", "pod namespace (default: from the token)", str(func(c *Config) *string { return &c.Namespace })},
	{"service-account", agentcontract.EnvServiceAccount, "", "pod service account (default: from the token)", str(func(c *Config) *string { return &c.ServiceAccount })},
	{"pod-name", agentcontract.EnvPodName, "", "pod name (logs only)", str(func(c *Config) *string { return &c.PodName })},
	{"instance-ip", agentcontract.EnvInstanceIP, "", "pod IP; equal to HOST_IP means host network, where the TCP listener is refused", str(func(c *Config) *string { return &c.InstanceIP })},
	{"host-ip", agentcontract.EnvHostIP, "", "node IP", str(func(c *Config) *string { return &c.HostIP })},
	{"token-path", agentcontract.EnvTokenPath, DefaultTokenPath, "projected service-account token (audience istio-ca), read on every CA call", str(func(c *Config) *string { return &c.TokenPath })},
	{"root-cert-path", agentcontract.EnvRootCertPath, DefaultRootCertPath, "istiod's root certificate (istio-ca-root-cert), watched for changes; empty: system roots", str(func(c *Config) *string { return &c.RootCertPath })},
	{"socket-path", agentcontract.EnvSocketPath, DefaultSocketPath, "Unix socket to serve SDS on", str(func(c *Config) *string { return &c.SocketPath })},
	{"socket-mode", "SDS_SOCKET_MODE", sds.SocketModeAuto, "socket permissions: octal, or auto (0660 if the directory is shared through fsGroup, else 0666)", str(func(c *Config) *string { return &c.SocketMode })},
	{"tcp-addr", agentcontract.EnvTCPAddr, "", "also serve SDS on this loopback TCP address (Gloo Edge: " + GlooTCPAddr + "); off by default", str(func(c *Config) *string { return &c.TCPAddr })},
	{"metrics-addr", "METRICS_ADDR", "", "serve /metrics and /healthz/ready on this TCP address; off by default", str(func(c *Config) *string { return &c.MetricsAddr })},
	{"key-algorithm", "KEY_ALGORITHM", ca.ECDSAP256, "workload key: " + strings.Join(ca.KeyAlgorithms, " or "), str(func(c *Config) *string { return &c.KeyAlgorithm })},
	{"cert-ttl", "CERT_TTL", "24h", "certificate lifetime requested from the CA", dur(func(c *Config) *time.Duration { return &c.CertTTL })},
	{"renew-fraction", "RENEW_FRACTION", "0.5", "renew after this fraction of the certificate's lifetime", float(func(c *Config) *float64 { return &c.RenewFraction })},
	{"renew-jitter", "RENEW_JITTER", "0.05", "renew up to this fraction of the lifetime earlier, at random", float(func(c *Config) *float64 { return &c.RenewJitter })},
	{"ca-timeout", "CA_TIMEOUT", "10s", "timeout of one CA call", dur(func(c *Config) *time.Duration { return &c.CATimeout })},
	{"backoff-initial", "CA_BACKOFF_INITIAL", "1s", "first retry delay after a CA error (doubles per failure, with jitter)", dur(func(c *Config) *time.Duration { return &c.BackoffInitial })},
	{"backoff-max", "CA_BACKOFF_MAX", "30s", "longest retry delay after CA errors", dur(func(c *Config) *time.Duration { return &c.BackoffMax })},
	{"watch-interval", "WATCH_INTERVAL", "10s", "how often the root certificate file is checked for changes", dur(func(c *Config) *time.Duration { return &c.WatchInterval })},
	{"drain-timeout", "DRAIN_TIMEOUT", "25s", "on SIGTERM keep serving until the gateway's SDS streams close, at most this long", dur(func(c *Config) *time.Duration { return &c.DrainTimeout })},
	{"log-level", "LOG_LEVEL", "info", "debug, info, warn or error", str(func(c *Config) *string { return &c.LogLevel })},
}

// Load builds the configuration from defaults, then the environment
// (getenv), then flags in args.
func Load(fs *flag.FlagSet, args []string, getenv func(string) string) (Config, error) {
	var c Config
	vals := map[string]*string{}
	for _, s := range Settings {
		v := s.Default
		if e := getenv(s.Env); e != "" {
			v = e
		}
		p := new(string)
		*p = v
		vals[s.Flag] = p
		fs.StringVar(p, s.Flag, v, s.Usage+" (env "+s.Env+")")
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for _, s := range Settings {
		if err := s.set(&c, *vals[s.Flag]); err != nil {
			return c, fmt.Errorf("--%s / %s: %w", s.Flag, s.Env, err)
		}
	}
	return c, c.Validate()
}

// Validate checks the configuration for mistakes that would only show up
// later.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.CAAddr); err != nil {
		errs = append(errs, fmt.Errorf("CA_ADDR %q: %w", c.CAAddr, err))
	}
	if c.TrustDomain == "" {
		errs = append(errs, errors.New("TRUST_DOMAIN is empty"))
	}
	if c.TokenPath == "" {
		errs = append(errs, errors.New("TOKEN_PATH is empty"))
	}
	if c.SocketPath == "" {
		errs = append(errs, errors.New("SDS_SOCKET_PATH is empty"))
	}
	if _, _, err := sds.ParseSocketMode(c.SocketMode); err != nil {
		errs = append(errs, err)
	}
	if !slices.Contains(ca.KeyAlgorithms, c.KeyAlgorithm) {
		errs = append(errs, fmt.Errorf("KEY_ALGORITHM %q: want one of %s", c.KeyAlgorithm, strings.Join(ca.KeyAlgorithms, ", ")))
	}
	if c.CertTTL < time.Second {
		errs = append(errs, fmt.Errorf("CERT_TTL %s: want at least 1s", c.CertTTL))
	}
	if c.RenewFraction <= 0 || c.RenewFraction >= 1 {
		errs = append(errs, fmt.Errorf("RENEW_FRACTION %g: want between 0 and 1", c.RenewFraction))
	}
	if c.RenewJitter < 0 || c.RenewJitter >= c.RenewFraction {
		errs = append(errs, fmt.Errorf("RENEW_JITTER %g: want at least 0 and below RENEW_FRACTION", c.RenewJitter))
	}
	for name, d := range map[string]time.Duration{"CA_TIMEOUT": c.CATimeout, "CA_BACKOFF_INITIAL": c.BackoffInitial,
		"CA_BACKOFF_MAX": c.BackoffMax, "WATCH_INTERVAL": c.WatchInterval} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s %s: want a positive duration", name, d))
		}
	}
	if c.BackoffMax < c.BackoffInitial {
		errs = append(errs, fmt.Errorf("CA_BACKOFF_MAX %s is below CA_BACKOFF_INITIAL %s", c.BackoffMax, c.BackoffInitial))
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("DRAIN_TIMEOUT %s: want zero or more", c.DrainTimeout))
	}
	if _, err := c.Level(); err != nil {
		errs = append(errs, err)
	}
	if c.TCPAddr != "" {
		if _, err := sds.CheckLoopback(c.TCPAddr); err != nil {
			errs = append(errs, fmt.Errorf("SDS_TCP_ADDR %w", err))
		}
	}
	if c.TCPAddr != "" && c.HostNetwork() {
		errs = append(errs, fmt.Errorf("SDS_TCP_ADDR %s refused: the pod uses the host network (INSTANCE_IP = HOST_IP = %s), so loopback is the node's "+
			"and every process on the node could read the private key; use the Unix socket", c.TCPAddr, c.InstanceIP))
	}
	return errors.Join(errs...)
}

// HostNetwork reports whether the pod runs in the node's network namespace
// (the pod IP is then the node IP).
func (c Config) HostNetwork() bool { return c.InstanceIP != "" && c.InstanceIP == c.HostIP }

// Level is the slog level of LogLevel.
func (c Config) Level() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return l, fmt.Errorf("LOG_LEVEL %q: want debug, info, warn or error", c.LogLevel)
	}
	return l, nil
}
