package main

import (
	"context"
	"io"
	"net/http"
	"runtime/debug"
	"strings"
	"testing"
)

func TestPprofFlagRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:6060", ":6060", "192.0.2.1:6060", "example.com:6060", "127.0.0.1"} {
		var stdout, stderr strings.Builder
		m := &Main{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }}
		if code := m.Run(context.Background(), []string{"daemon", "--pprof", addr}); code != exitUsage {
			t.Errorf("--pprof %s: exit %d, want %d (%s)", addr, code, exitUsage, stderr.String())
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:6060", "localhost:6060"} {
		if err := checkLoopback(addr); err != nil {
			t.Errorf("checkLoopback(%s) = %v, want nil", addr, err)
		}
	}
}

func TestPprofServesProfiles(t *testing.T) {
	p, err := startPprof("127.0.0.1:0", discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	resp, err := http.Get("http://" + p.Addr() + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile") {
		t.Errorf("goroutine profile: %d %.200s", resp.StatusCode, body)
	}
}

func TestMemoryLimitDefaultAndOverride(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(old)
	if got := setMemoryLimit(func(string) string { return "" }); got != defaultMemoryLimit || debug.SetMemoryLimit(-1) != defaultMemoryLimit {
		t.Errorf("without GOMEMLIMIT: limit %d (runtime %d), want %d", got, debug.SetMemoryLimit(-1), defaultMemoryLimit)
	}
	debug.SetMemoryLimit(1 << 40)
	env := func(k string) string {
		if k == "GOMEMLIMIT" {
			return "1TiB"
		}
		return ""
	}
	if got := setMemoryLimit(env); got != 1<<40 {
		t.Errorf("with GOMEMLIMIT set: limit %d, want the runtime's %d left alone", got, int64(1<<40))
	}
}
