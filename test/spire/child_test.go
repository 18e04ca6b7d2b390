package spire

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sds-injector/sds-injector/test/sdsclient"
)

// The test binary doubles as a container: started by the test as root in a
// new mount namespace, it mounts the container's volumes at their mount
// paths (a tmpfs over /run hides the host's, so container paths are used
// verbatim and nothing is created on the host), drops to the container's
// uid and gid, then either execs the container's command or acts as the
// gateway's Envoy with an SDS client.
const (
	childEnv    = "SDS_INJECTOR_SPIRE_CHILD"
	childResult = "SPIRE-CHILD-RESULT: "
)

type bindMount struct {
	Source, Target string
	ReadOnly       bool
}

type childSpec struct {
	// Mode: exec (Exec[0] with Exec[1:]), fetch, stream, unregistered.
	Mode     string
	Binds    []bindMount
	UID, GID int
	Exec     []string
	// Socket is the SDS socket path as the container sees it.
	Socket string
	// Timeout bounds the SDS client's work.
	Timeout time.Duration
}

// secretMsg is one SDS response as the child saw it.
type secretMsg struct {
	Name    string    `json:"name"`
	Version string    `json:"version"`
	At      time.Time `json:"at"`
	// Secret is the proto-encoded tlsv3.Secret.
	Secret []byte `json:"secret"`
}

type childOut struct {
	Secrets []secretMsg `json:"secrets,omitempty"`
	// Plain is ROOTCA asked for with disable_spiffe_cert_validation.
	Plain *secretMsg `json:"plain,omitempty"`
	// DefaultViaSDSClient is default as test/sdsclient fetched it.
	DefaultChain []byte `json:"defaultChain,omitempty"`
	DefaultKey   []byte `json:"defaultKey,omitempty"`
	Error        string `json:"error,omitempty"`
	Code         string `json:"code,omitempty"`
}

func childMain(raw string) int {
	var spec childSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 3
	}
	if err := enterContainer(spec); err != nil {
		fmt.Fprintln(os.Stderr, "child: entering the container view:", err)
		return 3
	}
	if spec.Mode == "exec" {
		err := syscall.Exec(spec.Exec[0], spec.Exec, []string{"PATH=/usr/bin:/bin"})
		fmt.Fprintln(os.Stderr, "child: exec:", err)
		return 3
	}
	ctx, cancel := context.WithTimeout(context.Background(), spec.Timeout)
	defer cancel()
	out := childOut{}
	switch spec.Mode {
	case "fetch":
		out = fetchAll(ctx, spec.Socket)
	case "stream":
		out.Secrets, out.Error = streamRotations(ctx, spec.Socket)
	case "unregistered":
		out = fetchUnregistered(ctx, spec.Socket)
	default:
		out.Error = "unknown mode " + spec.Mode
	}
	b, _ := json.Marshal(out)
	fmt.Println(childResult + string(b))
	return 0
}

func enterContainer(spec childSpec) error {
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	if err := syscall.Mount("tmpfs", "/run", "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("tmpfs on /run: %w", err)
	}
	for _, b := range spec.Binds {
		target := filepath.Clean(b.Target)
		if rest, ok := strings.CutPrefix(target, "/var/run/"); ok {
			if vr, err := filepath.EvalSymlinks("/var/run"); err == nil && vr == "/run" {
				target = "/run/" + rest
			}
		}
		if !strings.HasPrefix(target, "/run/") {
			return fmt.Errorf("mount path %s (%s) is not under /run, where this emulation mounts volumes", b.Target, target)
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
		if err := syscall.Mount(b.Source, target, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", b.Source, target, err)
		}
		if b.ReadOnly {
			if err := syscall.Mount("", target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				return fmt.Errorf("read-only %s: %w", target, err)
			}
		}
	}
	if err := syscall.Setgroups(nil); err != nil {
		return err
	}
	if err := syscall.Setgid(spec.GID); err != nil {
		return err
	}
	return syscall.Setuid(spec.UID)
}

// msg records a secret as the child reports it.
func msg(r sdsclient.Raw) (secretMsg, error) {
	b, err := proto.Marshal(r.Secret())
	if err != nil {
		return secretMsg{}, err
	}
	return secretMsg{Name: r.Secret().GetName(), Version: r.Version(), At: time.Now(), Secret: b}, nil
}

// subscribe opens one stream for name as Envoy does (node, then ACKs,
// through test/sdsclient) and calls got for each response until it returns
// false.
func subscribe(ctx context.Context, socket string, node *corev3.Node, name string, got func(secretMsg) bool) error {
	return sdsclient.WatchRaw(ctx, socket, node, name, func(r sdsclient.Raw) (bool, error) {
		m, err := msg(r)
		if err != nil {
			return false, err
		}
		return got(m), nil
	})
}

func first(ctx context.Context, socket string, node *corev3.Node, name string) (*secretMsg, error) {
	r, err := sdsclient.First(ctx, socket, node, name)
	if err != nil {
		return nil, err
	}
	m, err := msg(r)
	return &m, err
}

// fetchAll: default through test/sdsclient (retrying: the agent's
// first sync takes seconds), then ROOTCA in SPIRE's default shape and with
// the node metadata asking for the plain trusted_ca.
func fetchAll(ctx context.Context, socket string) childOut {
	var out childOut
	for {
		got, err := sdsclient.Fetch(ctx, socket, "gateway", sdsclient.WorkloadCert)
		if err == nil {
			out.DefaultChain, out.DefaultKey = got[sdsclient.WorkloadCert].CertificateChain, got[sdsclient.WorkloadCert].PrivateKey
			break
		}
		if ctx.Err() != nil {
			out.Error = "default: " + err.Error()
			return out
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	root, err := first(ctx, socket, &corev3.Node{Id: "gateway"}, sdsclient.RootCA)
	if err != nil {
		out.Error = "ROOTCA: " + err.Error()
		return out
	}
	out.Secrets = append(out.Secrets, *root)
	md, _ := structpb.NewStruct(map[string]any{"disable_spiffe_cert_validation": "true"})
	plain, err := first(ctx, socket, &corev3.Node{Id: "gateway", Metadata: md}, sdsclient.RootCA)
	if err != nil {
		out.Error = "ROOTCA (plain): " + err.Error()
		return out
	}
	out.Plain = plain
	return out
}

// streamRotations keeps one default stream open until a second, different
// certificate is pushed on it.
func streamRotations(ctx context.Context, socket string) ([]secretMsg, string) {
	var msgs []secretMsg
	var chains = map[string]bool{}
	err := subscribe(ctx, socket, &corev3.Node{Id: "gateway"}, sdsclient.WorkloadCert, func(m secretMsg) bool {
		msgs = append(msgs, m)
		var sec tlsv3.Secret
		if proto.Unmarshal(m.Secret, &sec) == nil {
			chains[string(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())] = true
		}
		return len(chains) < 2
	})
	if err != nil {
		return msgs, err.Error()
	}
	return msgs, ""
}

// fetchUnregistered asks for default and ROOTCA as a uid no entry selects.
func fetchUnregistered(ctx context.Context, socket string) childOut {
	var out childOut
	def, err := first(ctx, socket, &corev3.Node{Id: "gateway"}, sdsclient.WorkloadCert)
	if err == nil {
		out.Secrets = append(out.Secrets, *def)
	} else {
		out.Error, out.Code = err.Error(), status.Code(err).String()
	}
	if root, err := first(ctx, socket, &corev3.Node{Id: "gateway"}, sdsclient.RootCA); err == nil {
		out.Secrets = append(out.Secrets, *root)
	}
	return out
}
