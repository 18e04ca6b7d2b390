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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
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
	Event          string    `json:"event"` // start, cert, rootca, error, stream-end
	Time           time.Time `json:"time"`
	UID            int       `json:"uid"`
	Groups         []int     `json:"groups"`
	PresentAtStart *bool     `json:"presentAtStart"`
	Serial         string    `json:"serial"`
	NotAfter       time.Time `json:"notAfter"`
	SPIFFE         string    `json:"spiffe"`
	Error          string    `json:"error"`
	// LogTime is the runtime's timestamp of the line.
	LogTime time.Time `json:"-"`
}

// CheckerEvents picks gateway-checker's report lines out of a log.
func CheckerEvents(lines []LogLine) ([]CheckerEvent, error) {
	var evs []CheckerEvent
	for _, l := range lines {
		raw, ok := strings.CutPrefix(l.Text, "CHECK ")
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
