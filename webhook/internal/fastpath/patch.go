package fastpath

import (
	"encoding/json"
	"slices"
	"unicode/utf8"

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
		switch raw := op.Value.(type) {
		case json.RawMessage:
			size += len(raw)
		case *json.RawMessage:
			size += len(*raw)
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
		b = AppendJSONString(b, op.Operation)
		b = append(b, `,"path":`...)
		b = AppendJSONString(b, op.Path)
		if op.Operation != "remove" {
			b = append(b, `,"value":`...)
			switch v := op.Value.(type) {
			case json.RawMessage:
				b = append(b, v...)
			case *json.RawMessage:
				b = append(b, *v...)
			case string:
				b = AppendJSONString(b, v)
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

// AppendJSONString appends s as a JSON string, escaped exactly as
// encoding/json escapes it (HTML characters, U+2028/U+2029 and invalid
// UTF-8 included; TestAppendJSONStringMatchesEncodingJSON holds it to
// that): without reflection or a temporary buffer, as the status
// annotation, which holds JSON, is on every injection.
func AppendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
