package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// Result is the engine's answer for one pod.
type Result struct {
	// Pod is the mutated pod when injected, otherwise the input pod itself.
	Pod      *corev1.Pod
	Decision Decision
	// Patch turns the input pod into Pod. It consists of add operations
	// only, so applying it to the raw object the API server sent keeps
	// every field this package does not know. Nil unless injected.
	Patch []jsonpatch.Operation
}

// Inject decides whether the pod is an edge gateway that should receive the
// certificate agent and, if so, returns the injected pod and its patch. The
// input pod is never modified.
func Inject(pod *corev1.Pod, s *Settings) Result {
	if pod == nil || s == nil {
		return Result{Pod: pod, Decision: failed(ReasonInvalidInput, "no pod or no settings given")}
	}
	d, p := s.plan(pod)
	if d.Outcome != OutcomeInjected {
		return Result{Pod: pod, Decision: d}
	}
	return Result{Pod: p.apply(pod), Decision: d, Patch: p.operations(pod)}
}

// injectPatch is Inject without building the mutated pod: the decision and
// the patch, which is all an admission response needs (the webhook reaches
// it through webhook/internal/fastpath).
func injectPatch(pod *corev1.Pod, s *Settings) (Decision, []jsonpatch.Operation) {
	if pod == nil || s == nil {
		return failed(ReasonInvalidInput, "no pod or no settings given"), nil
	}
	d, p := s.plan(pod)
	if d.Outcome != OutcomeInjected {
		return d, nil
	}
	return d, p.operations(pod)
}

// optIn reads the per-pod switch; the label wins over the annotation.
func optIn(pod *corev1.Pod) (explicit *bool, err error) {
	value, source := "", ""
	if v, ok := pod.Annotations[AnnotationInject]; ok {
		value, source = v, "annotation"
	}
	if v, ok := pod.Labels[LabelInject]; ok {
		value, source = v, "label"
	}
	switch value {
	case "":
		if source == "" {
			return nil, nil
		}
	case "true":
		return &[]bool{true}[0], nil
	case "false":
		return &[]bool{false}[0], nil
	}
	return nil, fmt.Errorf("%s %s=%q is invalid: use \"true\" or \"false\"", source, LabelInject, value)
}

// agentPresent reports a container that already is an Istio certificate
// agent (Gloo's own istio integration, a manual istio-proxy, an SDS helper).
func agentPresent(pod *corev1.Pod) string {
	check := func(c *corev1.Container) string {
		switch {
		case c.Name == "istio-proxy", c.Name == "sds-agent":
			return c.Name
		case strings.Contains(c.Image, "/proxyv2:"), strings.Contains(c.Image, "/proxyv2@"),
			strings.Contains(c.Image, "solo-io/sds:"), strings.Contains(c.Image, "solo-io/sds@"):
			return c.Name
		}
		return ""
	}
	for i := range pod.Spec.InitContainers {
		if n := check(&pod.Spec.InitContainers[i]); n != "" {
			return n
		}
	}
	for i := range pod.Spec.Containers {
		if n := check(&pod.Spec.Containers[i]); n != "" {
			return n
		}
	}
	return ""
}

// screen runs the selection that needs only the pod's metadata and its
// containers' names and images (see screenFields). final reports a decision that
// the rest of the pod cannot change.
func (s *Settings) screen(pod *corev1.Pod) (d Decision, match gatewayMatch, gwIndex int, final bool) {
	return s.screenFor(pod, nil)
}

// screenFor is screen with what discovery knows of Istio's own injector
// acting on the pod (nil: nothing known), used to explain an Istio-injected
// gateway.
func (s *Settings) screenFor(pod *corev1.Pod, istio *IstioInjection) (d Decision, match gatewayMatch, gwIndex int, final bool) {
	if v, ok := pod.Annotations[AnnotationStatus]; ok {
		if _, err := ParseStatus(v); err != nil {
			return failed(ReasonInvalidStatus, err.Error()+"; remove the annotation and the injected containers, or recreate the pod from its template"), gatewayMatch{}, 0, true
		}
		return skipped(ReasonAlreadyInjected, "pod already carries "+AnnotationStatus), gatewayMatch{}, 0, true
	}
	if _, ok := pod.Annotations[annotationMirror]; ok {
		return skipped(ReasonMirrorPod, "static (mirror) pods cannot be mutated"), gatewayMatch{}, 0, true
	}
	if s.excluded.Has(pod.Namespace) {
		return skipped(ReasonExcludedNamespace, "namespace "+pod.Namespace+" is excluded from injection"), gatewayMatch{}, 0, true
	}
	explicit, err := optIn(pod)
	if err != nil {
		return failed(ReasonInvalidInjectValue, err.Error()), gatewayMatch{}, 0, true
	}
	if explicit != nil && !*explicit {
		return skipped(ReasonOptedOut, LabelInject+" is \"false\""), gatewayMatch{}, 0, true
	}
	if evidence := istioInjected(pod); evidence != "" {
		// Istio's injector ran before us. Application pods are none of our
		// business; a gateway that wanted our agent got a capturing sidecar
		// instead, and its owner should hear about it.
		match, isGateway := s.matchGateway(pod)
		if !isGateway && (explicit == nil || !*explicit) {
			return skipped(ReasonIstioSidecar, "pod was injected by Istio ("+evidence+"); its proxy already has a mesh identity"), gatewayMatch{}, 0, true
		}
		return warned(ReasonIstioSidecar, match.profile, istioFirstMessage(evidence, istio)), gatewayMatch{}, 0, true
	}
	if name := agentPresent(pod); name != "" {
		return skipped(ReasonAgentPresent, "pod already runs an Istio certificate agent or SDS helper (container "+name+")"), gatewayMatch{}, 0, true
	}

	match, ok := s.matchGateway(pod)
	if !ok && explicit == nil {
		return skipped(ReasonNotAGateway, "pod matches no gateway profile"), gatewayMatch{}, 0, true
	}
	if ok && match.spec != nil && match.spec.OptInOnly && explicit == nil {
		msg := fmt.Sprintf("gateway profile %q is injected only when the pod opts in explicitly, not through the namespace label or the cluster-wide mode", match.profile)
		if match.spec.OptInReason != "" {
			msg += ": " + match.spec.OptInReason
		}
		return warned(ReasonOptInRequired, match.profile, msg+fmt.Sprintf(
			"; to inject it anyway, set label (or annotation) %s: \"true\" on the pod template", LabelInject)), gatewayMatch{}, 0, true
	}
	if pod.Labels[LabelDataplaneMode] == DataplaneModeAmbient && !pod.Spec.HostNetwork {
		profile := match.profile
		if !ok {
			profile = ""
		}
		return warned(ReasonAmbient, profile, ambientMessage(pod.Labels)), gatewayMatch{}, 0, true
	}
	if !ok {
		// An explicit opt-in of a single-container pod means "this is my
		// Envoy"; with several containers, the one running an Envoy image.
		name, problem := envoyContainerOf(pod)
		if problem != "" {
			return warned(ReasonContainerNotFound, "", problem), gatewayMatch{}, 0, true
		}
		match = gatewayMatch{profile: ProfileGeneric, container: name}
	}
	gwIndex = containerIndex(pod.Spec.Containers, match.container)
	if gwIndex < 0 {
		msg := fmt.Sprintf("gateway profile %q matched but none of its container names is in the pod", match.profile)
		if match.container != "" {
			msg = fmt.Sprintf("gateway container %q is not in the pod", match.container)
		}
		return warned(ReasonContainerNotFound, match.profile, msg+": set annotation "+AnnotationGatewayContainer+" to the Envoy container's name"), gatewayMatch{}, 0, true
	}
	return Decision{}, match, gwIndex, false
}

// envoyContainerOf picks the Envoy container of an explicitly opted-in pod
// that matches no profile: its only container, or else its only container
// running an Envoy image. problem explains why none can be picked.
func envoyContainerOf(pod *corev1.Pod) (name, problem string) {
	if len(pod.Spec.Containers) == 1 {
		return pod.Spec.Containers[0].Name, ""
	}
	envoys := envoyContainers(pod)
	switch len(envoys) {
	case 1:
		return envoys[0], ""
	case 0:
		return "", fmt.Sprintf("pod asks for injection but matches no gateway profile and has %d containers, none running a known Envoy image: set annotation %s to the Envoy container's name",
			len(pod.Spec.Containers), AnnotationGatewayContainer)
	}
	return "", fmt.Sprintf("pod asks for injection but matches no gateway profile, and containers %s all run Envoy images: set annotation %s to the gateway's Envoy container's name",
		strings.Join(envoys, ", "), AnnotationGatewayContainer)
}

// screenFields decides from the fields a cheap partial decode provides:
// metadata (namespace, labels, annotations), spec.hostNetwork, and each
// container's and init container's name and image. When final is true the
// decision is the one Inject would reach for the full pod, and the rest of
// the pod need not be decoded; otherwise only Inject can decide. It is not
// exported: the webhook reaches it through webhook/internal/fastpath.
func screenFields(pod *corev1.Pod, s *Settings) (d Decision, final bool) {
	if pod == nil || s == nil {
		return failed(ReasonInvalidInput, "no pod or no settings given"), true
	}
	d, _, _, final = s.screen(pod)
	return d, final
}

// plan runs the selection logic and, when the pod is to be injected,
// describes every addition.
func (s *Settings) plan(pod *corev1.Pod) (Decision, *plan) {
	d, match, gwIndex, final := s.screen(pod)
	if final {
		return d, nil
	}

	params, err := s.podParams(pod, match)
	if err != nil {
		var ferr *flavorError
		var serr *spireDisabledError
		switch {
		case errors.As(err, &ferr):
			return warned(ReasonFlavorUnsupported, match.profile, err.Error()), nil
		case errors.As(err, &serr):
			return warned(ReasonSPIREDisabled, match.profile, err.Error()), nil
		}
		return warned(ReasonInvalidOverride, match.profile, err.Error()), nil
	}
	if pod.Spec.HostNetwork && params.glooDropIn {
		return warned(ReasonHostNetwork, match.profile, fmt.Sprintf(
			"the Gloo drop-in listens on %s, and on the host network loopback is the node's, where any process could read the key: "+
				"turn it off for this pod (annotation %s: \"false\") and point Gloo's SDS cluster at the socket (docs/gateway-wiring.md#gloo-edge)",
			GlooSDSAddress, AnnotationGlooDropIn)), nil
	}
	if pod.Spec.HostNetwork && len(boundPorts(params.flavor)) > 0 {
		return warned(ReasonHostNetwork, match.profile, fmt.Sprintf(
			"flavor %s binds TCP ports %v, which would collide on the host network: use flavor %s for hostNetwork gateways",
			params.flavor, boundPorts(params.flavor), FlavorSDSAgent)), nil
	}
	p, err := s.buildPlan(pod, params, match, gwIndex)
	if err != nil {
		return warned(ReasonConflict, match.profile, err.Error()), nil
	}
	msg := fmt.Sprintf("injected %s (%s, Istio %s, %s) for gateway container %q",
		agentContainerName(params.flavor), params.flavor, params.version, p.status.Placement, match.container)
	if params.flavor == FlavorSPIRE {
		msg = fmt.Sprintf("injected %s (%s, %s, %s) for gateway container %q",
			agentContainerName(params.flavor), params.flavor, s.spire.describe(), p.status.Placement, match.container)
	}
	if pod.Spec.HostNetwork && pod.Labels[LabelDataplaneMode] == DataplaneModeAmbient {
		msg += "; note: " + ambientHostNetworkCaveat(pod.Labels)
	}
	return Decision{
		Outcome: OutcomeInjected,
		Reason:  ReasonInjected,
		Profile: match.profile,
		Message: msg,
	}, p
}

// plan is the complete, additive description of an injection.
type plan struct {
	status        Status
	annotations   [][2]string // added, in order; the status comes last
	gatewayIndex  int
	gatewayMounts []corev1.VolumeMount
	gatewayEnv    []corev1.EnvVar
	volumes       []corev1.Volume
	volumesJSON   []json.RawMessage
	native        bool

	// The agent container is built and encoded once per distinct
	// parameters (see encodedCache); apply rebuilds the struct.
	settings      *Settings
	params        podParams
	wanted        []wantedVolume
	workload      string
	containerName string
	containerJSON json.RawMessage
}

func (s *Settings) buildPlan(pod *corev1.Pod, params podParams, match gatewayMatch, gwIndex int) (*plan, error) {
	gw := &pod.Spec.Containers[gwIndex]
	// Containers are addressed by name (the status annotation, uninject,
	// kubectl): a pod whose names are empty or repeated — which the API
	// server's validation refuses after admission anyway — is left as it is.
	if err := uniqueContainerNames(pod); err != nil {
		return nil, err
	}
	agentName := agentContainerName(params.flavor)
	if containerIndex(pod.Spec.Containers, agentName) >= 0 || containerIndex(pod.Spec.InitContainers, agentName) >= 0 {
		return nil, fmt.Errorf("the pod already has a container named %q: rename it or opt the pod out", agentName)
	}
	for _, port := range params.ports() {
		for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
			for i := range cs {
				for _, cp := range cs[i].Ports {
					if cp.ContainerPort == port && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
						return nil, fmt.Errorf("container %q declares port %d, which the %s agent binds: use flavor %s or move the port",
							cs[i].Name, port, params.flavor, FlavorSDSAgent)
					}
				}
			}
		}
	}

	// The spire flavor's wait container is a run-to-completion init
	// container in either placement: it goes first in initContainers.
	p := &plan{gatewayIndex: gwIndex, native: params.native || params.flavor == FlavorSPIRE, settings: s, params: params}
	pkey := params.cacheKey()
	wanted := s.cache.wantedVolumes(pkey, func() []wantedVolume { return s.volumesFor(params) })
	p.wanted = wanted
	p.volumes = make([]corev1.Volume, 0, len(wanted))
	p.volumesJSON = make([]json.RawMessage, 0, len(wanted))
	for i := range wanted {
		w := &wanted[i]
		if existing := findVolume(pod.Spec.Volumes, w.volume.Name); existing != nil {
			if !compatibleVolume(existing, &w.volume) {
				return nil, fmt.Errorf("the pod already has a volume named %q with a different source: rename it or opt the pod out", w.volume.Name)
			}
			continue // reuse it
		}
		p.volumes = append(p.volumes, w.volume)
		p.volumesJSON = append(p.volumesJSON, w.json)
	}
	for _, w := range wanted {
		if w.gatewayPath == "" {
			continue
		}
		reused := false
		for _, m := range gw.VolumeMounts {
			if m.MountPath != w.gatewayPath {
				continue
			}
			if m.Name == w.volume.Name && findVolume(p.volumes, w.volume.Name) == nil {
				reused = true
				continue
			}
			return nil, fmt.Errorf("container %q already mounts volume %q at %s, where the agent's %s volume must go",
				gw.Name, m.Name, m.MountPath, w.volume.Name)
		}
		if !reused {
			p.gatewayMounts = append(p.gatewayMounts, corev1.VolumeMount{Name: w.volume.Name, MountPath: w.gatewayPath, ReadOnly: w.gatewayRO})
		}
	}
	env := match.env
	if match.spec != nil && match.spec.CertsDirEnv != "" && params.flavor == FlavorIstioAgentFiles &&
		!slices.ContainsFunc(gw.Env, func(x corev1.EnvVar) bool { return x.Name == match.spec.CertsDirEnv }) {
		// Only if absent: a value the owner set stays theirs.
		env = append(slices.Clip(env), valueEnv(match.spec.CertsDirEnv, s.certsDir))
	}
	for _, e := range env {
		if i := slices.IndexFunc(gw.Env, func(x corev1.EnvVar) bool { return x.Name == e.Name }); i >= 0 {
			if equality.Semantic.DeepEqual(gw.Env[i], e) {
				continue
			}
			return nil, fmt.Errorf("container %q already sets env %s differently from gateway profile %q", gw.Name, e.Name, match.profile)
		}
		p.gatewayEnv = append(p.gatewayEnv, e)
	}

	p.workload = workloadName(pod)
	p.containerName = agentContainerName(params.flavor)
	p.containerJSON = s.cache.get(pkey+"|container|"+p.workload, func() any {
		c := s.container(params, wanted, p.workload)
		return &c
	})
	p.status = Status{
		Version:          statusVersion,
		Flavor:           params.flavor,
		IstioVersion:     params.version.String(),
		IstioProfile:     params.profile.Name,
		Image:            params.image,
		Revision:         s.revision,
		RevisionFrom:     s.revisionFrom,
		Placement:        PlacementClassic,
		GatewayProfile:   match.profile,
		GatewayContainer: gw.Name,
	}
	if params.flavor == FlavorSPIRE {
		p.status.IstioVersion, p.status.IstioProfile = "", ""
		p.status.IdentityProvider = IdentityProviderSPIRE
		p.status.SocketSource = s.spire.source()
		p.status.Placement = PlacementInit
		p.status.InitContainers = []string{p.containerName}
	} else if params.native {
		p.status.Placement = PlacementNative
		p.status.InitContainers = []string{p.containerName}
	} else {
		p.status.Containers = []string{p.containerName}
		// The agent goes first so that its postStart hook holds the gateway
		// back; keep `kubectl logs/exec` pointed at the gateway.
		if _, ok := pod.Annotations[annotationDefaultContainer]; !ok {
			p.annotations = append(p.annotations, [2]string{annotationDefaultContainer, gw.Name})
			p.status.Annotations = []string{annotationDefaultContainer}
		}
	}
	p.status.Volumes = make([]string, 0, len(p.volumes))
	for _, v := range p.volumes {
		p.status.Volumes = append(p.status.Volumes, v.Name)
	}
	for _, m := range p.gatewayMounts {
		p.status.GatewayMounts = append(p.status.GatewayMounts, MountRef{Name: m.Name, MountPath: m.MountPath})
	}
	for _, e := range p.gatewayEnv {
		p.status.GatewayEnv = append(p.status.GatewayEnv, e.Name)
	}
	p.annotations = append(p.annotations, [2]string{AnnotationStatus, p.status.encode()})
	return p, nil
}

// apply returns a deep copy of pod with the plan's additions.
func (p *plan) apply(orig *corev1.Pod) *corev1.Pod {
	pod := orig.DeepCopy()
	if pod.Annotations == nil {
		pod.Annotations = make(map[string]string, len(p.annotations))
	}
	for _, kv := range p.annotations {
		pod.Annotations[kv[0]] = kv[1]
	}
	gw := &pod.Spec.Containers[p.gatewayIndex]
	gw.VolumeMounts = append(gw.VolumeMounts, p.gatewayMounts...)
	gw.Env = append(gw.Env, p.gatewayEnv...)
	for i := range p.volumes {
		// The plan's volumes come from a cache shared by every pod.
		pod.Spec.Volumes = append(pod.Spec.Volumes, *p.volumes[i].DeepCopy())
	}
	agent := p.settings.container(p.params, p.wanted, p.workload)
	if p.native {
		pod.Spec.InitContainers = slices.Insert(pod.Spec.InitContainers, 0, agent)
	} else {
		pod.Spec.Containers = slices.Insert(pod.Spec.Containers, 0, agent)
	}
	return pod
}

// operations expresses the plan as JSON Patch add operations against orig.
// Operations that address the gateway container by index come before the
// agent container is inserted in front of it.
func (p *plan) operations(orig *corev1.Pod) []jsonpatch.Operation {
	ops := make([]jsonpatch.Operation, 0, len(p.annotations)+len(p.gatewayMounts)+len(p.gatewayEnv)+len(p.volumesJSON)+1)
	if orig.Annotations == nil {
		m := make(map[string]string, len(p.annotations))
		for _, kv := range p.annotations {
			m[kv[0]] = kv[1]
		}
		ops = append(ops, addOp("/metadata/annotations", m))
	} else {
		for _, kv := range p.annotations {
			ops = append(ops, addOp("/metadata/annotations/"+escapePointer(kv[0]), kv[1]))
		}
	}
	gwPath := fmt.Sprintf("/spec/containers/%d", p.gatewayIndex)
	gw := &orig.Spec.Containers[p.gatewayIndex]
	ops = appendList(ops, gwPath+"/volumeMounts", len(gw.VolumeMounts) == 0, p.gatewayMounts)
	ops = appendList(ops, gwPath+"/env", len(gw.Env) == 0, p.gatewayEnv)
	ops = appendList(ops, "/spec/volumes", len(orig.Spec.Volumes) == 0, p.volumesJSON)
	if p.native {
		if len(orig.Spec.InitContainers) == 0 {
			ops = append(ops, addOp("/spec/initContainers", rawArray(p.containerJSON)))
		} else {
			ops = append(ops, addOp("/spec/initContainers/0", p.containerJSON))
		}
	} else {
		ops = append(ops, addOp("/spec/containers/0", p.containerJSON))
	}
	return ops
}

// rawArray wraps encoded values in a JSON array.
func rawArray(items ...json.RawMessage) json.RawMessage {
	n := 2
	for _, it := range items {
		n += len(it) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, '[')
	for i, it := range items {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, it...)
	}
	return append(b, ']')
}

// appendList adds items to the array at path. An absent (or empty) array is
// created whole: "/-" on a missing array is an error in JSON Patch.
func appendList[T any](ops []jsonpatch.Operation, path string, absent bool, items []T) []jsonpatch.Operation {
	if len(items) == 0 {
		return ops
	}
	if absent {
		if raws, ok := any(items).([]json.RawMessage); ok {
			return append(ops, addOp(path, rawArray(raws...)))
		}
		return append(ops, addOp(path, items))
	}
	path += "/-"
	for i := range items {
		// A pointer into the plan's slice: boxing it in the operation's
		// interface value allocates nothing; it encodes the same.
		ops = append(ops, addOp(path, &items[i]))
	}
	return ops
}

func addOp(path string, value any) jsonpatch.Operation {
	return jsonpatch.Operation{Operation: "add", Path: path, Value: value}
}

// escapePointer escapes a JSON Pointer reference token (RFC 6901).
func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func findVolume(vs []corev1.Volume, name string) *corev1.Volume {
	for i := range vs {
		if vs[i].Name == name {
			return &vs[i]
		}
	}
	return nil
}

// compatibleVolume says whether an existing volume can stand in for the one
// the agent needs. Defaults the API server fills in (defaultMode, sizeLimit,
// token expiry) do not matter; the kind of source and what it points at do.
func compatibleVolume(existing, wanted *corev1.Volume) bool {
	e, w := existing.VolumeSource, wanted.VolumeSource
	switch {
	case w.EmptyDir != nil:
		return e.EmptyDir != nil && e.EmptyDir.Medium == w.EmptyDir.Medium
	case w.ConfigMap != nil:
		return e.ConfigMap != nil && e.ConfigMap.Name == w.ConfigMap.Name && len(e.ConfigMap.Items) == 0
	case w.Projected != nil:
		if e.Projected == nil || len(e.Projected.Sources) != 1 || e.Projected.Sources[0].ServiceAccountToken == nil {
			return false
		}
		et, wt := e.Projected.Sources[0].ServiceAccountToken, w.Projected.Sources[0].ServiceAccountToken
		return et.Audience == wt.Audience && et.Path == wt.Path
	case w.CSI != nil:
		return e.CSI != nil && e.CSI.Driver == w.CSI.Driver && len(e.CSI.VolumeAttributes) == 0
	case w.HostPath != nil:
		return e.HostPath != nil && e.HostPath.Path == w.HostPath.Path
	case w.DownwardAPI != nil:
		if e.DownwardAPI == nil || len(e.DownwardAPI.Items) != len(w.DownwardAPI.Items) {
			return false
		}
		for i, it := range w.DownwardAPI.Items {
			got := e.DownwardAPI.Items[i]
			if got.Path != it.Path || got.FieldRef == nil || got.FieldRef.FieldPath != it.FieldRef.FieldPath {
				return false
			}
		}
		return true
	}
	return false
}

// workloadName derives the owning workload's name the way Istio reports it
// in ISTIO_META_WORKLOAD_NAME: a Deployment's pods are named
// <deployment>-<pod-template-hash>-<suffix>.
func workloadName(pod *corev1.Pod) string {
	if v := pod.Labels[labelIstioWorkloadName]; v != "" {
		return v
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName
	}
	if h := pod.Labels[labelPodTemplateHash]; h != "" {
		if i := strings.LastIndex(name, "-"+h+"-"); i > 0 {
			return name[:i]
		}
		if strings.HasSuffix(name, "-"+h) {
			return strings.TrimSuffix(name, "-"+h)
		}
	}
	if pod.Name == "" {
		return strings.TrimSuffix(pod.GenerateName, "-")
	}
	return name
}
