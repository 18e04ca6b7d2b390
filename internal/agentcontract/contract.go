// Package agentcontract is the contract between the injector's engine
// (webhook/inject) and the slim SDS agent (cmd/sds-agent, internal/agent):
// the environment variables the engine sets and the agent reads, the paths
// the engine mounts and the agent uses by default, the defaults both assume,
// the SDS resource names the agent serves and the gateway asks for, and the
// agent's subcommands the engine calls from probes and hooks.
//
// Both sides use these constants, so they agree by construction. The
// engine's tests still check the injected spec against Istio's agent
// contract written out literally (webhook/inject/contract_test.go): this
// package says what the two halves share, not that it is what Istio wants.
package agentcontract

// Environment variables the engine sets on the sds-agent container (exactly
// these, see docs/sds-agent.md) and the agent reads.
const (
	EnvCAAddr         = "CA_ADDR"
	EnvPodName        = "POD_NAME"
	EnvPodNamespace   = "POD_NAMESPACE"
	EnvInstanceIP     = "INSTANCE_IP"
	EnvServiceAccount = "SERVICE_ACCOUNT"
	EnvHostIP         = "HOST_IP"
	EnvClusterID      = "ISTIO_META_CLUSTER_ID"
	EnvTrustDomain    = "TRUST_DOMAIN"
	EnvSocketPath     = "SDS_SOCKET_PATH"
	EnvTokenPath      = "TOKEN_PATH"
	EnvRootCertPath   = "ROOT_CERT_PATH"
	// EnvTCPAddr is set only for the Gloo drop-in (GlooTCPAddr).
	EnvTCPAddr = "SDS_TCP_ADDR"
)

// Paths inside the pod, as Istio's injection templates mount them.
const (
	// SocketDir holds the SDS socket from Istio 1.14 on (volume
	// workload-socket); SocketFile is the socket's name in it.
	SocketDir  = "/var/run/secrets/workload-spiffe-uds"
	SocketFile = "socket"
	SocketPath = SocketDir + "/" + SocketFile
	// LegacySocketDir and LegacySocketFile: Istio 1.5–1.13 (volume
	// istio-envoy).
	LegacySocketDir  = "/etc/istio/proxy"
	LegacySocketFile = "SDS"

	// TokenDir holds the projected service-account token (audience
	// TokenAudience) in the file TokenFile.
	TokenDir  = "/var/run/secrets/tokens"
	TokenFile = "istio-token"
	TokenPath = TokenDir + "/" + TokenFile

	// RootCertDir holds istiod's root certificate (ConfigMap
	// istio-ca-root-cert) in the file RootCertFile.
	RootCertDir  = "/var/run/secrets/istio"
	RootCertFile = "root-cert.pem"
	RootCertPath = RootCertDir + "/" + RootCertFile
)

// Defaults both sides assume when nothing else is configured.
const (
	DefaultCAAddr      = "istiod.istio-system.svc:15012"
	DefaultClusterID   = "Kubernetes"
	DefaultTrustDomain = "cluster.local"
	// GlooTCPAddr is where Gloo Edge's bootstrap cluster gateway_proxy_sds
	// expects its SDS server; the Gloo drop-in serves there (loopback only).
	GlooTCPAddr = "127.0.0.1:8234"
	GlooTCPPort = 8234
)

// SDS resources.
const (
	// SecretTypeURL is the type of every SDS resource.
	SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	// SecretCertificate (the workload's chain and key) and SecretRootCA (the
	// mesh trust bundle) are the names Istio's agent serves; every flavor's
	// agent serves them.
	SecretCertificate = "default"
	SecretRootCA      = "ROOTCA"
	// The sds-agent also serves them under Gloo Edge's names (its sds
	// container's), for the Gloo drop-in.
	SecretGlooCertificate = "istio_server_cert"
	SecretGlooRootCA      = "istio_validation_context"
)

// The agent's binary and the subcommands the engine runs in probes and
// hooks.
const (
	Binary = "sds-agent"
	// CmdProbe exits 0 when the socket serves the certificate (readiness
	// and startup probes).
	CmdProbe = "probe"
	// CmdWait blocks until the socket serves (the classic placement's
	// postStart hook).
	CmdWait = "wait"
	// CmdWaitSocket waits for another agent's socket (the spire flavor's
	// init container).
	CmdWaitSocket = "wait-socket"
)
