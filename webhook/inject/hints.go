package inject

import (
	"bytes"
	"encoding/json"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// hints say which raw pods (or reviews holding one, in compact JSON as the
// API server encodes them) may be gateway candidates that screenFields
// cannot settle: those with this project's prefix anywhere, or with a
// member whose name is a profile's selector key and whose string value
// is one the selector accepts (any value where the selector does not pin
// one). A webhook uses them only to choose the order of its decoding work
// (partial decode first, or straight to the full pod); decisions never
// depend on them.
type hints struct {
	once sync.Once
	// prefix is `"sds-injector.io/`, as a key or value prefix.
	prefix []byte
	// keys maps a selector key to the values it accepts; a nil set
	// accepts any value.
	keys map[string]map[string]bool
}

// nameSeparator ends a member name in compact JSON.
var nameSeparator = []byte(`":`)

// mayBeGateway reports whether raw contains a hint. False means the pod is
// certainly not a gateway candidate; true means it may be.
//
// One pass over raw: every `":` ends a member name; the name and, where
// the key pins values, the string value after it are looked up. This
// replaced a bytes.Contains per hint, which on a 5 KB review cost about
// as much as decoding it (each hint starts with '"', the most frequent
// byte in JSON, which defeats bytes.Index's first-byte skipping).
func (s *Settings) mayBeGateway(raw []byte) bool {
	if s.hints == nil {
		return true
	}
	h := s.hints
	h.once.Do(func() { h.prefix, h.keys = s.buildHints() })
	if bytes.Contains(raw, h.prefix) {
		return true
	}
	for i := 0; ; {
		j := bytes.Index(raw[i:], nameSeparator)
		if j < 0 {
			return false
		}
		j += i
		i = j + len(nameSeparator)
		k := bytes.LastIndexByte(raw[:j], '"')
		if k < 0 {
			continue
		}
		values, ok := h.keys[string(raw[k+1:j])]
		if !ok {
			continue
		}
		if values == nil {
			return true
		}
		if i < len(raw) && raw[i] == '"' {
			if end := bytes.IndexByte(raw[i+1:], '"'); end >= 0 && values[string(raw[i+1:i+1+end])] {
				return true
			}
		}
	}
}

// buildHints lists the selector keys of every profile with the values
// they accept, in the form they take inside JSON strings (escaped as
// encoding/json escapes them).
func (s *Settings) buildHints() (prefix []byte, keys map[string]map[string]bool) {
	inner := func(v string) string {
		b, _ := json.Marshal(v)
		return string(b[1 : len(b)-1])
	}
	keys = map[string]map[string]bool{}
	accept := func(k string, v *string) {
		k = inner(k)
		if v == nil {
			keys[k] = nil
			return
		}
		set, seen := keys[k]
		if seen && set == nil {
			return // already accepts any value
		}
		if set == nil {
			set = map[string]bool{}
			keys[k] = set
		}
		set[inner(*v)] = true
	}
	for _, p := range s.profiles {
		for k, v := range p.Selector.MatchLabels {
			accept(k, &v)
		}
		for _, e := range p.Selector.MatchExpressions {
			if e.Operator == metav1.LabelSelectorOpIn {
				for _, v := range e.Values {
					accept(e.Key, &v)
				}
				continue
			}
			accept(e.Key, nil)
		}
	}
	return []byte(`"` + inner(Prefix)), keys
}
