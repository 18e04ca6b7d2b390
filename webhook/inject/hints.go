package inject

import (
	"bytes"
	"encoding/json"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// hints are byte strings at least one of which appears in the compact JSON
// of any pod screenFields might not settle: a profile's "label":"value" pairs (or
// the label key where the selector does not pin a value) and this project's
// own prefix. A webhook uses them only to choose the order of its decoding
// work (partial decode first, or straight to the full pod); decisions never
// depend on them.
type hints struct {
	once sync.Once
	list [][]byte
}

// mayBeGateway reports whether raw (a pod or a review holding one, as the
// API server encodes it) contains any hint. False means the pod is
// certainly not a gateway candidate; true means it may be.
func (s *Settings) mayBeGateway(raw []byte) bool {
	if s.hints == nil {
		return true
	}
	s.hints.once.Do(func() { s.hints.list = s.buildHints() })
	for _, h := range s.hints.list {
		if bytes.Contains(raw, h) {
			return true
		}
	}
	return false
}

func (s *Settings) buildHints() [][]byte {
	quote := func(v string) string {
		b, _ := json.Marshal(v)
		return string(b)
	}
	list := [][]byte{[]byte(quote(Prefix)[:len(quote(Prefix))-1])} // "sds-injector.io/ as a key prefix
	for _, p := range s.profiles {
		for k, v := range p.Selector.MatchLabels {
			list = append(list, []byte(quote(k)+":"+quote(v)))
		}
		for _, e := range p.Selector.MatchExpressions {
			if e.Operator == metav1.LabelSelectorOpIn {
				for _, v := range e.Values {
					list = append(list, []byte(quote(e.Key)+":"+quote(v)))
				}
				continue
			}
			list = append(list, []byte(quote(e.Key)))
		}
	}
	return list
}
