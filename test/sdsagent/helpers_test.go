package sdsagent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sds-injector/sds-injector/internal/agent/sds"
	"github.com/sds-injector/sds-injector/test/sdsclient"
)

// sdsStream is an Envoy-like SDS subscription that ACKs every response
// (the project's one SDS client, internal/agent/sds.Stream).
type sdsStream struct {
	t testing.TB
	s *sds.Stream
}

func subscribe(t testing.TB, socket string, names ...string) *sdsStream {
	t.Helper()
	st, err := sds.Subscribe(context.Background(), "unix://"+socket, &corev3.Node{Id: "router~127.0.0.1~gw-0.gw~gw.svc.cluster.local"}, names...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return &sdsStream{t: t, s: st}
}

// next waits up to d for a response and ACKs it.
func (s *sdsStream) next(d time.Duration) map[string]*tlsv3.Secret {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	r, err := s.s.Next(ctx)
	if err != nil {
		s.t.Fatalf("within %s: %v", d, err)
	}
	return r.Secrets
}

// workloadCert checks a tls_certificate secret: key pair, validity now, the
// SPIFFE ID, and a chain to roots. It returns the leaf.
func workloadCert(t testing.TB, sec *tlsv3.Secret, wantID string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	tc := sec.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("secret %s holds no certificate", sec.GetName())
	}
	leaf, err := sdsclient.VerifyWorkload(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes(), wantID, roots, time.Now())
	if err != nil {
		t.Fatalf("secret %s: %v", sec.GetName(), err)
	}
	return leaf
}

// tcpListeners returns the TCP sockets in LISTEN state that process pid holds.
func tcpListeners(t testing.TB, pid int) []string {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st ... inode (field 9)
			if len(fields) > 9 && fields[3] == "0A" && inodes[fields[9]] {
				out = append(out, table+" "+fields[1])
			}
		}
		f.Close()
	}
	return out
}

// usage is a process's resident memory and CPU time so far, from /proc.
type usage struct {
	RSSKiB, AnonKiB, FileKiB int64
	CPU                      time.Duration
}

func procUsage(pid int) (usage, error) {
	var u usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		for key, dst := range map[string]*int64{"VmRSS:": &u.RSSKiB, "RssAnon:": &u.AnonKiB, "RssFile:": &u.FileKiB} {
			if v, ok := strings.CutPrefix(line, key); ok {
				*dst, _ = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// Fields after the ")" that ends the command name: utime is 14th and
	// stime 15th of the whole line, i.e. 12th and 13th after it.
	rest := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	utime, _ := strconv.ParseInt(rest[11], 10, 64)
	stime, _ := strconv.ParseInt(rest[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	u.CPU = time.Duration(utime+stime) * time.Second / clkTck
	return u, nil
}

func (s *sdsStream) close() { s.s.Close() }
