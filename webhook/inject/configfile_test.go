package inject

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func TestLoadConfigVersions(t *testing.T) {
	header := "apiVersion: " + ConfigAPIVersion + "\nkind: " + ConfigKind + "\n"
	cases := map[string]struct {
		data     string
		err      string // substring of the error; empty: accepted
		warnings int
	}{
		"current":                {data: header + "trustDomain: example.org\n"},
		"no header (deprecated)": {data: "trustDomain: example.org\n", warnings: 1},
		"empty file":             {data: ""},
		"unknown version":        {data: "apiVersion: sds-injector.io/v2\nkind: InjectorConfig\n", err: `apiVersion "sds-injector.io/v2" is not supported: supported: ` + ConfigAPIVersion},
		"core version":           {data: "apiVersion: v1\nkind: InjectorConfig\n", err: `apiVersion "v1" is not supported`},
		"unknown kind":           {data: "apiVersion: " + ConfigAPIVersion + "\nkind: ConfigMap\n", err: `kind "ConfigMap" is not supported: supported: InjectorConfig`},
		"version without kind":   {data: "apiVersion: " + ConfigAPIVersion + "\n", err: `kind "" is not supported`},
		"kind without version":   {data: "kind: InjectorConfig\n", err: "without apiVersion"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			l, err := LoadConfig([]byte(tc.data))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(l.Warnings) != tc.warnings {
				t.Fatalf("warnings %q, want %d", l.Warnings, tc.warnings)
			}
			if tc.warnings > 0 && !strings.Contains(l.Warnings[0], "apiVersion: "+ConfigAPIVersion) {
				t.Errorf("the warning must say what to add: %q", l.Warnings[0])
			}
			if l.Config.APIVersion != ConfigAPIVersion || l.Config.Kind != ConfigKind {
				t.Errorf("a loaded configuration says its version: %q %q", l.Config.APIVersion, l.Config.Kind)
			}
			if strings.Contains(tc.data, "example.org") && l.Config.TrustDomain != "example.org" {
				t.Errorf("file value lost: %+v", l.Config)
			}
		})
	}
}

func TestLoadConfigPresence(t *testing.T) {
	l, err := LoadConfig([]byte("istio: auto\ncaAddress: istiod.corp:15012\nhub: \"\"\nmeshID: null\nnativeSidecar: false\nagentImage: r/p@sha256:01\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Presence{Istio: true, CAAddress: true, NativeSidecar: true, AgentImage: true}
	if l.Set != want {
		t.Errorf("presence %+v, want %+v (empty strings and null are not set)", l.Set, want)
	}
}

// Every Presence field stands for the Config field of the same name, with
// the same JSON name in the overlay that decodes it.
func TestPresenceNamesConfigFields(t *testing.T) {
	cfgType, overlay := reflect.TypeOf(Config{}), reflect.TypeOf(presenceOverlay{})
	pt := reflect.TypeOf(Presence{})
	if pt.NumField() != overlay.NumField() {
		t.Fatalf("Presence has %d fields, presenceOverlay %d", pt.NumField(), overlay.NumField())
	}
	for i := range pt.NumField() {
		name := pt.Field(i).Name
		cf, ok := cfgType.FieldByName(name)
		if !ok {
			t.Errorf("Presence.%s names no Config field", name)
			continue
		}
		of, ok := overlay.FieldByName(name)
		if !ok {
			t.Errorf("presenceOverlay has no field %s", name)
			continue
		}
		if jsonName(cf) != jsonName(of) {
			t.Errorf("%s: Config decodes %q, the overlay %q", name, jsonName(cf), jsonName(of))
		}
	}
	// Every field decoded: setting each one in a file turns on exactly its
	// Presence field.
	for i := range overlay.NumField() {
		f := overlay.Field(i)
		value := "x:1"
		switch {
		case f.Type.Elem().Kind() == reflect.Bool:
			value = "true"
		case f.Name == "Flavor":
			value = "sds-agent"
		case f.Name == "Istio":
			value = "auto"
		}
		var o presenceOverlay
		reflect.ValueOf(&o).Elem().Field(i).Set(reflect.New(f.Type.Elem()))
		p := o.presence()
		if f.Type.Elem().Kind() == reflect.String {
			reflect.ValueOf(&o).Elem().Field(i).Elem().SetString(value)
			p = o.presence()
		}
		got := reflect.ValueOf(p)
		for j := range got.NumField() {
			if got.Field(j).Bool() != (pt.Field(j).Name == f.Name) {
				t.Errorf("overlay field %s set: Presence %+v", f.Name, p)
				break
			}
		}
	}
}

func jsonName(f reflect.StructField) string {
	return strings.Split(f.Tag.Get("json"), ",")[0]
}

// configPaths lists the JSON names of Config's fields, recursively through
// this package's own types (other packages' types, e.g. a label selector,
// are documented where they come from).
func configPaths(t reflect.Type, prefix string) []string {
	var out []string
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	for i := range t.NumField() {
		f := t.Field(i)
		name := jsonName(f)
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		out = append(out, prefix+name)
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.PkgPath() == t.PkgPath() {
			out = append(out, configPaths(ft, prefix+name+".")...)
		}
	}
	return out
}

// The shipped example configuration shows every field (set or as a
// commented example), and docs/configuration.md names every one.
func TestEveryConfigFieldDocumented(t *testing.T) {
	paths := configPaths(reflect.TypeOf(Config{}), "")
	if len(paths) < 30 {
		t.Fatalf("only %d configuration fields found: %v", len(paths), paths)
	}
	example, err := os.ReadFile("../../deploy/config/sds-injector.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		key := p[strings.LastIndex(p, ".")+1:]
		if !regexp.MustCompile(`(?m)^[#\s-]*` + regexp.QuoteMeta(key) + `:`).Match(example) {
			t.Errorf("deploy/config/sds-injector.yaml does not show %s (as %q, set or commented)", p, key+":")
		}
		if !strings.Contains(string(doc), "`"+key+"`") && !strings.Contains(string(doc), "`"+p+"`") {
			t.Errorf("docs/configuration.md does not name %s (as `%s` or `%s`)", p, key, p)
		}
	}
}
