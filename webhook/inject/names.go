package inject

import "github.com/sds-injector/sds-injector/internal/agentcontract"

// Labels and annotations read or written by the engine. They are part of the
// project's public API: changing one breaks users' manifests.
const (
	Prefix = "sds-injector.io/"

	// LabelInject / AnnotationInject opt a pod in ("true") or out ("false").
	// The label wins when both are set, as with Istio's sidecar.istio.io/inject.
	LabelInject      = Prefix + "inject"
	AnnotationInject = Prefix + "inject"

	AnnotationStatus           = Prefix + "status"
	AnnotationFlavor           = Prefix + "flavor"
	AnnotationIstioVersion     = Prefix + "istio-version"
	AnnotationNativeSidecar    = Prefix + "native-sidecar"
	AnnotationGatewayContainer = Prefix + "gateway-container"
	AnnotationAgentCPU         = Prefix + "agent-cpu"
	AnnotationAgentMemory      = Prefix + "agent-memory"
	AnnotationAgentCPULimit    = Prefix + "agent-cpu-limit"
	AnnotationAgentMemoryLimit = Prefix + "agent-memory-limit"
	// AnnotationGlooDropIn ("true"/"false") switches the Gloo Edge drop-in
	// of the sds-agent flavor on or off for the pod (Config.GlooDropIn).
	AnnotationGlooDropIn = Prefix + "gloo-drop-in"

	// NamespaceLabel enables injection for every gateway in a namespace.
	NamespaceLabel = "sds-injection"

	annotationIstioStatus      = "sidecar.istio.io/status"
	annotationMirror           = "kubernetes.io/config.mirror"
	annotationDefaultContainer = "kubectl.kubernetes.io/default-container"
	labelPodTemplateHash       = "pod-template-hash"
	labelIstioWorkloadName     = "service.istio.io/workload-name"
)

// Names of the volumes the engine may add. They follow Istio's injection
// templates so that operators recognise them and Istio tooling keeps working.
const (
	VolumeWorkloadSocket   = "workload-socket"
	VolumeCredentialSocket = "credential-socket"
	VolumeWorkloadCerts    = "workload-certs"
	VolumeIstioEnvoy       = "istio-envoy"
	VolumeIstioData        = "istio-data"
	VolumeIstioPodinfo     = "istio-podinfo"
	VolumeIstioToken       = "istio-token"
	VolumeIstiodCACert     = "istiod-ca-cert"
	VolumeIstioCerts       = "istio-certs"
)

// Paths inside the containers, fixed by the istio-agent contract.
const (
	pathWorkloadSocketDir = agentcontract.SocketDir
	pathCredentialSocket  = "/var/run/secrets/credential-uds"
	pathWorkloadCerts     = "/var/run/secrets/workload-spiffe-credentials"
	pathIstioProxy        = agentcontract.LegacySocketDir
	pathIstioData         = "/var/lib/istio/data"
	pathIstioPodinfo      = "/etc/istio/pod"
	pathTokens            = agentcontract.TokenDir
	pathIstiodCA          = agentcontract.RootCertDir
	tokenFile             = agentcontract.TokenFile

	// DefaultCertsDir is where the istio-agent-files flavor writes key.pem,
	// cert-chain.pem and root-cert.pem, in both the agent and the gateway.
	DefaultCertsDir = "/etc/istio-certs"
)

// Names of the SDS secrets every flavor's agent serves on the socket (and
// the files flavor's files stand for), as Istio's own agent names them:
// the workload's certificate chain and key, and the mesh trust bundle. The
// wiring guide's snippets use them (docs/gateway-wiring.md).
const (
	SecretCertificate = agentcontract.SecretCertificate
	SecretRootCA      = agentcontract.SecretRootCA
	// The sds-agent also serves them under Gloo Edge's names (its sds
	// container's), for the Gloo drop-in.
	SecretGlooCertificate = agentcontract.SecretGlooCertificate
	SecretGlooRootCA      = agentcontract.SecretGlooRootCA
)
