package inject

import (
	"encoding/json"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/sds-injector/sds-injector/internal/agentcontract"
)

// podParams is the configuration for one pod after per-pod overrides.
type podParams struct {
	flavor    Flavor
	version   IstioVersion
	profile   IstioProfile
	image     string
	native    bool
	resources corev1.ResourceRequirements
	// resourcesKey is resourcesKey(resources) when known ("" after a
	// per-pod override: cacheKey computes it).
	resourcesKey string
	// glooDropIn: the sds-agent also listens on GlooSDSAddress.
	glooDropIn bool
}

// GlooSDSAddress is where Gloo Edge's bootstrap cluster gateway_proxy_sds
// expects its SDS server; the Gloo drop-in serves there (loopback only).
const (
	GlooSDSAddress = agentcontract.GlooTCPAddr
	portGlooSDS    = agentcontract.GlooTCPPort
)

// ports are the TCP ports the pod's agent binds with these parameters.
func (p podParams) ports() []int32 {
	ports := boundPorts(p.flavor)
	if p.glooDropIn {
		ports = append(slices.Clip(ports), portGlooSDS)
	}
	return ports
}

const (
	agentUID = 1337

	// Ports the stock agent binds on the pod network: status (15020),
	// Envoy health (15021) and Envoy Prometheus (15090).
	portAgentStatus = 15020
	portEnvoyHealth = 15021
	portEnvoyProm   = 15090
)

// agentContainerName is the injected container's name per flavor.
func agentContainerName(f Flavor) string {
	switch f {
	case FlavorSDSAgent:
		return "sds-agent"
	case FlavorSPIRE:
		return SPIREWaitContainer
	}
	return "istio-proxy"
}

// boundPorts are the TCP ports the flavor's agent listens on in the pod's
// network namespace. A flavor that binds none can run in hostNetwork pods.
func boundPorts(f Flavor) []int32 {
	switch f {
	case FlavorIstioProxy:
		return []int32{portAgentStatus, portEnvoyHealth, portEnvoyProm}
	case FlavorIstioAgentFiles:
		return []int32{portAgentStatus}
	}
	return nil
}

// wantedVolume is a volume the flavor needs, with where the agent and the
// gateway container mount it (empty path: not mounted there).
type wantedVolume struct {
	volume corev1.Volume
	// json is the volume encoded, filled in by the encode cache.
	json        json.RawMessage
	agentPath   string
	gatewayPath string
	gatewayRO   bool
	agentRO     bool
}

func emptyDir(name string, medium corev1.StorageMedium) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: medium}}}
}

// volumesFor lists the volumes in the order they are appended to the pod.
func (s *Settings) volumesFor(p podParams) []wantedVolume {
	var out []wantedVolume
	prof := p.profile
	add := func(v wantedVolume) { out = append(out, v) }
	if p.flavor == FlavorSPIRE {
		// Only the SPIRE agent's socket directory: no token, no istiod root.
		add(wantedVolume{volume: s.spire.volume(), agentPath: pathWorkloadSocketDir, agentRO: true,
			gatewayPath: pathWorkloadSocketDir, gatewayRO: true})
		return out
	}

	if prof.SocketVolume == VolumeWorkloadSocket {
		gw := ""
		if p.flavor != FlavorIstioAgentFiles {
			gw = prof.SocketDir
		}
		add(wantedVolume{volume: emptyDir(VolumeWorkloadSocket, ""), agentPath: prof.SocketDir, gatewayPath: gw})
	}
	if p.flavor != FlavorSDSAgent && prof.WritableAgentDirs {
		add(wantedVolume{volume: emptyDir(VolumeCredentialSocket, ""), agentPath: pathCredentialSocket})
		add(wantedVolume{volume: emptyDir(VolumeWorkloadCerts, ""), agentPath: pathWorkloadCerts})
	}
	// istio-envoy holds the agent's Envoy bootstrap and XDS socket; before
	// Istio 1.14 it also held the SDS socket, so the gateway mounts it then.
	if p.flavor != FlavorSDSAgent || prof.SocketVolume == VolumeIstioEnvoy {
		gw := ""
		if prof.SocketVolume == VolumeIstioEnvoy && p.flavor != FlavorIstioAgentFiles {
			gw = prof.SocketDir
		}
		add(wantedVolume{volume: emptyDir(VolumeIstioEnvoy, corev1.StorageMediumMemory), agentPath: pathIstioProxy, gatewayPath: gw})
	}
	if p.flavor != FlavorSDSAgent {
		add(wantedVolume{volume: emptyDir(VolumeIstioData, ""), agentPath: pathIstioData})
		add(wantedVolume{volume: corev1.Volume{Name: VolumeIstioPodinfo, VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
			Items: []corev1.DownwardAPIVolumeFile{
				{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
				{Path: "annotations", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations"}},
			},
		}}}, agentPath: pathIstioPodinfo})
	}
	add(wantedVolume{volume: corev1.Volume{Name: VolumeIstioToken, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience:          s.tokenAudience,
			ExpirationSeconds: ptr.To(DefaultTokenExpirationSeconds),
			Path:              tokenFile,
		}}},
	}}}, agentPath: pathTokens, agentRO: true})
	add(wantedVolume{volume: corev1.Volume{Name: VolumeIstiodCACert, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: s.rootCertConfigMap},
	}}}, agentPath: pathIstiodCA, agentRO: true})
	if p.flavor == FlavorIstioAgentFiles {
		add(wantedVolume{volume: emptyDir(VolumeIstioCerts, corev1.StorageMediumMemory), agentPath: s.certsDir, gatewayPath: s.certsDir, gatewayRO: true})
	}
	return out
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func valueEnv(name, value string) corev1.EnvVar { return corev1.EnvVar{Name: name, Value: value} }

// agentEnv follows the istio-agent contract of Istio's gateway template.
func (s *Settings) agentEnv(p podParams, workload string) []corev1.EnvVar {
	podEnv := []corev1.EnvVar{
		valueEnv(agentcontract.EnvCAAddr, s.caAddress),
		fieldEnv(agentcontract.EnvPodName, "metadata.name"),
		fieldEnv(agentcontract.EnvPodNamespace, "metadata.namespace"),
		fieldEnv(agentcontract.EnvInstanceIP, "status.podIP"),
		fieldEnv(agentcontract.EnvServiceAccount, "spec.serviceAccountName"),
		fieldEnv(agentcontract.EnvHostIP, "status.hostIP"),
	}
	if p.flavor == FlavorSDSAgent {
		// Exactly what cmd/sds-agent reads (docs/sds-agent.md): its inputs,
		// where to serve, and INSTANCE_IP/HOST_IP, whose equality tells it
		// the pod is on the host network (it then refuses a TCP listener).
		// No Envoy or xDS settings, and nothing that opens a TCP port.
		env := append(podEnv,
			valueEnv(agentcontract.EnvClusterID, s.clusterID),
			valueEnv(agentcontract.EnvTrustDomain, s.trustDomain),
			valueEnv(agentcontract.EnvSocketPath, p.profile.SocketPath()),
			valueEnv(agentcontract.EnvTokenPath, agentcontract.TokenPath),
			valueEnv(agentcontract.EnvRootCertPath, agentcontract.RootCertPath),
		)
		if p.glooDropIn {
			// The Gloo drop-in: loopback only; the agent refuses it on the
			// host network as well.
			env = append(env, valueEnv(agentcontract.EnvTCPAddr, GlooSDSAddress))
		}
		return env
	}
	env := append([]corev1.EnvVar{valueEnv("PILOT_CERT_PROVIDER", "istiod")}, podEnv...)
	env = append(env,
		valueEnv("PROXY_CONFIG", s.proxyConfigJSON),
		valueEnv("ISTIO_META_CLUSTER_ID", s.clusterID),
		fieldEnv("ISTIO_META_NODE_NAME", "spec.nodeName"),
		valueEnv("ISTIO_META_WORKLOAD_NAME", workload),
		valueEnv("ISTIO_META_MESH_ID", s.meshID),
		valueEnv("TRUST_DOMAIN", s.trustDomain),
		valueEnv("ISTIO_META_DNS_CAPTURE", "false"),
	)
	if p.profile.JWTPolicy != "" {
		env = append(env, valueEnv("JWT_POLICY", p.profile.JWTPolicy))
	}
	if p.flavor == FlavorIstioAgentFiles {
		env = append(env,
			valueEnv("DISABLE_ENVOY", "true"),
			valueEnv("OUTPUT_CERTS", s.certsDir),
		)
	}
	return env
}

func (s *Settings) agentArgs(p podParams) []string {
	if p.flavor == FlavorSDSAgent {
		return nil
	}
	// router: a gateway-type node, no inbound capture; the files flavor
	// runs as Istio's proxyless grpc-agent does, as a sidecar-type node.
	nodeType := "router"
	if p.flavor == FlavorIstioAgentFiles {
		nodeType = "sidecar"
	}
	return []string{
		"proxy", nodeType,
		"--domain", "$(POD_NAMESPACE).svc." + s.clusterDomain,
		"--proxyLogLevel=warning",
		"--proxyComponentLogLevel=misc:error",
		"--log_output_level=default:info",
	}
}

// readiness returns the probe handler that says certificates are available.
func readiness(f Flavor) corev1.ProbeHandler {
	switch f {
	case FlavorIstioProxy:
		// Envoy's health listener, ready once Envoy is live with its config.
		return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(portEnvoyHealth)}}
	case FlavorIstioAgentFiles:
		// In no-Envoy mode the agent's status port is ready once the
		// certificate files exist.
		return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(portAgentStatus)}}
	default:
		return corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{agentcontract.Binary, agentcontract.CmdProbe}}}
	}
}

// waitCommand blocks until the agent is ready; used as postStart so that the
// kubelet, which starts containers in order, holds the gateway back.
func waitCommand(f Flavor) []string {
	switch f {
	case FlavorIstioProxy:
		return []string{"pilot-agent", "wait"}
	case FlavorIstioAgentFiles:
		return []string{"pilot-agent", "wait", "--url=http://localhost:15020/healthz/ready"}
	default:
		return []string{agentcontract.Binary, agentcontract.CmdWait}
	}
}

// container is the container the flavor injects.
func (s *Settings) container(p podParams, vols []wantedVolume, workload string) corev1.Container {
	if p.flavor == FlavorSPIRE {
		return s.spireWaitContainer(p)
	}
	return s.agentContainer(p, vols, workload)
}

func (s *Settings) agentContainer(p podParams, vols []wantedVolume, workload string) corev1.Container {
	c := corev1.Container{
		Name:            agentContainerName(p.flavor),
		Image:           p.image,
		ImagePullPolicy: s.pullPolicy,
		Args:            s.agentArgs(p),
		Env:             s.agentEnv(p, workload),
		Resources:       p.resources,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr.To[int64](agentUID),
			RunAsGroup:               ptr.To[int64](agentUID),
			RunAsNonRoot:             ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			Privileged:               ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if p.flavor == FlavorIstioProxy {
		c.Ports = []corev1.ContainerPort{{Name: "http-envoy-prom", ContainerPort: portEnvoyProm, Protocol: corev1.ProtocolTCP}}
	}
	for _, v := range vols {
		if v.agentPath != "" {
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: v.volume.Name, MountPath: v.agentPath, ReadOnly: v.agentRO})
		}
	}
	probe := readiness(p.flavor)
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: probe, PeriodSeconds: 5, TimeoutSeconds: 3, FailureThreshold: 4}
	if p.native {
		// A native sidecar's startupProbe gates the start of the containers
		// after it: the gateway only starts once certificates exist.
		c.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
		c.StartupProbe = &corev1.Probe{ProbeHandler: probe, PeriodSeconds: 1, TimeoutSeconds: 3, FailureThreshold: 600}
	} else {
		c.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: waitCommand(p.flavor)}}}
	}
	return c
}
