// Package kubelet is a small kubelet emulator: it takes a pod as stored in a
// real kube-apiserver and runs chosen containers of it as local processes,
// preparing exactly what the real kubelet would prepare for them.
//
// What it does, as the kubelet does:
//
//   - one host directory per pod volume: emptyDir (0777, setgid and group
//     fsGroup when the pod has one), configMap and secret (read from the
//     apiserver; a missing non-optional object is a mount failure and no
//     container starts), downwardAPI, and projected serviceAccountToken
//     sources filled through the TokenRequest API with exactly the audience
//     and expirationSeconds the volume asks for, bound to the pod, for the
//     pod's ServiceAccount; file modes and group ownership follow the
//     kubelet's rules (0600 for tokens when fsGroup or a common runAsUser
//     applies, group-readable for fsGroup);
//   - one root directory per container, where every volumeMount's mountPath
//     is a symbolic link to the volume's directory (bind-like), image files
//     are laid out read-only, and nothing else exists, so paths that are not
//     mounted do not resolve, as in the container;
//   - env resolution: service variables (KUBERNETES_SERVICE_HOST, ...), then
//     env entries in order with $(VAR) expansion, value, fieldRef,
//     resourceFieldRef (with divisor and the kubelet's rounding up),
//     configMapKeyRef and secretKeyRef, and envFrom; image ENV underneath;
//   - command and args against the image entrypoint and cmd, with $(VAR)
//     expansion;
//   - the process runs with the container root as working directory (an
//     image's WORKDIR /), as the container's runAsUser/runAsGroup with fsGroup
//     and supplementalGroups as supplementary groups (when this process runs
//     as root; otherwise as the current user, see Pod.UIDEmulated);
//   - probes and lifecycle handlers (exec, httpGet, tcpSocket).
//
// What a host process cannot do the same way, and how it is mapped:
//
//   - Absolute paths. Inside the container "/" is the container root; on the
//     host it is not. Programs that use paths relative to their working
//     directory (Istio's agent does: ./var/run/secrets/...) resolve exactly
//     as in the container. An env value that is an absolute path inside one
//     of the container's volume mounts is rewritten to the same path
//     relative to the container's working directory ("./var/..." under
//     WORKDIR /, "../../var/..." under /home/nonroot), which names the same
//     file in the container; every such rewrite is recorded in
//     Process.Rewrites.
//   - Ports. Containers of a pod share the host's network here. Callers map
//     container ports to free host ports (StartOptions.PortMap); probes and
//     handlers follow the map, and exec handlers' "localhost:<port>"
//     arguments are rewritten with it (recorded).
//   - Any other change the caller needs (e.g. where the control plane
//     listens) goes through StartOptions.EnvRewrite, and is recorded with
//     the caller's reason.
//
// Not emulated: the atomic-writer ..data symlink layout and refresh of
// configMap, secret and token volumes, tmpfs for medium Memory, cgroups and
// resource limits, image pulls, restarts and the pod's status in the
// apiserver (it stays Pending; PodIP and HostIP are local).
package kubelet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Image is what a container image contributes to a container.
type Image struct {
	// Entrypoint and Cmd are the image's ENTRYPOINT and CMD.
	Entrypoint, Cmd []string
	// WorkingDir is the image's WORKDIR (default "/").
	WorkingDir string
	// Env is the image's ENV (NAME=value); the container's env wins.
	Env []string
	// Files are laid out read-only in the container root.
	Files []File
}

// File is one file of an image.
type File struct {
	// Path is the absolute path inside the container.
	Path string
	// Source is a host file whose content is used (hard-linked when
	// possible, so large binaries are not copied). If empty, Data is used.
	Source string
	Data   []byte
	// Mode defaults to 0644 (0755 if Executable).
	Mode       os.FileMode
	Executable bool
}

// Kubelet holds the node-level settings.
type Kubelet struct {
	// Client reads ConfigMaps and Secrets and requests tokens.
	Client kubernetes.Interface
	// Images resolves a container's image; nil (no error) means an image
	// with no files, whose containers cannot be started.
	Images func(ref string) (*Image, error)
	// NodeName, PodIP and HostIP are reported to the pod through the
	// downward API (defaults: "sds-injector-test-node", 127.0.0.1,
	// 127.0.0.2 — distinct from the pod IP because the pod does not use the
	// host network).
	NodeName, PodIP, HostIP string
	// APIServerHost and APIServerPort fill the KUBERNETES_SERVICE_* variables
	// every container gets.
	APIServerHost, APIServerPort string
	// NodeAllocatable is what resourceFieldRef limits resolve to when the
	// container sets none (default cpu 2, memory 8Gi).
	NodeAllocatable corev1.ResourceList
	// Dir is where pod directories are created (default os.TempDir()). Keep
	// it short: Unix socket paths are limited to 107 bytes.
	Dir string
}

// PodOptions change how SetUpPod treats a pod. They exist for negative
// tests and are recorded.
type PodOptions struct {
	// IgnoreMountFailures lays out an empty directory for a volume whose
	// ConfigMap or Secret is missing instead of failing, to show what the
	// containers would do if they started anyway (the real kubelet never
	// starts them).
	IgnoreMountFailures bool
}

// IssuedToken records one token the emulator requested for a projected
// serviceAccountToken source.
type IssuedToken struct {
	Volume, Path         string
	ServiceAccount       string
	Audiences            []string
	ExpirationSeconds    int64
	ExpirationTimestamp  time.Time
	BoundPodName, PodUID string
	Token                string
	FileMode             os.FileMode
}

// Pod is a pod whose volumes are set up.
type Pod struct {
	// Pod is the pod as stored, with the local node name, pod IP and host IP.
	Pod *corev1.Pod
	// Dir is the pod's host directory: v/<volume>, c/<container>, logs/.
	Dir string
	// Tokens lists the tokens requested for projected volumes.
	Tokens []IssuedToken
	// MountFailures lists volumes that failed to mount but were laid out
	// empty because of PodOptions.IgnoreMountFailures.
	MountFailures []error
	// UIDEmulated reports whether processes run as the containers' users
	// (this process is root) or as the current user.
	UIDEmulated bool

	k       *Kubelet
	volumes map[string]string // name -> host dir
	roots   map[string]string // container -> host root

	mu    sync.Mutex
	ports map[string]map[int32]int // container -> container port -> host port
}

// Rewrite records a change the emulator made to what the pod spec says.
type Rewrite struct {
	Container, What, From, To, Why string
}

func (r Rewrite) String() string {
	return fmt.Sprintf("%s: %s: %q -> %q (%s)", r.Container, r.What, r.From, r.To, r.Why)
}

func (k *Kubelet) defaults() {
	if k.NodeName == "" {
		k.NodeName = "sds-injector-test-node"
	}
	if k.PodIP == "" {
		k.PodIP = "127.0.0.1"
	}
	if k.HostIP == "" {
		k.HostIP = "127.0.0.2"
	}
	if k.NodeAllocatable == nil {
		k.NodeAllocatable = corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("2"),
			corev1.ResourceMemory: resource.MustParse("8Gi"),
		}
	}
}

// SetUpPod prepares every volume of pod (as returned by the apiserver: its
// UID binds the tokens) and a root directory for every container. On a
// mount failure nothing is started and the error reads like the kubelet's
// FailedMount event. Call Cleanup when done.
func (k *Kubelet) SetUpPod(ctx context.Context, pod *corev1.Pod, opts PodOptions) (_ *Pod, retErr error) {
	k.defaults()
	if pod.UID == "" {
		return nil, errors.New("kubelet: the pod has no UID; pass the pod as stored by the apiserver")
	}
	pod = pod.DeepCopy()
	if pod.Spec.NodeName == "" {
		pod.Spec.NodeName = k.NodeName
	}
	pod.Status.PodIP, pod.Status.PodIPs = k.PodIP, []corev1.PodIP{{IP: k.PodIP}}
	pod.Status.HostIP, pod.Status.HostIPs = k.HostIP, []corev1.HostIP{{IP: k.HostIP}}
	pod.Status.Phase = corev1.PodRunning

	dir, err := os.MkdirTemp(k.Dir, "kl")
	if err != nil {
		return nil, err
	}
	p := &Pod{Pod: pod, Dir: dir, k: k, volumes: map[string]string{}, roots: map[string]string{},
		ports: map[string]map[int32]int{}, UIDEmulated: os.Geteuid() == 0}
	defer func() {
		if retErr != nil {
			_ = p.Cleanup()
		}
	}()
	// Other users (the containers' UIDs) must reach the pod's files.
	for _, d := range []string{dir, filepath.Join(dir, "v"), filepath.Join(dir, "c"), filepath.Join(dir, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return nil, err
		}
	}

	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		vdir := filepath.Join(dir, "v", v.Name)
		err := p.setUpVolume(ctx, v, vdir)
		if err != nil {
			err = fmt.Errorf("MountVolume.SetUp failed for volume %q : %w", v.Name, err)
			var mf *mountFailure
			if !opts.IgnoreMountFailures || !errors.As(err, &mf) {
				return nil, err
			}
			p.MountFailures = append(p.MountFailures, err)
			_ = os.RemoveAll(vdir)
			if err := os.MkdirAll(vdir, 0o755); err != nil {
				return nil, err
			}
		}
		p.volumes[v.Name] = vdir
	}

	for _, c := range p.allContainers() {
		if err := p.setUpRoot(c); err != nil {
			return nil, fmt.Errorf("container %s: %w", c.Name, err)
		}
	}
	return p, nil
}

// mountFailure is a missing ConfigMap or Secret: the kubelet retries such
// mounts and never starts the pod's containers until it succeeds.
type mountFailure struct{ msg string }

func (m *mountFailure) Error() string { return m.msg }

func (p *Pod) allContainers() []*corev1.Container {
	var out []*corev1.Container
	for i := range p.Pod.Spec.InitContainers {
		out = append(out, &p.Pod.Spec.InitContainers[i])
	}
	for i := range p.Pod.Spec.Containers {
		out = append(out, &p.Pod.Spec.Containers[i])
	}
	return out
}

// Container returns the named container (init or regular).
func (p *Pod) Container(name string) (*corev1.Container, error) {
	for _, c := range p.allContainers() {
		if c.Name == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s has no container %q", p.Pod.Namespace, p.Pod.Name, name)
}

// VolumeDir is the host directory of a volume.
func (p *Pod) VolumeDir(name string) string { return p.volumes[name] }

// Root is the host directory that is "/" for the container.
func (p *Pod) Root(container string) string { return p.roots[container] }

// HostPath maps a path inside a container to the host, through the
// container's mounts: a path under no mount lies in the container's image
// root, where only the image's files exist.
func (p *Pod) HostPath(container, containerPath string) string {
	return filepath.Join(p.roots[container], filepath.FromSlash(path.Clean("/"+containerPath)))
}

// fsGroup returns the pod's fsGroup, if any.
func (p *Pod) fsGroup() *int64 {
	if sc := p.Pod.Spec.SecurityContext; sc != nil {
		return sc.FSGroup
	}
	return nil
}

// fsUser is the kubelet's FsUser for projected token volumes: the common
// effective runAsUser of all containers, if they share one.
func (p *Pod) fsUser() *int64 {
	var uid *int64
	for _, c := range p.allContainers() {
		u := effectiveUser(p.Pod, c)
		if u == nil {
			return nil
		}
		if uid != nil && *uid != *u {
			return nil
		}
		uid = u
	}
	return uid
}

func effectiveUser(pod *corev1.Pod, c *corev1.Container) *int64 {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return c.SecurityContext.RunAsUser
	}
	if pod.Spec.SecurityContext != nil {
		return pod.Spec.SecurityContext.RunAsUser
	}
	return nil
}

func effectiveGroup(pod *corev1.Pod, c *corev1.Container) *int64 {
	if c.SecurityContext != nil && c.SecurityContext.RunAsGroup != nil {
		return c.SecurityContext.RunAsGroup
	}
	if pod.Spec.SecurityContext != nil {
		return pod.Spec.SecurityContext.RunAsGroup
	}
	return nil
}

// ---------------------------------------------------------------- volumes

type projectedFile struct {
	path string
	data []byte
	mode os.FileMode
	uid  *int64 // owner, if the kubelet sets one (FsUser of tokens)
}

func (p *Pod) setUpVolume(ctx context.Context, v *corev1.Volume, dir string) error {
	switch {
	case v.EmptyDir != nil:
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return err
		}
		// The kubelet creates emptyDir world-writable.
		if err := os.Chmod(dir, 0o777); err != nil {
			return err
		}
		return p.applyFSGroup(dir, false)
	case v.ConfigMap != nil:
		files, err := p.configMapFiles(ctx, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, v.ConfigMap.DefaultMode)
		if err != nil {
			return err
		}
		return p.writeAtomicVolume(dir, files)
	case v.Secret != nil:
		files, err := p.secretFiles(ctx, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, v.Secret.DefaultMode)
		if err != nil {
			return err
		}
		return p.writeAtomicVolume(dir, files)
	case v.DownwardAPI != nil:
		files, err := p.downwardFiles(v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
		if err != nil {
			return err
		}
		return p.writeAtomicVolume(dir, files)
	case v.Projected != nil:
		files, err := p.projectedFiles(ctx, v.Name, v.Projected)
		if err != nil {
			return err
		}
		return p.writeAtomicVolume(dir, files)
	}
	return fmt.Errorf("volume type not supported by the kubelet emulator")
}

func modeOr(m *int32, def os.FileMode) os.FileMode {
	if m != nil {
		return os.FileMode(*m) & 0o777
	}
	return def
}

// defaultVolumeMode is the API default (0644) of configMap, secret,
// downwardAPI and projected volumes.
const defaultVolumeMode os.FileMode = 0o644

func (p *Pod) configMapFiles(ctx context.Context, name string, items []corev1.KeyToPath, optional *bool, defMode *int32) ([]projectedFile, error) {
	cm, err := p.k.Client.CoreV1().ConfigMaps(p.Pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if optional != nil && *optional {
			return nil, nil
		}
		return nil, &mountFailure{fmt.Sprintf("configmap %q not found", name)}
	}
	if err != nil {
		return nil, err
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles("configmap", name, data, items, optional, modeOr(defMode, defaultVolumeMode))
}

func (p *Pod) secretFiles(ctx context.Context, name string, items []corev1.KeyToPath, optional *bool, defMode *int32) ([]projectedFile, error) {
	s, err := p.k.Client.CoreV1().Secrets(p.Pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if optional != nil && *optional {
			return nil, nil
		}
		return nil, &mountFailure{fmt.Sprintf("secret %q not found", name)}
	}
	if err != nil {
		return nil, err
	}
	return keyFiles("secret", name, s.Data, items, optional, modeOr(defMode, defaultVolumeMode))
}

func keyFiles(kind, name string, data map[string][]byte, items []corev1.KeyToPath, optional *bool, mode os.FileMode) ([]projectedFile, error) {
	var out []projectedFile
	if len(items) == 0 {
		for k, v := range data {
			out = append(out, projectedFile{path: k, data: v, mode: mode})
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional != nil && *optional {
				continue
			}
			return nil, &mountFailure{fmt.Sprintf("configuration of %s %q has no key %q", kind, name, it.Key)}
		}
		out = append(out, projectedFile{path: it.Path, data: v, mode: modeOr(it.Mode, mode)})
	}
	return out, nil
}

func (p *Pod) downwardFiles(items []corev1.DownwardAPIVolumeFile, defMode *int32) ([]projectedFile, error) {
	var out []projectedFile
	for _, it := range items {
		var val string
		var err error
		switch {
		case it.FieldRef != nil:
			val, err = p.fieldValue(it.FieldRef.FieldPath, true)
		case it.ResourceFieldRef != nil:
			c, cerr := p.Container(it.ResourceFieldRef.ContainerName)
			if cerr != nil {
				return nil, cerr
			}
			val, err = p.resourceValue(c, it.ResourceFieldRef)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, projectedFile{path: it.Path, data: []byte(val), mode: modeOr(it.Mode, modeOr(defMode, defaultVolumeMode))})
	}
	return out, nil
}

func (p *Pod) projectedFiles(ctx context.Context, volume string, src *corev1.ProjectedVolumeSource) ([]projectedFile, error) {
	mode := modeOr(src.DefaultMode, defaultVolumeMode)
	var out []projectedFile
	for _, s := range src.Sources {
		switch {
		case s.ServiceAccountToken != nil:
			f, err := p.token(ctx, volume, s.ServiceAccountToken, mode)
			if err != nil {
				return nil, err
			}
			out = append(out, f)
		case s.ConfigMap != nil:
			files, err := p.configMapFiles(ctx, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional, src.DefaultMode)
			if err != nil {
				return nil, err
			}
			out = append(out, files...)
		case s.Secret != nil:
			files, err := p.secretFiles(ctx, s.Secret.Name, s.Secret.Items, s.Secret.Optional, src.DefaultMode)
			if err != nil {
				return nil, err
			}
			out = append(out, files...)
		case s.DownwardAPI != nil:
			files, err := p.downwardFiles(s.DownwardAPI.Items, src.DefaultMode)
			if err != nil {
				return nil, err
			}
			out = append(out, files...)
		default:
			return nil, fmt.Errorf("projected source not supported by the kubelet emulator")
		}
	}
	return out, nil
}

// token requests a service-account token for a projected source, as the
// kubelet's token manager does: for the pod's ServiceAccount, bound to the
// pod, with the source's audience (none: the apiserver's) and
// expirationSeconds (default 3600).
func (p *Pod) token(ctx context.Context, volume string, src *corev1.ServiceAccountTokenProjection, mode os.FileMode) (projectedFile, error) {
	sa := p.Pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	exp := int64(3600)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	var auds []string
	if src.Audience != "" {
		auds = []string{src.Audience}
	}
	tr, err := p.k.Client.CoreV1().ServiceAccounts(p.Pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         auds,
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Pod.Name, UID: p.Pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return projectedFile{}, fmt.Errorf("failed to fetch token: %w", err)
	}
	// The kubelet writes tokens 0600 when it will hand them to a user or
	// group (FsUser/fsGroup); SetVolumeOwnership later makes them
	// group-readable for fsGroup.
	fsUser := p.fsUser()
	if fsUser != nil || p.fsGroup() != nil {
		mode = 0o600
	}
	p.Tokens = append(p.Tokens, IssuedToken{
		Volume: volume, Path: src.Path, ServiceAccount: sa, Audiences: auds, ExpirationSeconds: exp,
		ExpirationTimestamp: tr.Status.ExpirationTimestamp.Time, BoundPodName: p.Pod.Name, PodUID: string(p.Pod.UID),
		Token: tr.Status.Token, FileMode: mode,
	})
	return projectedFile{path: src.Path, data: []byte(tr.Status.Token), mode: mode, uid: fsUser}, nil
}

// writeAtomicVolume writes a read-only volume (configMap, secret,
// downwardAPI, projected) and applies fsGroup ownership.
func (p *Pod) writeAtomicVolume(dir string, files []projectedFile) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		clean := path.Clean(f.path)
		if path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("invalid path %q", f.path)
		}
		target := filepath.Join(dir, filepath.FromSlash(clean))
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(target, f.data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(target, f.mode); err != nil {
			return err
		}
		if f.uid != nil && os.Geteuid() == 0 {
			if err := os.Lchown(target, int(*f.uid), -1); err != nil {
				return err
			}
		}
	}
	return p.applyFSGroup(dir, true)
}

// applyFSGroup is the kubelet's SetVolumeOwnership: with an fsGroup every
// file and directory gets group fsGroup and group access (read-only
// volumes: read; others: read-write), directories get setgid.
func (p *Pod) applyFSGroup(dir string, readOnly bool) error {
	g := p.fsGroup()
	if g == nil {
		return nil
	}
	if os.Geteuid() != 0 {
		// Only root may give files to an arbitrary group.
		return nil
	}
	mask := os.FileMode(0o660)
	if readOnly {
		mask = 0o440
	}
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		if err := os.Lchown(path, -1, int(*g)); err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := info.Mode().Perm() | mask
		if d.IsDir() {
			mode |= os.ModeSetgid | 0o110
		}
		return os.Chmod(path, mode|info.Mode()&os.ModeSticky)
	})
}

// ------------------------------------------------------------ container roots

func (p *Pod) setUpRoot(c *corev1.Container) error {
	root := filepath.Join(p.Dir, "c", c.Name)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	p.roots[c.Name] = root
	img, err := p.image(c)
	if err != nil {
		return err
	}
	if img != nil {
		for _, f := range img.Files {
			if err := layOut(root, f); err != nil {
				return fmt.Errorf("image %s: %s: %w", c.Image, f.Path, err)
			}
		}
	} else {
		img = &Image{}
	}
	// The runtime creates the working directory if the image lacks it.
	if err := os.MkdirAll(p.HostPath(c.Name, workingDir(c, img)), 0o755); err != nil {
		return err
	}
	// Mounts, shortest path first so that nested mounts land inside the
	// outer volume, as the kubelet creates their mount points there.
	mounts := append([]corev1.VolumeMount(nil), c.VolumeMounts...)
	sort.SliceStable(mounts, func(i, j int) bool { return len(mounts[i].MountPath) < len(mounts[j].MountPath) })
	for _, m := range mounts {
		vdir, ok := p.volumes[m.Name]
		if !ok {
			return fmt.Errorf("volumeMount %q names no volume", m.Name)
		}
		target := vdir
		if m.SubPath != "" {
			target = filepath.Join(vdir, filepath.FromSlash(m.SubPath))
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		}
		link := p.HostPath(c.Name, m.MountPath)
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return err
		}
		if fi, err := os.Lstat(link); err == nil {
			if fi.IsDir() {
				// An image directory at the mount point is hidden by the mount.
				if err := os.RemoveAll(link); err != nil {
					return err
				}
			} else {
				return fmt.Errorf("mount point %s exists", m.MountPath)
			}
		}
		if err := os.Symlink(target, link); err != nil {
			return err
		}
	}
	// The image's own directories are read-only, as with
	// readOnlyRootFilesystem (and for a non-root user anyway): only
	// volumes are writable.
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.Chmod(path, 0o555)
		}
		return nil
	})
}

func (p *Pod) image(c *corev1.Container) (*Image, error) {
	if p.k.Images == nil {
		return nil, nil
	}
	return p.k.Images(c.Image)
}

func layOut(root string, f File) error {
	if !path.IsAbs(f.Path) {
		return errors.New("image file paths must be absolute")
	}
	dst := filepath.Join(root, filepath.FromSlash(path.Clean(f.Path)))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	mode := f.Mode
	if mode == 0 {
		mode = 0o644
		if f.Executable {
			mode = 0o755
		}
	}
	if f.Source != "" {
		return LinkOrCopy(f.Source, dst, mode)
	}
	if err := os.WriteFile(dst, f.Data, mode); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}

// Cleanup removes the pod's directory. Processes must have been stopped.
func (p *Pod) Cleanup() error {
	if p == nil || p.Dir == "" {
		return nil
	}
	// Read-only image directories must become writable to be removed.
	_ = filepath.WalkDir(p.Dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(path, 0o755)
		}
		return nil
	})
	return os.RemoveAll(p.Dir)
}

// -------------------------------------------------------------------- env

// fieldValue resolves a downward-API field path.
func (p *Pod) fieldValue(fp string, volume bool) (string, error) {
	pod := p.Pod
	if strings.HasPrefix(fp, "metadata.labels['") || strings.HasPrefix(fp, "metadata.annotations['") {
		prefix, key, ok := strings.Cut(fp, "['")
		if !ok || !strings.HasSuffix(key, "']") {
			return "", fmt.Errorf("invalid fieldPath %q", fp)
		}
		key = strings.TrimSuffix(key, "']")
		if prefix == "metadata.labels" {
			return pod.Labels[key], nil
		}
		return pod.Annotations[key], nil
	}
	switch fp {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		if !volume {
			return "", fmt.Errorf("fieldPath %q is only supported in volumes", fp)
		}
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		if !volume {
			return "", fmt.Errorf("fieldPath %q is only supported in volumes", fp)
		}
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	case "status.hostIPs":
		ips := make([]string, len(pod.Status.HostIPs))
		for i, ip := range pod.Status.HostIPs {
			ips[i] = ip.IP
		}
		return strings.Join(ips, ","), nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.podIPs":
		ips := make([]string, len(pod.Status.PodIPs))
		for i, ip := range pod.Status.PodIPs {
			ips[i] = ip.IP
		}
		return strings.Join(ips, ","), nil
	}
	return "", fmt.Errorf("fieldPath %q is not supported", fp)
}

// formatMap is the downward API's format for labels and annotations: one
// key="value" line per entry (value quoted as in Go), sorted by key.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	lines := make([]string, len(keys))
	for i, k := range keys {
		lines[i] = k + "=" + strconv.Quote(m[k])
	}
	return strings.Join(lines, "\n")
}

// resourceValue resolves a resourceFieldRef: the container's limit (the
// node's allocatable when unset) or request, divided by the divisor and
// rounded up, as the kubelet does.
func (p *Pod) resourceValue(c *corev1.Container, ref *corev1.ResourceFieldSelector) (string, error) {
	var q resource.Quantity
	name, isLimit := strings.CutPrefix(ref.Resource, "limits.")
	if !isLimit {
		var ok bool
		name, ok = strings.CutPrefix(ref.Resource, "requests.")
		if !ok {
			return "", fmt.Errorf("resource %q is not supported", ref.Resource)
		}
	}
	rn := corev1.ResourceName(name)
	if rn != corev1.ResourceCPU && rn != corev1.ResourceMemory && rn != corev1.ResourceEphemeralStorage {
		return "", fmt.Errorf("resource %q is not supported", ref.Resource)
	}
	if isLimit {
		if v, ok := c.Resources.Limits[rn]; ok {
			q = v
		} else {
			q = p.k.NodeAllocatable[rn]
		}
	} else {
		if v, ok := c.Resources.Requests[rn]; ok {
			q = v
		} else if v, ok := c.Resources.Limits[rn]; ok {
			// The API server defaults requests to limits.
			q = v
		} else if rn == corev1.ResourceCPU {
			// An unset CPU request is reported as 0 and rounded up to 1.
			q = resource.Quantity{}
		}
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	if rn == corev1.ResourceCPU {
		v := (q.MilliValue() + divisor.MilliValue() - 1) / divisor.MilliValue()
		if v == 0 {
			v = 1 // the kubelet never reports 0 CPUs
		}
		return strconv.FormatInt(v, 10), nil
	}
	v := (q.Value() + divisor.Value() - 1) / divisor.Value()
	return strconv.FormatInt(v, 10), nil
}

// serviceEnv is what every container gets for the kubernetes Service.
func (p *Pod) serviceEnv() []corev1.EnvVar {
	host, port := p.k.APIServerHost, p.k.APIServerPort
	if host == "" {
		return nil
	}
	addr := "tcp://" + net.JoinHostPort(host, port)
	return []corev1.EnvVar{
		{Name: "KUBERNETES_SERVICE_HOST", Value: host},
		{Name: "KUBERNETES_SERVICE_PORT", Value: port},
		{Name: "KUBERNETES_SERVICE_PORT_HTTPS", Value: port},
		{Name: "KUBERNETES_PORT", Value: addr},
		{Name: "KUBERNETES_PORT_443_TCP", Value: addr},
		{Name: "KUBERNETES_PORT_443_TCP_PROTO", Value: "tcp"},
		{Name: "KUBERNETES_PORT_443_TCP_PORT", Value: port},
		{Name: "KUBERNETES_PORT_443_TCP_ADDR", Value: host},
	}
}

// Env resolves a container's environment as the kubelet would, without
// any rewriting: service variables, envFrom, then env in order, each value
// expanded against the variables before it.
func (p *Pod) Env(ctx context.Context, c *corev1.Container) ([]corev1.EnvVar, error) {
	var out []corev1.EnvVar
	vals := map[string]string{}
	set := func(name, value string) {
		if _, ok := vals[name]; ok {
			for i := range out {
				if out[i].Name == name {
					out[i].Value = value
				}
			}
		} else {
			out = append(out, corev1.EnvVar{Name: name, Value: value})
		}
		vals[name] = value
	}
	for _, e := range p.serviceEnv() {
		set(e.Name, e.Value)
	}
	for _, ef := range c.EnvFrom {
		var data map[string]string
		switch {
		case ef.ConfigMapRef != nil:
			cm, err := p.k.Client.CoreV1().ConfigMaps(p.Pod.Namespace).Get(ctx, ef.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
					continue
				}
				return nil, err
			}
			data = cm.Data
		case ef.SecretRef != nil:
			s, err := p.k.Client.CoreV1().Secrets(p.Pod.Namespace).Get(ctx, ef.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
					continue
				}
				return nil, err
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			set(ef.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		var v string
		switch {
		case e.ValueFrom == nil:
			v = Expand(e.Value, vals)
		case e.ValueFrom.FieldRef != nil:
			fv, err := p.fieldValue(e.ValueFrom.FieldRef.FieldPath, false)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			v = fv
		case e.ValueFrom.ResourceFieldRef != nil:
			target := c
			if n := e.ValueFrom.ResourceFieldRef.ContainerName; n != "" {
				var err error
				if target, err = p.Container(n); err != nil {
					return nil, fmt.Errorf("env %s: %w", e.Name, err)
				}
			}
			rv, err := p.resourceValue(target, e.ValueFrom.ResourceFieldRef)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			v = rv
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, err := p.k.Client.CoreV1().ConfigMaps(p.Pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			val, ok := "", false
			if err == nil {
				val, ok = cm.Data[ref.Key]
			}
			if (err != nil && !apierrors.IsNotFound(err)) || (!ok && (ref.Optional == nil || !*ref.Optional)) {
				return nil, fmt.Errorf("env %s: configmap %s key %s: %v", e.Name, ref.Name, ref.Key, err)
			}
			if !ok {
				continue
			}
			v = val
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s, err := p.k.Client.CoreV1().Secrets(p.Pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			var val []byte
			ok := false
			if err == nil {
				val, ok = s.Data[ref.Key]
			}
			if (err != nil && !apierrors.IsNotFound(err)) || (!ok && (ref.Optional == nil || !*ref.Optional)) {
				return nil, fmt.Errorf("env %s: secret %s key %s: %v", e.Name, ref.Name, ref.Key, err)
			}
			if !ok {
				continue
			}
			v = string(val)
		default:
			return nil, fmt.Errorf("env %s: valueFrom source not supported", e.Name)
		}
		set(e.Name, v)
	}
	return out, nil
}

// Expand replaces $(VAR) references with values from vals, as Kubernetes
// does for env values, command and args: $$ is a literal $, and references
// to unknown variables (or malformed ones) are left as written.
func Expand(s string, vals map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := vals[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// ---------------------------------------------------------------- processes

// StartOptions configure Start.
type StartOptions struct {
	// EnvRewrite may change a resolved env value; it returns the new value
	// and why (an empty reason keeps the value). Every change is recorded.
	EnvRewrite func(name, value string) (newValue, why string)
	// PortMap maps container ports to host ports for probes and handlers.
	PortMap map[int32]int
	// Output, if set, also receives the process's output.
	Output io.Writer
}

// Process is a running container process.
type Process struct {
	Container string
	Cmd       *exec.Cmd
	// Started is when the process was started.
	Started time.Time
	// Argv and Env are what was executed (host path of the binary first).
	Argv []string
	Env  []string
	// Rewrites lists every change from the pod spec.
	Rewrites []Rewrite
	LogPath  string

	done    chan struct{}
	waitErr error
	logFile *os.File
}

// containerContext is everything needed to run something "in" a container.
type containerContext struct {
	c        *corev1.Container
	img      *Image
	env      []string          // NAME=value, image env underneath
	vals     map[string]string // all of env
	specVals map[string]string // the pod spec's env only ($(VAR) expansion)
	dir      string
	cred     *syscall.Credential
	rewrites []Rewrite
}

func (p *Pod) context(ctx context.Context, name string, rewrite func(name, value string) (string, string)) (*containerContext, error) {
	c, err := p.Container(name)
	if err != nil {
		return nil, err
	}
	img, err := p.image(c)
	if err != nil {
		return nil, err
	}
	if img == nil {
		img = &Image{}
	}
	resolved, err := p.Env(ctx, c)
	if err != nil {
		return nil, err
	}
	cc := &containerContext{c: c, img: img, vals: map[string]string{}, specVals: map[string]string{}}
	wd := workingDir(c, img)
	for i := range resolved {
		e := &resolved[i]
		if to, why := p.relativePath(c, wd, e.Value); why != "" {
			cc.rewrites = append(cc.rewrites, Rewrite{Container: c.Name, What: "env " + e.Name, From: e.Value, To: to, Why: why})
			e.Value = to
		}
		if rewrite != nil {
			if to, why := rewrite(e.Name, e.Value); why != "" && to != e.Value {
				cc.rewrites = append(cc.rewrites, Rewrite{Container: c.Name, What: "env " + e.Name, From: e.Value, To: to, Why: why})
				e.Value = to
			}
		}
	}
	// The runtime puts the image's ENV underneath the container's env.
	seen := map[string]bool{}
	for _, e := range resolved {
		seen[e.Name] = true
	}
	for _, kv := range img.Env {
		n, v, _ := strings.Cut(kv, "=")
		if !seen[n] {
			cc.env = append(cc.env, kv)
			cc.vals[n] = v
		}
	}
	for _, e := range resolved {
		cc.env = append(cc.env, e.Name+"="+e.Value)
		cc.vals[e.Name] = e.Value
		cc.specVals[e.Name] = e.Value
	}
	cc.dir = p.HostPath(name, wd)
	if p.UIDEmulated {
		uid, gid := int64(0), int64(0)
		if u := effectiveUser(p.Pod, c); u != nil {
			uid = *u
		}
		if g := effectiveGroup(p.Pod, c); g != nil {
			gid = *g
		}
		cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if sc := p.Pod.Spec.SecurityContext; sc != nil {
			if sc.FSGroup != nil {
				cred.Groups = append(cred.Groups, uint32(*sc.FSGroup))
			}
			for _, g := range sc.SupplementalGroups {
				cred.Groups = append(cred.Groups, uint32(g))
			}
		}
		cc.cred = cred
	}
	return cc, nil
}

// workingDir is the container's working directory: its workingDir, else
// the image's WORKDIR, else "/".
func workingDir(c *corev1.Container, img *Image) string {
	wd := img.WorkingDir
	if c.WorkingDir != "" {
		wd = c.WorkingDir
	}
	if wd == "" {
		wd = "/"
	}
	return path.Clean("/" + wd)
}

// relativePath rewrites an absolute path that lies inside one of the
// container's volume mounts to the same path relative to the container's
// working directory wd: inside the container both name the same file, and
// on the host (where the process runs in the emulated wd) the relative one
// resolves through the mount.
func (p *Pod) relativePath(c *corev1.Container, wd, v string) (string, string) {
	if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, " \t\n:,;=") {
		return v, ""
	}
	clean := path.Clean(v)
	for _, m := range c.VolumeMounts {
		mp := path.Clean(m.MountPath)
		if clean == mp || strings.HasPrefix(clean, mp+"/") {
			rel, err := filepath.Rel(wd, clean)
			if err != nil {
				return v, ""
			}
			rel = filepath.ToSlash(rel)
			if !strings.HasPrefix(rel, "../") {
				rel = "./" + rel
			}
			return rel, fmt.Sprintf("absolute path in volume mount %s (%s); the same path relative to the working directory %s, which the process runs in", m.Name, m.MountPath, wd)
		}
	}
	return v, ""
}

// argv applies the container's command/args over the image's entrypoint
// and cmd, expands $(VAR) and resolves the executable inside the root.
func (p *Pod) argv(cc *containerContext, command, args []string) ([]string, error) {
	var argv []string
	switch {
	case len(command) > 0:
		argv = append(append(argv, command...), args...)
	case len(args) > 0:
		argv = append(append(argv, cc.img.Entrypoint...), args...)
	default:
		argv = append(append(argv, cc.img.Entrypoint...), cc.img.Cmd...)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("container %s: no command and the image has no entrypoint", cc.c.Name)
	}
	// Only the pod spec's env (with the service variables) takes part in
	// $(VAR) expansion, not the image's ENV; values are as rewritten.
	for i := range argv {
		argv[i] = Expand(argv[i], cc.specVals)
	}
	bin, err := p.lookPath(cc, argv[0])
	if err != nil {
		return nil, err
	}
	argv[0] = bin
	return argv, nil
}

func (p *Pod) lookPath(cc *containerContext, name string) (string, error) {
	root := p.roots[cc.c.Name]
	check := func(ctrPath string) (string, bool) {
		host := filepath.Join(root, filepath.FromSlash(path.Clean(ctrPath)))
		fi, err := os.Stat(host)
		if err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return host, true
		}
		return "", false
	}
	if strings.Contains(name, "/") {
		ctr := name
		if !path.IsAbs(ctr) {
			ctr = path.Join("/", ctr)
		}
		if h, ok := check(ctr); ok {
			return h, nil
		}
		return "", fmt.Errorf("container %s: executable %s not found in the container's filesystem", cc.c.Name, name)
	}
	pathVar := cc.vals["PATH"]
	if pathVar == "" {
		pathVar = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	for _, d := range strings.Split(pathVar, ":") {
		if h, ok := check(path.Join(d, name)); ok {
			return h, nil
		}
	}
	return "", fmt.Errorf("container %s: executable %q not found in $PATH (%s) of the container's filesystem", cc.c.Name, name, pathVar)
}

func (cc *containerContext) command(argv []string) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = cc.dir
	cmd.Env = append([]string(nil), cc.env...)
	// Own process group, so the container's processes can be stopped
	// together; credentials of the container's user.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cc.cred}
	return cmd
}

// Start runs the container's command with its resolved environment.
func (p *Pod) Start(ctx context.Context, container string, opts StartOptions) (*Process, error) {
	cc, err := p.context(ctx, container, opts.EnvRewrite)
	if err != nil {
		return nil, err
	}
	argv, err := p.argv(cc, cc.c.Command, cc.c.Args)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.ports[container] = opts.PortMap
	p.mu.Unlock()
	logPath := filepath.Join(p.Dir, "logs", container+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := cc.command(argv)
	var out io.Writer = logFile
	if opts.Output != nil {
		out = io.MultiWriter(logFile, opts.Output)
	}
	cmd.Stdout, cmd.Stderr = out, out
	proc := &Process{Container: container, Cmd: cmd, Argv: argv, Env: cmd.Env, Rewrites: cc.rewrites,
		LogPath: logPath, done: make(chan struct{}), logFile: logFile}
	proc.Started = time.Now()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting container %s: %w", container, err)
	}
	go func() {
		proc.waitErr = cmd.Wait()
		close(proc.done)
	}()
	return proc, nil
}

// Command returns a command that runs hostBinary "inside" the container:
// its working directory, environment (as rewritten by rewrite) and user.
// It is how a test looks at the pod from a container that it does not run
// itself (e.g. the gateway's Envoy).
func (p *Pod) Command(ctx context.Context, container, hostBinary string, args []string, rewrite func(name, value string) (string, string)) (*exec.Cmd, []Rewrite, error) {
	cc, err := p.context(ctx, container, rewrite)
	if err != nil {
		return nil, nil, err
	}
	return cc.command(append([]string{hostBinary}, args...)), cc.rewrites, nil
}

// Done is closed when the process has exited.
func (pr *Process) Done() <-chan struct{} { return pr.done }

// Exited reports whether the process has exited, and its error.
func (pr *Process) Exited() (bool, error) {
	select {
	case <-pr.done:
		return true, pr.waitErr
	default:
		return false, nil
	}
}

// Log returns the process's output so far.
func (pr *Process) Log() string {
	b, _ := os.ReadFile(pr.LogPath)
	return string(b)
}

// Stop sends SIGTERM and, after grace, SIGKILL to the process group (the
// process and everything it started). It returns the exit error.
func (pr *Process) Stop(grace time.Duration) error {
	pgid := pr.Cmd.Process.Pid
	_ = pr.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-pr.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-pr.done
	}
	// Children the process left behind (it exited, they did not).
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	if pr.logFile != nil {
		_ = pr.logFile.Close()
		pr.logFile = nil
	}
	return pr.waitErr
}

// ------------------------------------------------------------ probes, hooks

// HandlerResult is the outcome of a probe or lifecycle handler.
type HandlerResult struct {
	Success bool
	// Detail is the exec output, or the HTTP status and body, or the error.
	Detail   string
	Rewrites []Rewrite
}

// RunHandler runs a probe handler (exec, httpGet, tcpSocket) for the
// container, with the port map of its Start.
func (p *Pod) RunHandler(ctx context.Context, container string, h corev1.ProbeHandler, timeout time.Duration) (HandlerResult, error) {
	c, err := p.Container(container)
	if err != nil {
		return HandlerResult{}, err
	}
	p.mu.Lock()
	ports := p.ports[container]
	p.mu.Unlock()
	mapPort := func(port intstr.IntOrString) (int, error) {
		var n int32
		if port.Type == intstr.String {
			for _, cp := range c.Ports {
				if cp.Name == port.StrVal {
					n = cp.ContainerPort
				}
			}
			if n == 0 {
				return 0, fmt.Errorf("container %s has no port named %q", container, port.StrVal)
			}
		} else {
			n = port.IntVal
		}
		if hp, ok := ports[n]; ok {
			return hp, nil
		}
		return int(n), nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case h.Exec != nil:
		cc, err := p.context(ctx, container, nil)
		if err != nil {
			return HandlerResult{}, err
		}
		command := append([]string(nil), h.Exec.Command...)
		var rw []Rewrite
		for i, a := range command {
			for from, to := range ports {
				for _, host := range []string{"localhost", "127.0.0.1", "[::1]"} {
					old := fmt.Sprintf("%s:%d", host, from)
					if strings.Contains(a, old) {
						na := strings.ReplaceAll(a, old, fmt.Sprintf("%s:%d", host, to))
						rw = append(rw, Rewrite{Container: container, What: "exec handler argument", From: a, To: na,
							Why: fmt.Sprintf("container port %d is host port %d here", from, to)})
						a = na
					}
				}
			}
			command[i] = a
		}
		// An exec handler runs the command as given: no image entrypoint.
		argv, err := p.argv(cc, command, nil)
		if err != nil {
			return HandlerResult{}, err
		}
		cmd := cc.command(argv)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			return HandlerResult{}, err
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err = <-done:
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			killed := <-done
			return HandlerResult{Detail: fmt.Sprintf("timed out (%v): %s", killed, out.String()), Rewrites: rw}, nil
		}
		return HandlerResult{Success: err == nil, Detail: strings.TrimSpace(out.String()), Rewrites: rw}, nil
	case h.HTTPGet != nil:
		port, err := mapPort(h.HTTPGet.Port)
		if err != nil {
			return HandlerResult{}, err
		}
		host := h.HTTPGet.Host
		if host == "" {
			host = p.Pod.Status.PodIP
		}
		scheme := strings.ToLower(string(h.HTTPGet.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		url := scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port)) + h.HTTPGet.Path
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return HandlerResult{}, err
		}
		for _, hd := range h.HTTPGet.HTTPHeaders {
			req.Header.Add(hd.Name, hd.Value)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return HandlerResult{Detail: err.Error()}, nil
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		ok := resp.StatusCode >= 200 && resp.StatusCode < 400
		return HandlerResult{Success: ok, Detail: fmt.Sprintf("GET %s: %d %s", url, resp.StatusCode, strings.TrimSpace(string(body)))}, nil
	case h.TCPSocket != nil:
		port, err := mapPort(h.TCPSocket.Port)
		if err != nil {
			return HandlerResult{}, err
		}
		host := h.TCPSocket.Host
		if host == "" {
			host = p.Pod.Status.PodIP
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return HandlerResult{Detail: err.Error()}, nil
		}
		conn.Close()
		return HandlerResult{Success: true, Detail: "connected"}, nil
	}
	return HandlerResult{}, errors.New("handler has no exec, httpGet or tcpSocket")
}

// LifecycleAsProbe converts a lifecycle handler (postStart, preStop) to
// the probe handler RunHandler takes; sleep handlers are not supported.
func LifecycleAsProbe(h *corev1.LifecycleHandler) (corev1.ProbeHandler, error) {
	if h == nil {
		return corev1.ProbeHandler{}, errors.New("no handler")
	}
	if h.Sleep != nil {
		return corev1.ProbeHandler{}, errors.New("sleep handlers are not supported")
	}
	return corev1.ProbeHandler{Exec: h.Exec, HTTPGet: h.HTTPGet, TCPSocket: h.TCPSocket}, nil
}

// LinkOrCopy puts src at dst (which must not exist) with mode: a hard link
// where src and dst share a file system, else a copy.
func LinkOrCopy(src, dst string, mode os.FileMode) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}
