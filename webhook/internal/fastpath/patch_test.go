package fastpath

import (
	"encoding/json"
	"reflect"
	"testing"

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
