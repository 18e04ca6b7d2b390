package inject

import (
	"fmt"
	"path"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

	"github.com/sds-injector/sds-injector/internal/agentcontract"
)

// IdentityProviderConfig is the identityProvider section of the
// configuration: identity providers other than istiod.
type IdentityProviderConfig struct {
	// SPIRE, when present, enables the spire flavor: gateways get the SPIRE
	// agent's Workload API socket, which serves Envoy SDS (default, ROOTCA).
	SPIRE *SPIREConfig `json:"spire,omitempty"`
}

// SPIREConfig says where a pod finds the SPIRE agent's socket directory.
// Exactly one source must be set. The agent's socket file in that directory
// must be named "socket" (SPIRE: socket_path = "<dir>/socket"), as in
// Istio's SPIRE integration.
type SPIREConfig struct {
	// CSIDriver is the SPIFFE CSI driver that mounts the agent's socket
	// directory into pods (csi.spiffe.io for spiffe/spiffe-csi).
	CSIDriver string `json:"csiDriver,omitempty"`
	// HostPath is the agent's socket directory on the node (a hostPath
	// volume of type Directory), for clusters without the CSI driver.
	HostPath string `json:"hostPath,omitempty"`
	// StartupTimeout bounds the init container's wait for the socket to
	// answer; after it the container fails with a log line saying so and
	// the kubelet retries it. Default 60s.
	StartupTimeout *metav1.Duration `json:"startupTimeout,omitempty"`
}

// Defaults of the spire flavor.
const (
	DefaultSPIRECSIDriver     = "csi.spiffe.io"
	DefaultSPIREStartupTimout = 60 * time.Second
	// SPIREWaitContainer is the init container that waits for the socket.
	SPIREWaitContainer = "spire-wait"
	// IdentityProviderSPIRE is recorded in the status annotation.
	IdentityProviderSPIRE = "spire"
	// Socket sources recorded in the status annotation.
	SocketSourceCSI      = "csi"
	SocketSourceHostPath = "hostPath"
)

// spireSourceHint names the two socket sources in configuration errors.
const spireSourceHint = "set identityProvider.spire.csiDriver (the SPIFFE CSI driver, e.g. " + DefaultSPIRECSIDriver +
	") or identityProvider.spire.hostPath (the SPIRE agent's socket directory on the node, e.g. /run/spire/agent-sockets)"

type spireSettings struct {
	csiDriver string
	hostPath  string
	timeout   time.Duration
}

func (c IdentityProviderConfig) resolve(p *field.Path) (*spireSettings, field.ErrorList) {
	if c.SPIRE == nil {
		return nil, nil
	}
	sp := p.Child("spire")
	var errs field.ErrorList
	cfg := c.SPIRE
	switch {
	case cfg.CSIDriver == "" && cfg.HostPath == "":
		errs = append(errs, field.Required(sp, "the spire flavor needs a socket source: "+spireSourceHint))
	case cfg.CSIDriver != "" && cfg.HostPath != "":
		errs = append(errs, field.Invalid(sp, "csiDriver and hostPath", "set only one socket source: "+spireSourceHint))
	}
	if cfg.CSIDriver != "" {
		if msgs := validation.IsDNS1123Subdomain(cfg.CSIDriver); len(msgs) > 0 {
			errs = append(errs, field.Invalid(sp.Child("csiDriver"), cfg.CSIDriver, strings.Join(msgs, "; ")))
		}
	}
	if cfg.HostPath != "" && (!path.IsAbs(cfg.HostPath) || path.Clean(cfg.HostPath) != cfg.HostPath || cfg.HostPath == "/") {
		errs = append(errs, field.Invalid(sp.Child("hostPath"), cfg.HostPath, "must be a clean absolute directory path other than /"))
	}
	timeout := DefaultSPIREStartupTimout
	if cfg.StartupTimeout != nil {
		timeout = cfg.StartupTimeout.Duration
		if timeout < time.Second || timeout != timeout.Truncate(time.Second) {
			errs = append(errs, field.Invalid(sp.Child("startupTimeout"), cfg.StartupTimeout.Duration.String(), "must be a whole number of seconds, at least 1s"))
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return &spireSettings{csiDriver: cfg.CSIDriver, hostPath: cfg.HostPath, timeout: timeout}, nil
}

// SPIREEnabled reports whether the configuration enables the spire flavor.
func (s *Settings) SPIREEnabled() bool { return s.spire != nil }

// enabledFlavors are the flavors this installation can inject.
func (s *Settings) enabledFlavors() []Flavor {
	out := append([]Flavor(nil), Flavors...)
	if s.spire != nil {
		out = append(out, FlavorSPIRE)
	}
	return out
}

// enabledOf filters fs to the flavors this installation can inject.
func (s *Settings) enabledOf(fs []Flavor) []Flavor {
	if s.spire != nil {
		return fs
	}
	out := make([]Flavor, 0, len(fs))
	for _, f := range fs {
		if f != FlavorSPIRE {
			out = append(out, f)
		}
	}
	return out
}

// spireDisabledError: a pod asks for the spire flavor, which this
// installation does not enable.
type spireDisabledError struct{ source string }

func (e *spireDisabledError) Error() string {
	how := "annotation " + AnnotationFlavor + "=" + string(FlavorSPIRE)
	if e.source == "profile" {
		how = "its gateway profile's default flavor " + string(FlavorSPIRE)
	}
	return fmt.Sprintf("the pod asks for flavor %s (%s), but this installation does not enable SPIRE: "+
		"the injector's configuration has no identityProvider.spire (%s; docs/spire.md), so the pod is left untouched; "+
		"enable it or remove the annotation", FlavorSPIRE, how, spireSourceHint)
}

func (sp *spireSettings) source() string {
	if sp.csiDriver != "" {
		return SocketSourceCSI
	}
	return SocketSourceHostPath
}

// describe is the socket source in the decision message.
func (sp *spireSettings) describe() string {
	if sp.csiDriver != "" {
		return "socket from CSI driver " + sp.csiDriver
	}
	return "socket from hostPath " + sp.hostPath
}

// spireVolume is the pod volume holding the SPIRE agent's socket directory.
func (sp *spireSettings) volume() corev1.Volume {
	v := corev1.Volume{Name: VolumeWorkloadSocket}
	if sp.csiDriver != "" {
		v.CSI = &corev1.CSIVolumeSource{Driver: sp.csiDriver, ReadOnly: ptr.To(true)}
	} else {
		v.HostPath = &corev1.HostPathVolumeSource{Path: sp.hostPath, Type: ptr.To(corev1.HostPathDirectory)}
	}
	return v
}

// SPIRESocketPath is where the spire flavor's gateway container (and the
// wait container) find the SPIRE agent's socket: the same path as the
// socket flavors' agents use since Istio 1.14.
const SPIRESocketPath = agentcontract.SocketPath

// spireWaitContainer is the init container that returns once the SPIRE
// agent's socket answers SDS (ROOTCA), so that the gateway starts with its
// identity available. It runs the sds-agent image's wait-socket mode.
func (s *Settings) spireWaitContainer(p podParams) corev1.Container {
	return corev1.Container{
		Name:            SPIREWaitContainer,
		Image:           p.image,
		ImagePullPolicy: s.pullPolicy,
		Args: []string{agentcontract.CmdWaitSocket,
			"--socket-path=" + SPIRESocketPath,
			fmt.Sprintf("--timeout=%ds", int64(s.spire.timeout/time.Second)),
		},
		Resources: p.resources,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr.To[int64](agentUID),
			RunAsGroup:               ptr.To[int64](agentUID),
			RunAsNonRoot:             ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			Privileged:               ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts:             []corev1.VolumeMount{{Name: VolumeWorkloadSocket, MountPath: pathWorkloadSocketDir, ReadOnly: true}},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}
