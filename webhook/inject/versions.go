package inject

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/sds-injector/sds-injector/internal/agentcontract"
)

// IstioProfile is the part of the istio-agent contract that changed between
// Istio releases. Each profile covers a contiguous range of minor versions.
type IstioProfile struct {
	// Name identifies the profile in the status annotation and in docs.
	Name string
	// SocketVolume is the volume holding the agent's SDS socket; it is shared
	// with the gateway container.
	SocketVolume string
	// SocketDir is where SocketVolume is mounted in both containers.
	SocketDir string
	// SocketFile is the socket's file name inside SocketDir.
	SocketFile string
	// WritableAgentDirs says whether the agent needs credential-socket and
	// workload-certs as writable volumes (1.14+, istio/istio#42618).
	WritableAgentDirs bool
	// JWTPolicy is injected as JWT_POLICY when non-empty (the agent defaults
	// to third-party-jwt from 1.22 and Istio stopped injecting it then).
	JWTPolicy string
}

// SocketPath is the absolute path of the SDS socket.
func (p IstioProfile) SocketPath() string { return p.SocketDir + "/" + p.SocketFile }

var (
	profileLegacy = IstioProfile{
		Name:         "1.5-1.13",
		SocketVolume: VolumeIstioEnvoy,
		SocketDir:    pathIstioProxy,
		SocketFile:   agentcontract.LegacySocketFile,
		JWTPolicy:    "third-party-jwt",
	}
	profileWorkloadSocket = IstioProfile{
		Name:              "1.14-1.21",
		SocketVolume:      VolumeWorkloadSocket,
		SocketDir:         pathWorkloadSocketDir,
		SocketFile:        agentcontract.SocketFile,
		WritableAgentDirs: true,
		JWTPolicy:         "third-party-jwt",
	}
	profileCurrent = IstioProfile{
		Name:              "1.22+",
		SocketVolume:      VolumeWorkloadSocket,
		SocketDir:         pathWorkloadSocketDir,
		SocketFile:        agentcontract.SocketFile,
		WritableAgentDirs: true,
	}
)

// IstioVersion is a parsed Istio release: "1.22" or "1.22.3" (a leading "v"
// and a pre-release suffix such as "-rc.0" are accepted).
type IstioVersion struct {
	Minor int
	// Release is the full version as written ("1.22.3"), empty when only a
	// minor version was given.
	Release string
	raw     string
}

func (v IstioVersion) String() string { return v.raw }

// ParseIstioVersion parses and checks an Istio version. Only Istio 1.x from
// 1.5 on is supported: 1.5 introduced istiod and the in-pod agent's SDS.
// Minors newer than any listed here use the newest profile, because the
// agent contract has been stable since 1.22 and refusing a new release would
// break users on every Istio upgrade.
func ParseIstioVersion(s string) (IstioVersion, error) {
	raw := strings.TrimSpace(s)
	v := strings.TrimPrefix(raw, "v")
	core, _, _ := strings.Cut(v, "-")
	parts := strings.Split(core, ".")
	if raw == "" || len(parts) < 2 || len(parts) > 3 {
		return IstioVersion{}, fmt.Errorf("istio version %q: want MAJOR.MINOR or MAJOR.MINOR.PATCH, e.g. 1.30 or 1.30.0", s)
	}
	nums := make([]int, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || (len(p) > 1 && p[0] == '0') {
			return IstioVersion{}, fmt.Errorf("istio version %q: %q is not a version number", s, p)
		}
		nums[i] = n
	}
	if nums[0] != 1 || nums[1] < 5 {
		return IstioVersion{}, fmt.Errorf("istio version %q is not supported: sds-injector supports Istio 1.5 and later 1.x releases (istiod with the in-pod agent)", s)
	}
	out := IstioVersion{Minor: nums[1], raw: raw}
	if len(parts) == 3 {
		out.Release = v
	}
	return out, nil
}

// Profile returns the agent contract for this version.
func (v IstioVersion) Profile() IstioProfile {
	switch {
	case v.Minor <= 13:
		return profileLegacy
	case v.Minor <= 21:
		return profileWorkloadSocket
	default:
		return profileCurrent
	}
}

// What each Istio line's agent can do for a flavor. The agent flavors run
// the stock pilot-agent of the pod's Istio release, so a flavor that relies
// on an agent feature is refused for releases that lack it. sds-agent is
// this project's own agent and only needs istiod's certificate service,
// which every supported release (1.5+) has.
const (
	// MinAgentFilesMinor is the first Istio 1.x minor whose pilot-agent
	// runs without Envoy: Istio 1.11 added DISABLE_ENVOY. Before it the
	// agent writes OUTPUT_CERTS only when an Envoy asks for the
	// certificate over SDS, so the gateway would never get the files.
	MinAgentFilesMinor = 11
)

// SupportsFlavor reports whether the agent of this Istio release can serve
// flavor f; the error says why not and what to use instead.
func (v IstioVersion) SupportsFlavor(f Flavor) error {
	if f == FlavorIstioAgentFiles && v.Minor < MinAgentFilesMinor {
		return fmt.Errorf("flavor %s needs Istio 1.%d or later, and the Istio version is %s: Istio 1.%d added DISABLE_ENVOY (pilot-agent without Envoy); "+
			"an older agent writes OUTPUT_CERTS only when an Envoy asks for the certificate over SDS, so the gateway would never get the files. "+
			"Use flavor %s or %s with this Istio",
			FlavorIstioAgentFiles, MinAgentFilesMinor, v, MinAgentFilesMinor, FlavorIstioProxy, FlavorSDSAgent)
	}
	return nil
}

// SupportedFlavors lists, in documentation order, the flavors this Istio
// release's agent supports.
func (v IstioVersion) SupportedFlavors() []Flavor {
	var out []Flavor
	for _, f := range Flavors {
		if v.SupportsFlavor(f) == nil {
			out = append(out, f)
		}
	}
	return out
}
