package imagebuild

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Docker cannot run here, so the Dockerfile is checked by reading it: its
// final stages must build what Build does (same base, file, mode, user,
// entrypoint, PATH, labels) with the same go build flags.

type dfInstr struct {
	cmd  string // upper case
	args string // the rest, continuations joined
	line int
}

type dfStage struct {
	from, name string
	instrs     []dfInstr
}

func parseDockerfile(t *testing.T, text string) []dfStage {
	t.Helper()
	var stages []dfStage
	var cur string
	start := 0
	flush := func() {
		s := strings.TrimSpace(cur)
		cur = ""
		if s == "" {
			return
		}
		cmd, args, _ := strings.Cut(s, " ")
		in := dfInstr{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			f = slices.DeleteFunc(f, func(s string) bool { return strings.HasPrefix(s, "--platform=") })
			st := dfStage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			stages = append(stages, st)
			return
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("Dockerfile line %d: %s before FROM", in.line, in.cmd)
			}
			return
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
	}
	for i, line := range strings.Split(text, "\n") {
		trim := strings.TrimSpace(line)
		if cur == "" && (trim == "" || strings.HasPrefix(trim, "#")) {
			continue
		}
		if cur == "" {
			start = i + 1
		}
		if strings.HasSuffix(trim, "\\") {
			cur += strings.TrimSuffix(trim, "\\") + " "
			continue
		}
		cur += trim
		flush()
	}
	flush()
	return stages
}

// expand substitutes ${NAME} and $NAME from vars; an unknown name fails.
func expand(t *testing.T, s string, vars map[string]string) string {
	t.Helper()
	return os.Expand(s, func(k string) string {
		v, ok := vars[k]
		if !ok {
			t.Errorf("Dockerfile uses $%s, which has no ARG in its stage", k)
		}
		return v
	})
}

// labelPairs parses LABEL's key="value" pairs.
func labelPairs(t *testing.T, s string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		k, rest, ok := strings.Cut(s, "=")
		if !ok {
			t.Fatalf("LABEL: no = in %q", s)
		}
		if !strings.HasPrefix(rest, `"`) {
			t.Fatalf("LABEL %s: unquoted value %q", k, rest)
		}
		end := strings.Index(rest[1:], `"`) + 1
		if end == 0 {
			t.Fatalf("LABEL %s: unterminated value", k)
		}
		v, err := strconv.Unquote(rest[:end+1])
		if err != nil {
			t.Fatal(err)
		}
		out[k] = v
		s = rest[end+1:]
	}
	return out
}

func TestDockerfileBuildsTheSameImages(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(moduleDir(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	stages := parseDockerfile(t, string(b))
	byName := map[string]dfStage{}
	for _, s := range stages {
		byName[s.name] = s
	}
	if last := stages[len(stages)-1].name; last != "sds-injector" {
		t.Errorf("the last stage is %q: a plain docker build must produce sds-injector", last)
	}
	const version, revision = "v1.2.3", "abc123"
	for _, ri := range ReleaseImages {
		t.Run(ri.Name, func(t *testing.T) {
			st, ok := byName[ri.Name]
			if !ok {
				t.Fatalf("no stage %q", ri.Name)
			}
			if st.from != "scratch" {
				t.Errorf("stage %s is FROM %s, want scratch (nothing but the binary)", ri.Name, st.from)
			}
			vars := map[string]string{}
			var copies []string
			got := struct {
				user, workdir string
				env           []string
				entrypoint    []string
				labels        map[string]string
			}{labels: map[string]string{}}
			var buildStage string
			for _, in := range st.instrs {
				switch in.cmd {
				case "ARG":
					k, _, _ := strings.Cut(in.args, "=")
					vars[k] = map[string]string{"VERSION": version, "REVISION": revision, "CREATED": testCreated.Format(time.RFC3339)}[k]
				case "COPY":
					f := strings.Fields(in.args)
					var flags []string
					for len(f) > 0 && strings.HasPrefix(f[0], "--") {
						flags, f = append(flags, f[0]), f[1:]
					}
					slices.Sort(flags)
					if len(f) != 2 {
						t.Fatalf("line %d: COPY %s: want one source and one destination", in.line, in.args)
					}
					copies = append(copies, fmt.Sprint(flags, " ", f[1]))
					for _, fl := range flags {
						if from, ok := strings.CutPrefix(fl, "--from="); ok {
							buildStage = from
						}
					}
				case "ENV":
					got.env = append(got.env, expand(t, in.args, vars))
				case "USER":
					got.user = expand(t, in.args, vars)
				case "WORKDIR":
					got.workdir = in.args
				case "LABEL":
					for k, v := range labelPairs(t, in.args) {
						got.labels[k] = expand(t, v, vars)
					}
				case "ENTRYPOINT":
					if err := json.Unmarshal([]byte(in.args), &got.entrypoint); err != nil {
						t.Errorf("line %d: ENTRYPOINT is not the exec (JSON) form: %v", in.line, err)
					}
				default:
					t.Errorf("line %d: %s in the final stage: Build adds nothing like it", in.line, in.cmd)
				}
			}
			want := ri.Spec("", ReleasePlatforms[0], version, revision, testCreated)
			if wantCopy := fmt.Sprint([]string{"--chmod=0555", "--from=" + buildStage}, " ", want.Path); !slices.Equal(copies, []string{wantCopy}) {
				t.Errorf("COPY %q, want exactly %q (the binary, mode 0555, nothing else)", copies, wantCopy)
			}
			if got.user != want.User {
				t.Errorf("USER %q, want %q", got.user, want.User)
			}
			if got.workdir != "/" {
				t.Errorf("WORKDIR %q, want /", got.workdir)
			}
			if !slices.Equal(got.env, want.env()) {
				t.Errorf("ENV %q, want %q", got.env, want.env())
			}
			if !slices.Equal(got.entrypoint, want.entrypoint()) {
				t.Errorf("ENTRYPOINT %q, want %q", got.entrypoint, want.entrypoint())
			}
			if fmt.Sprint(got.labels) != fmt.Sprint(want.Labels) {
				t.Errorf("LABEL\n got %v\nwant %v", got.labels, want.Labels)
			}

			// The binary's build stage runs the same go build as GoBuild.
			bs, ok := byName[buildStage]
			if !ok {
				t.Fatalf("COPY --from=%s: no such stage", buildStage)
			}
			var runs []string
			for _, in := range bs.instrs {
				if in.cmd == "RUN" {
					runs = append(runs, in.args)
				}
			}
			flags := GoBuildFlags("${VERSION}", ri.Tags...)
			n := len(flags)
			wantRun := fmt.Sprintf("CGO_ENABLED=0 GOFLAGS= GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build %s %q -o /out/%s %s",
				strings.Join(flags[:n-1], " "), flags[n-1], ri.Name, ri.Package)
			if flags[n-2] != "-ldflags" || !slices.Equal(runs, []string{wantRun}) {
				t.Errorf("stage %s runs\n %q\nwant\n %q", buildStage, runs, wantRun)
			}
			if bs.from != "build" {
				t.Errorf("stage %s is FROM %s", buildStage, bs.from)
			}
		})
	}
}
