package inject

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current output")

// goldenCase is one input pod, the configuration it runs with and the file
// holding the expected output.
type goldenCase struct {
	name   string
	input  string
	golden string
	config func(t *testing.T) Config
}

const (
	testdataDir  = "testdata/inject"
	examplesDir  = "../../docs/examples"
	matrixSource = "../../docs/examples/gloo-gateway-proxy.yaml"
	// matrixFilesSource is the matrix's gateway for the files flavor,
	// which Gloo cannot consume: Emissary, which consumes only files.
	matrixFilesSource = testdataDir + "/emissary.in.yaml"
)

// matrixVersions picks one release from each Istio profile.
var matrixVersions = []string{"1.13.9", "1.21.6", DefaultIstioVersion}

// discoverGoldenCases finds every case without a hand-kept list:
//   - testdata/inject/<name>.in.yaml, with an optional <name>.config.yaml
//     laid over the defaults, expects <name>.golden.yaml;
//   - every example pod in docs/examples expects examples/<name>.golden.yaml;
//   - the Gloo example (Emissary for the files flavor, which Gloo cannot
//     consume) under every flavor x Istio profile x placement expects
//     matrix/<flavor>-<version>-<placement>.golden.yaml.
func discoverGoldenCases(t *testing.T) []goldenCase {
	t.Helper()
	var cases []goldenCase
	inputs, err := filepath.Glob(filepath.Join(testdataDir, "*.in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		cfgFile := filepath.Join(testdataDir, name+".config.yaml")
		cases = append(cases, goldenCase{
			name:   name,
			input:  in,
			golden: filepath.Join(testdataDir, name+".golden.yaml"),
			config: func(t *testing.T) Config {
				data, err := os.ReadFile(cfgFile)
				if os.IsNotExist(err) {
					return DefaultConfig()
				}
				if err != nil {
					t.Fatal(err)
				}
				cfg, err := ParseConfig(data)
				if err != nil {
					t.Fatal(err)
				}
				return cfg
			},
		})
	}
	examples, err := filepath.Glob(filepath.Join(examplesDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range examples {
		name := strings.TrimSuffix(filepath.Base(ex), ".yaml")
		cases = append(cases, goldenCase{
			name: "examples/" + name, input: ex,
			golden: filepath.Join(testdataDir, "examples", name+".golden.yaml"),
			config: func(*testing.T) Config { return DefaultConfig() },
		})
	}
	for _, flavor := range Flavors {
		for _, version := range matrixVersions {
			for _, native := range []bool{false, true} {
				placement := PlacementClassic
				if native {
					placement = PlacementNative
				}
				name := fmt.Sprintf("%s-%s-%s", flavor, version, placement)
				input := matrixSource
				if flavor == FlavorIstioAgentFiles {
					input = matrixFilesSource
				}
				cases = append(cases, goldenCase{
					name: "matrix/" + name, input: input,
					golden: filepath.Join(testdataDir, "matrix", name+".golden.yaml"),
					config: func(*testing.T) Config {
						c := DefaultConfig()
						c.Flavor, c.IstioVersion, c.NativeSidecar = flavor, version, native
						return c
					},
				})
			}
		}
	}
	if len(cases) < 40 {
		t.Fatalf("found only %d golden cases; is the working directory the package directory?", len(cases))
	}
	return cases
}

func readPod(t testing.TB, path string) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &pod
}

// renderResult is the golden representation: the decision as comments,
// then the pod when it changed.
func renderResult(t *testing.T, res Result) []byte {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "# outcome: %s\n# reason: %s\n", res.Decision.Outcome, res.Decision.Reason)
	if res.Decision.Profile != "" {
		fmt.Fprintf(&b, "# profile: %s\n", res.Decision.Profile)
	}
	fmt.Fprintf(&b, "# warn: %t\n# message: %s\n", res.Decision.Warn, res.Decision.Message)
	if res.Decision.Outcome != OutcomeInjected {
		b.WriteString("# (pod unchanged)\n")
		return []byte(b.String())
	}
	var obj map[string]any
	if err := json.Unmarshal(mustJSON(t, res.Pod), &obj); err != nil {
		t.Fatal(err)
	}
	// Noise from marshalling a typed object that was never persisted.
	delete(obj, "status")
	if md, ok := obj["metadata"].(map[string]any); ok && md["creationTimestamp"] == nil {
		delete(md, "creationTimestamp")
	}
	y, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	b.Write(y)
	return []byte(b.String())
}

func TestGolden(t *testing.T) {
	cases := discoverGoldenCases(t)
	seen := map[string]bool{}
	for _, tc := range cases {
		seen[filepath.Clean(tc.golden)] = true
		t.Run(tc.name, func(t *testing.T) {
			settings, err := tc.config(t).Resolve()
			if err != nil {
				t.Fatal(err)
			}
			pod := readPod(t, tc.input)
			res := checkInvariants(t, pod, settings)
			got := renderResult(t, res)
			if *update {
				if err := os.MkdirAll(filepath.Dir(tc.golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(tc.golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(tc.golden)
			if err != nil {
				t.Fatalf("%v (run `go test ./webhook/inject -run TestGolden -update` to create it)", err)
			}
			if string(want) != string(got) {
				t.Errorf("output differs from %s (rerun with -update if the change is intended):\n%s", tc.golden, lineDiff(string(want), string(got)))
			}
		})
	}
	// A golden file nobody produces any more is a test that silently stopped running.
	if !*update {
		var stale []string
		_ = filepath.Walk(testdataDir, func(p string, info os.FileInfo, err error) error {
			if err == nil && strings.HasSuffix(p, ".golden.yaml") && !seen[filepath.Clean(p)] {
				stale = append(stale, p)
			}
			return nil
		})
		sort.Strings(stale)
		if len(stale) > 0 {
			t.Errorf("golden files without a case (delete them): %v", stale)
		}
	}
}

// lineDiff shows the first differing lines, enough to see what changed.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want: %s\n  got:  %s\n", i+1, wl, gl)
			if shown++; shown == 8 {
				b.WriteString("  ...\n")
				break
			}
		}
	}
	return b.String()
}
