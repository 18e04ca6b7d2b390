package inject

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
)

// encodedCache memoises the JSON of values that depend only on the
// settings and the per-pod parameters (the agent container, the volumes):
// encoding a container is most of the cost of a patch, and every pod of a
// gateway Deployment needs the same bytes. It is internal to Settings and
// changes no result.
type encodedCache struct {
	mu      sync.RWMutex
	m       map[string]json.RawMessage
	volumes map[string][]wantedVolume
}

// maxEncodedCache bounds the cache; it holds one entry per distinct
// (parameters, workload) pair, so it is only reached by pathological churn,
// and is then simply emptied.
const maxEncodedCache = 4096

func (c *encodedCache) get(key string, build func() any) json.RawMessage {
	c.mu.RLock()
	v, ok := c.m[key]
	c.mu.RUnlock()
	if ok {
		return v
	}
	raw, err := json.Marshal(build())
	if err != nil {
		// Only Kubernetes API types and strings are encoded here.
		panic(fmt.Sprintf("encoding %s: %v", key, err))
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxEncodedCache {
		c.m = make(map[string]json.RawMessage)
	}
	c.m[key] = raw
	c.mu.Unlock()
	return raw
}

// wantedVolumes memoises volumesFor per parameters; callers must not modify
// the returned slice.
func (c *encodedCache) wantedVolumes(key string, build func() []wantedVolume) []wantedVolume {
	c.mu.RLock()
	v, ok := c.volumes[key]
	c.mu.RUnlock()
	if ok {
		return v
	}
	v = build()
	for i := range v {
		raw, err := json.Marshal(&v[i].volume)
		if err != nil {
			// Only Kubernetes API types are encoded here.
			panic(fmt.Sprintf("encoding volume %s: %v", v[i].volume.Name, err))
		}
		v[i].json = raw
	}
	c.mu.Lock()
	if c.volumes == nil || len(c.volumes) >= maxEncodedCache {
		c.volumes = make(map[string][]wantedVolume)
	}
	c.volumes[key] = v
	c.mu.Unlock()
	return v
}

// cacheKey identifies the parameters that shape the agent's spec.
func (p podParams) cacheKey() string {
	var b strings.Builder
	b.Grow(len(p.flavor) + len(p.version.raw) + len(p.image) + len(p.resourcesKey) + 16)
	b.WriteString(string(p.flavor))
	b.WriteByte('|')
	b.WriteString(p.version.raw)
	b.WriteByte('|')
	b.WriteString(p.image)
	if p.native {
		b.WriteString("|native")
	}
	if p.glooDropIn {
		b.WriteString("|gloo")
	}
	if p.resourcesKey != "" {
		b.WriteString(p.resourcesKey)
	} else {
		b.WriteString(resourcesKey(p.resources))
	}
	return b.String()
}

// resourcesKey is the agent resources' part of cacheKey. Settings keep
// it for their own resources, so that pods without resource overrides do
// not format quantities on every review.
func resourcesKey(r corev1.ResourceRequirements) string {
	var b strings.Builder
	for _, l := range []corev1.ResourceList{r.Requests, r.Limits} {
		b.WriteByte('|')
		names := make([]string, 0, len(l))
		for n := range l {
			names = append(names, string(n))
		}
		sort.Strings(names)
		for _, n := range names {
			q := l[corev1.ResourceName(n)]
			b.WriteString(n + "=" + q.String() + ",")
		}
	}
	return b.String()
}
