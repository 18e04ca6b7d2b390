package harness

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a command started in its own process group, its output kept
// (in memory, or in the file LogPath: StartLogged).
type Process struct {
	Name string
	Cmd  *exec.Cmd
	// LogPath is the file the output goes to (StartLogged), "" for memory.
	LogPath string
	logFile *os.File
	out     Buffer
	done    chan struct{}
	err     error
}

// Buffer is an output buffer safe for concurrent writes (a process's
// stdout and stderr) and reads.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String is what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func (p *Process) Write(b []byte) (int, error) { return p.out.Write(b) }

// Output is everything the process has written to stdout and stderr (for
// StartLogged, what its log file holds now: "" once removed).
func (p *Process) Output() string {
	if p.LogPath != "" {
		b, _ := os.ReadFile(p.LogPath)
		return string(b)
	}
	return p.out.String()
}

// Tail is the last lines of Output.
func (p *Process) Tail(lines int) string { return Tail(p.Output(), lines) }

// Tail is the last lines of s.
func Tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// StartProcess starts cmd in its own process group, its stdout and stderr
// into Output unless already set.
func StartProcess(name string, cmd *exec.Cmd) (*Process, error) {
	return start(&Process{Name: name, Cmd: cmd, done: make(chan struct{})})
}

// StartLogged is StartProcess with stdout and stderr appended to the file
// logPath (created if absent; closed when the process exits), and copied
// to also unless nil.
func StartLogged(name string, cmd *exec.Cmd, logPath string, also io.Writer) (*Process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	var out io.Writer = f
	if also != nil {
		out = io.MultiWriter(f, also)
	}
	cmd.Stdout, cmd.Stderr = out, out
	p, err := start(&Process{Name: name, Cmd: cmd, LogPath: logPath, logFile: f, done: make(chan struct{})})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return p, nil
}

func start(p *Process) (*Process, error) {
	cmd := p.Cmd
	if cmd.Stdout == nil {
		cmd.Stdout = p
	}
	if cmd.Stderr == nil {
		cmd.Stderr = p
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = cmd.Wait()
		if p.logFile != nil {
			p.logFile.Close()
		}
		close(p.done)
	}()
	return p, nil
}

// Start is StartProcess for a test: it fails t if cmd cannot start, and
// when t ends stops the process (Stop with 5 s grace) and logs its output
// if t failed.
func Start(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	p, err := StartProcess(name, cmd)
	if err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = p.Stop(5 * time.Second)
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.Output())
		}
	})
	return p
}

// Stop sends SIGTERM to the process, then SIGKILL to its process group
// (by its PID) after grace, and returns how it exited. The rest of the
// group is killed too, so that no child outlives it.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		p.killGroup()
		return p.err
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.killGroup()
		<-p.done
	}
	p.killGroup()
	return p.err
}

// Terminate sends SIGTERM to the process and returns at once (Stop waits).
func (p *Process) Terminate() { _ = p.Cmd.Process.Signal(syscall.SIGTERM) }

func (p *Process) killGroup() { _ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL) }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process has exited; Err is then its exit error.
func (p *Process) Done() <-chan struct{} { return p.done }
func (p *Process) Err() error            { <-p.done; return p.err }
