package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/sds-injector/sds-injector/test/node/checkreport"
)

// WaitPod polls the pod ns/name until cond holds and returns its last
// state (nil if it was never read).
func (n *Node) WaitPod(ctx context.Context, ns, name string, timeout time.Duration, cond func(*corev1.Pod) bool) (*corev1.Pod, error) {
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := n.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		return cond(p), nil
	})
	return last, err
}

// StatusOf is the status of the (init or regular) container name of p.
func StatusOf(p *corev1.Pod, name string) *corev1.ContainerStatus {
	if p == nil {
		return nil
	}
	for _, list := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses} {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
	}
	return nil
}

// LogLine is one line of a container log, with the time the runtime
// stamped on it (nanosecond resolution).
type LogLine struct {
	Time time.Time
	Text string
}

// ContainerLog reads the log of one run (restart: 0 for the first) of a
// container of the pod ns/name with UID uid from the kubelet's podLogsDir
// (CRI format: "<RFC3339Nano> <stream> <P|F> <line>"). A container that
// has not started has no log: the error is then os.ErrNotExist's.
func (n *Node) ContainerLog(ns, name, uid, container string, restart int) ([]LogLine, error) {
	file := filepath.Join(n.PodLogsDir, ns+"_"+name+"_"+uid, container, fmt.Sprintf("%d.log", restart))
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []LogLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 4)
		if len(f) < 4 {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, f[0])
		if err != nil {
			continue
		}
		out = append(out, LogLine{Time: ts, Text: f[3]})
	}
	return out, sc.Err()
}

// CheckerEvent is one report line of gateway-checker (cmd/gateway-checker):
// "CHECK <json>" on its stdout.
type CheckerEvent struct {
	checkreport.Line
	// LogTime is the runtime's timestamp of the line.
	LogTime time.Time `json:"-"`
}

// CheckerEvents picks gateway-checker's report lines out of a log.
func CheckerEvents(lines []LogLine) ([]CheckerEvent, error) {
	var evs []CheckerEvent
	for _, l := range lines {
		raw, ok := strings.CutPrefix(l.Text, checkreport.Prefix)
		if !ok {
			continue
		}
		var e CheckerEvent
		if err := json.Unmarshal([]byte(raw), &e); err != nil {
			return nil, fmt.Errorf("gateway-checker line %q: %w", raw, err)
		}
		e.LogTime = l.Time
		evs = append(evs, e)
	}
	return evs, nil
}

// RotatedAfter is the first certificate event with another serial than
// prev's after prev, with no stream-end in between: a rotation pushed on the
// stream that delivered prev. Nil if there is none (yet).
func RotatedAfter(evs []CheckerEvent, prev *CheckerEvent) *CheckerEvent {
	seen := false
	for i := range evs {
		e := &evs[i]
		switch {
		case !seen:
			seen = e.Event == "cert" && e.Serial == prev.Serial && e.Time.Equal(prev.Time)
		case e.Event == "stream-end":
			return nil
		case e.Event == "cert" && e.Serial != prev.Serial:
			return e
		}
	}
	return nil
}

// PodReady reports whether p's PodReady condition is true.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Describe is p's status and the end of the kubelet's log, for failure
// messages.
func (n *Node) Describe(p *corev1.Pod) string {
	if p == nil {
		return "(no pod)"
	}
	b, _ := json.MarshalIndent(p.Status, "", "  ")
	return string(b) + "\nkubelet log (tail):\n" + n.LogTail("kubelet", 25)
}

// DeletePod deletes the pod ns/name with a 1 s grace period (absent is
// fine); WaitPodGone then waits until the apiserver no longer has it (the
// kubelet has stopped its containers).
func (n *Node) DeletePod(ctx context.Context, ns, name string) error {
	grace := int64(1)
	err := n.Clientset.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s/%s: %w", ns, name, err)
	}
	return nil
}

// WaitPodGone: see DeletePod.
func (n *Node) WaitPodGone(ctx context.Context, ns, name string) error {
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := n.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		return fmt.Errorf("pod %s/%s not gone: %w", ns, name, err)
	}
	return nil
}

// GatewayNamespace creates the namespace ns labelled sds-injection=label
// (the label the shipped namespace-mode webhook selects on) and its
// ServiceAccount sa (if not there yet).
func (n *Node) GatewayNamespace(ctx context.Context, ns, label, sa string) error {
	cs := n.Clientset
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
		Labels: map[string]string{"sds-injection": label}}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// CreateVolumeSources creates, in pod's namespace, the ConfigMaps and
// Secrets pod's volumes name (placeholders: gateway-checker does not read
// them).
func (n *Node) CreateVolumeSources(ctx context.Context, pod *corev1.Pod) error {
	for _, v := range pod.Spec.Volumes {
		var err error
		switch {
		case v.ConfigMap != nil:
			data := map[string]string{"placeholder": "not read by gateway-checker"}
			for _, it := range v.ConfigMap.Items {
				data[it.Key] = "{}"
			}
			_, err = n.Clientset.CoreV1().ConfigMaps(pod.Namespace).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: v.ConfigMap.Name}, Data: data}, metav1.CreateOptions{})
		case v.Secret != nil:
			data := map[string][]byte{"placeholder": []byte("not read by gateway-checker")}
			for _, it := range v.Secret.Items {
				data[it.Key] = []byte("x")
			}
			_, err = n.Clientset.CoreV1().Secrets(pod.Namespace).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: v.Secret.SecretName}, Data: data}, metav1.CreateOptions{})
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("placeholder for volume %s: %w", v.Name, err)
		}
	}
	return nil
}

// RunAsChecker changes a gateway pod as its controller wrote it into one
// the node runs with test-owned changes only: on this node, a 1 s grace
// period; the gateway container runs image (gateway-checker: same name,
// user and mounts) with env added, and every container loses Envoy's
// command, probes, hooks and ports; the other containers run pause. It
// returns the gateway container's runAsUser (from the container or the
// pod), -1 if neither sets one.
func (n *Node) RunAsChecker(pod *corev1.Pod, container, image string, env ...corev1.EnvVar) (uid int64) {
	pod.Spec.NodeName = n.Name
	grace := int64(1)
	pod.Spec.TerminationGracePeriodSeconds = &grace
	uid = -1
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		c.ReadinessProbe, c.LivenessProbe, c.StartupProbe, c.Lifecycle, c.Ports = nil, nil, nil, nil, nil
		c.Command, c.Args, c.ImagePullPolicy = nil, nil, corev1.PullNever
		if c.Name != container {
			c.Image, c.Command = PauseRef, []string{"/pause"}
			continue
		}
		c.Image = image
		c.Env = append(c.Env, env...)
		switch {
		case c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil:
			uid = *c.SecurityContext.RunAsUser
		case pod.Spec.SecurityContext != nil && pod.Spec.SecurityContext.RunAsUser != nil:
			uid = *pod.Spec.SecurityContext.RunAsUser
		}
	}
	return uid
}

// PodLogs reads the container logs of one pod (see ContainerLog).
type PodLogs struct {
	n             *Node
	NS, Name, UID string
}

// Logs is p's container logs.
func (n *Node) Logs(p *corev1.Pod) PodLogs {
	return PodLogs{n: n, NS: p.Namespace, Name: p.Name, UID: string(p.UID)}
}

// Lines is the log of one run (restart: 0 for the first) of container.
func (l PodLogs) Lines(container string, restart int) ([]LogLine, error) {
	return l.n.ContainerLog(l.NS, l.Name, l.UID, container, restart)
}

// FirstLine is the runtime's time of the first line container wrote.
func (l PodLogs) FirstLine(container string, restart int) (time.Time, error) {
	lines, err := l.Lines(container, restart)
	if err != nil {
		return time.Time{}, err
	}
	if len(lines) == 0 {
		return time.Time{}, fmt.Errorf("container %s wrote no log line", container)
	}
	return lines[0].Time, nil
}

// Events are the gateway-checker report lines of container's run restart.
func (l PodLogs) Events(container string, restart int) ([]CheckerEvent, error) {
	lines, err := l.Lines(container, restart)
	if err != nil {
		return nil, err
	}
	return CheckerEvents(lines)
}

// WaitEvents polls container's gateway-checker report until cond holds and
// returns it; on timeout the error lists the events so far.
func (l PodLogs) WaitEvents(ctx context.Context, container string, restart int, timeout time.Duration, cond func([]CheckerEvent) bool) ([]CheckerEvent, error) {
	var evs []CheckerEvent
	var lastErr error
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		evs, lastErr = l.Events(container, restart)
		return lastErr == nil && cond(evs), nil
	})
	if err != nil {
		var b strings.Builder
		for _, e := range evs {
			fmt.Fprintf(&b, "  %s %s serial=%s %s\n", e.Time.Format(time.RFC3339Nano), e.Event, e.Serial, e.Error)
		}
		return evs, fmt.Errorf("%w (last read error: %v); gateway-checker events so far:\n%s", err, lastErr, b.String())
	}
	return evs, nil
}

// CountEvents is how many of evs are of kind (start, cert, rootca, error,
// stream-end).
func CountEvents(evs []CheckerEvent, kind string) int {
	c := 0
	for _, e := range evs {
		if e.Event == kind {
			c++
		}
	}
	return c
}

// FirstEvent is the first of evs of kind, nil if none.
func FirstEvent(evs []CheckerEvent, kind string) *CheckerEvent {
	for i := range evs {
		if evs[i].Event == kind {
			return &evs[i]
		}
	}
	return nil
}

// JoinLines is the text of the last most lines, indented, for failure
// messages.
func JoinLines(lines []LogLine, most int) string {
	if len(lines) > most {
		lines = lines[len(lines)-most:]
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString("  " + l.Text + "\n")
	}
	return b.String()
}
