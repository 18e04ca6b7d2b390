package fastpath

import (
	"encoding/json"
	"slices"

	"gomodules.xyz/jsonpatch/v2"
)

// MarshalPatch encodes JSON Patch operations. Values the engine pre-encoded
// (json.RawMessage, from its encode cache) are copied as they are, without
// the re-validation and compaction encoding/json applies to them; the
// result decodes to the same operations as json.Marshal(ops).
func MarshalPatch(ops []jsonpatch.Operation) ([]byte, error) {
	return AppendPatch(nil, ops)
}

// AppendPatch is MarshalPatch appending to dst (e.g. a pooled buffer).
func AppendPatch(dst []byte, ops []jsonpatch.Operation) ([]byte, error) {
	size := 2
	for _, op := range ops {
		if raw, ok := op.Value.(json.RawMessage); ok {
			size += len(raw)
		}
		size += len(op.Path) + 48
	}
	b := slices.Grow(dst, size)
	b = append(b, '[')
	for i, op := range ops {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"op":`...)
		b = appendJSONString(b, op.Operation)
		b = append(b, `,"path":`...)
		b = appendJSONString(b, op.Path)
		if op.Operation != "remove" {
			b = append(b, `,"value":`...)
			switch v := op.Value.(type) {
			case json.RawMessage:
				b = append(b, v...)
			case string:
				b = appendJSONString(b, v)
			default:
				raw, err := json.Marshal(v)
				if err != nil {
					return nil, err
				}
				b = append(b, raw...)
			}
		}
		b = append(b, '}')
	}
	return append(b, ']'), nil
}

// appendJSONString appends s as a JSON string; plain ASCII, the common
// case for paths and annotation values, takes the fast path.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= 0x7f || c == '<' || c == '>' || c == '&' {
			raw, _ := json.Marshal(s)
			return append(b, raw...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
