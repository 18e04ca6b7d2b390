package inject

import (
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// uniqueContainerNames reports an empty or repeated container name among
// the pod's init containers and containers.
func uniqueContainerNames(pod *corev1.Pod) error {
	seen := make(map[string]bool, len(pod.Spec.InitContainers)+len(pod.Spec.Containers))
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			name := cs[i].Name
			if name == "" {
				return errors.New("a container has no name: every container needs a unique name (the API server refuses this pod too)")
			}
			if seen[name] {
				return fmt.Errorf("two containers are named %q: container names must be unique (the API server refuses this pod too)", name)
			}
			seen[name] = true
		}
	}
	return nil
}
