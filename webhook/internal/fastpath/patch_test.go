package fastpath

import (
	"encoding/json"
	"reflect"
	"testing"
	"testing/quick"

	"gomodules.xyz/jsonpatch/v2"
)

// TestMarshalPatchMatchesEncodingJSON: whatever the value's type, and
// whatever the strings hold, MarshalPatch decodes to what json.Marshal of
// the same operations decodes to.
func TestMarshalPatchMatchesEncodingJSON(t *testing.T) {
	ops := []jsonpatch.Operation{
		{Operation: "add", Path: "/metadata/annotations/a~1b", Value: "plain"},
		{Operation: "add", Path: "/metadata/annotations/x", Value: "quote \" backslash \\ <html> & \u2028 \x00 ünï"},
		{Operation: "add", Path: "/spec/containers/0", Value: json.RawMessage(`{"name":"sds-agent","image":"i"}`)},
		{Operation: "add", Path: "/spec/volumes/-", Value: &json.RawMessage{'{', '"', 'n', '"', ':', '1', '}'}},
		{Operation: "add", Path: "/spec/volumes", Value: []map[string]any{{"name": "v", "emptyDir": map[string]any{}}}},
		{Operation: "remove", Path: "/metadata/labels/gone"},
		{Operation: "add", Path: "/spec/n", Value: 3},
	}
	got, err := MarshalPatch(ops)
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("MarshalPatch wrote invalid JSON: %v\n%s", err, got)
	}
	_ = json.Unmarshal(want, &w)
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("MarshalPatch:\n%s\njson.Marshal:\n%s", got, want)
	}
	if _, err := MarshalPatch([]jsonpatch.Operation{{Operation: "add", Path: "/x", Value: func() {}}}); err == nil {
		t.Fatal("an unencodable value was encoded")
	}
}

// TestLookup: package inject is not imported here, so nothing is
// registered, and Lookup says so instead of returning a half engine.
func TestLookup(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Lookup without a registered engine did not panic")
		}
	}()
	Lookup[struct{}, struct{}]()
}

func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	check := func(s string) bool {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendJSONString(nil, s); string(got) != string(want) {
			t.Errorf("AppendJSONString(%q) = %s, encoding/json writes %s", s, got, want)
			return false
		}
		return true
	}
	for _, s := range []string{"", "plain", `{"version":1,"flavor":"sds-agent"}`, "quote \" backslash \\ <html> & \u2028 \u2029 \x00 \x1f \x7f ünï",
		"\b\f\n\r\t", "invalid \xff\xfe utf-8", "\xe2\x80", "trailing \xc3", "日本語", "emoji 😀"} {
		check(s)
	}
	// And random strings, bytes and runes alike.
	if err := quick.Check(check, &quick.Config{MaxCount: 20000}); err != nil {
		t.Error(err)
	}
	if err := quick.Check(func(b []byte) bool { return check(string(b)) }, &quick.Config{MaxCount: 20000}); err != nil {
		t.Error(err)
	}
}
