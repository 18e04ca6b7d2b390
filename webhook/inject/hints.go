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
// label (a member of a "labels" object) whose name is a profile's
// selector key and whose string value is one the selector accepts (any
// value where the selector does not pin one). A webhook uses them only to choose the order of its decoding work
// (partial decode first, or straight to the full pod); decisions never
// depend on them.
type hints struct {
	once sync.Once
	// prefix is `sds-injector.io/`, found right after a '"' (a key or a
	// value beginning with it).
	prefix []byte
	// keys maps a selector key to the values it accepts; a nil set
	// accepts any value.
	keys map[string]map[string]bool
}

// nameSeparator ends a member name in compact JSON; labelsMember opens a
// labels object (without its leading quote, so that bytes.Index skips on
// 'l', not on '"', the most frequent byte in JSON).
var (
	nameSeparator = []byte(`":`)
	labelsMember  = []byte(`labels":{`)
)

// mayBeGateway reports whether raw contains a hint. False means the pod is
// certainly not a gateway candidate; true means it may be.
//
// Profiles select pods by their labels, so only the members of "labels"
// objects are looked at (the pod's, and any other object's: more than
// needed, never less): each name is looked up in the profiles' selector
// keys, and its string value in the values the key accepts. This replaced
// a bytes.Contains of every hint over the whole review, which on a 5 KB
// review cost about as much as decoding it (each hint starts with '"',
// which defeats bytes.Index's first-byte skipping).
func (s *Settings) mayBeGateway(raw []byte) bool {
	if s.hints == nil {
		return true
	}
	h := s.hints
	h.once.Do(func() { h.prefix, h.keys = s.buildHints() })
	if hasQuoted(raw, h.prefix) {
		return true
	}
	for i := 0; ; {
		j := bytes.Index(raw[i:], labelsMember)
		if j < 0 {
			return false
		}
		j += i
		i = j + len(labelsMember)
		if j == 0 || raw[j-1] != '"' {
			continue
		}
		end := i + objectEnd(raw[i:])
		if h.anyMember(raw[i:end]) {
			return true
		}
		i = end
	}
}

// hasQuoted reports whether s occurs in raw right after a '"' (searched
// without the quote, which bytes.Index would otherwise skip on).
func hasQuoted(raw, s []byte) bool {
	for i := 0; ; {
		j := bytes.Index(raw[i:], s)
		if j < 0 {
			return false
		}
		if j += i; j > 0 && raw[j-1] == '"' {
			return true
		}
		i = j + 1
	}
}

// objectEnd is the index of the '}' that closes the object whose members
// start obj (len(obj) if none), skipping strings and nested values.
func objectEnd(obj []byte) int {
	depth := 0
	for i := 0; i < len(obj); i++ {
		switch obj[i] {
		case '"':
			for i++; i < len(obj) && obj[i] != '"'; i++ {
				if obj[i] == '\\' {
					i++
				}
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i
			}
			depth--
		}
	}
	return len(obj)
}

// anyMember reports whether a member of the object body obj is a hint.
func (h *hints) anyMember(obj []byte) bool {
	for i := 0; ; {
		j := bytes.Index(obj[i:], nameSeparator)
		if j < 0 {
			return false
		}
		j += i
		i = j + len(nameSeparator)
		k := bytes.LastIndexByte(obj[:j], '"')
		if k < 0 {
			continue
		}
		values, ok := h.keys[string(obj[k+1:j])]
		if !ok {
			continue
		}
		if values == nil {
			return true
		}
		if i < len(obj) && obj[i] == '"' {
			if end := bytes.IndexByte(obj[i+1:], '"'); end >= 0 && values[string(obj[i+1:i+1+end])] {
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
	return []byte(inner(Prefix)), keys
}
