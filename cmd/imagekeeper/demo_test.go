package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/examples"
	"github.com/imagekeeper/imagekeeper/policy"
)

// TestDemoPolicyLoads keeps the embedded demo policy valid and fast.
func TestDemoPolicyLoads(t *testing.T) {
	cfg, err := policy.Parse("examples/demo.yaml", examples.Demo)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.AllowSubMinute || len(cfg.Policies) < 2 {
		t.Fatalf("demo policy: allow_sub_minute %v, %d policies", cfg.AllowSubMinute, len(cfg.Policies))
	}
	for _, p := range cfg.Policies {
		// A newcomer must see slots within a minute, and pruning needs a few slots
		// beyond keep_last in that minute.
		if p.Schedule.Every == 0 || p.Schedule.Every > 20*time.Second {
			t.Errorf("policy %s runs %q: too slow for a demo", p.Name, p.Schedule.Spec)
		}
		if p.Retention.KeepLast == 0 || p.Retention.KeepLast > 3 || p.Retention.MinKeep < 1 {
			t.Errorf("policy %s retention %+v: keep_last 1..3 and min_keep >= 1", p.Name, p.Retention)
		}
	}
	// The embedded bytes are the file in examples/ (embed reads it at build time; this
	// catches a stale build cache or a file edited in the wrong place).
	disk, err := os.ReadFile("../../examples/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk, examples.Demo) {
		t.Fatal("embedded demo policy differs from examples/demo.yaml")
	}
}

// TestDemoAsAUserRunsIt builds the binary, runs `imagekeeper demo` for about 40
// seconds as a newcomer would, and stops it with Ctrl-C (SIGINT).
func TestDemoAsAUserRunsIt(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the demo for 40 s")
	}
	bin := filepath.Join(t.TempDir(), "imagekeeper")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=", "OS_CLOUD=")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out strings.Builder
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
		}
	}()
	time.Sleep(40 * time.Second) // the demo's own pace: this is how long a newcomer watches
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	<-readDone
	err = cmd.Wait()
	mu.Lock()
	text := out.String()
	mu.Unlock()
	if err != nil {
		t.Fatalf("demo exited with %v after SIGINT\nstdout:\n%s\nstderr:\n%s", err, text, stderr.String())
	}
	ready := regexp.MustCompile(`(?m)\[web\] image web-\d-\d{6} of web-\d is ready`).FindAllString(text, -1)
	if len(ready) < 4 {
		t.Errorf("saw %d web images made, want at least 4:\n%s", len(ready), text)
	}
	if !regexp.MustCompile(`(?m)\[db\] image db-\d-\d{6} of db-\d is ready: .* [12] volume snapshots available`).MatchString(text) {
		t.Errorf("no volume-backed image made:\n%s", text)
	}
	if !strings.Contains(text, "skipped server web-broken") {
		t.Errorf("the server in ERROR was not reported skipped:\n%s", text)
	}
	if !strings.Contains(text, "] deleted image web-") || !strings.Contains(text, "retention kept the newest 3") {
		t.Errorf("no pruning within 40 s:\n%s", text)
	}
	if !strings.Contains(text, "stopped cleanly.") {
		t.Errorf("no clean stop:\n%s", text)
	}
	if strings.Contains(stderr.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", stderr.String())
	}
}
