package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSimcloudFleet(t *testing.T) {
	specs := simcloudFleet(12)
	if len(specs) != 12 {
		t.Fatalf("%d servers", len(specs))
	}
	var volume, image, errored int
	names := map[string]bool{}
	for _, s := range specs {
		if names[s.Name] {
			t.Errorf("duplicate name %s", s.Name)
		}
		names[s.Name] = true
		if s.Volumes > 0 {
			volume++
		} else {
			image++
		}
		if s.Status == "ERROR" {
			errored++
		}
	}
	if volume == 0 || image == 0 || errored != 1 {
		t.Errorf("fleet: %d volume-backed, %d image-backed, %d in ERROR", volume, image, errored)
	}
	if got := simcloudFleet(2); len(got) != 2 || got[1].Status == "ERROR" {
		t.Errorf("a fleet of 2 should have no ERROR server: %+v", got)
	}
}

func TestSimcloudCommandFlags(t *testing.T) {
	for _, args := range [][]string{{"--servers", "-1"}, {"--nope"}, {"extra"}} {
		if code, _, stderr := cli(t, append([]string{"simcloud"}, args...)...); code != exitUsage {
			t.Errorf("simcloud %v: exit %d, want %d (%s)", args, code, exitUsage, stderr)
		}
	}
}

func TestSimcloudCommandRunsUntilCancelled(t *testing.T) {
	dir := t.TempDir()
	cy := filepath.Join(dir, "clouds.yaml")
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		m := &Main{Stdout: pw, Stderr: io.Discard, Getenv: func(string) string { return "" }}
		done <- m.Run(ctx, []string{"simcloud", "--listen", "127.0.0.1:0", "--servers", "3", "--clouds-yaml", cy})
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	if !lines.Scan() {
		t.Fatal("no output")
	}
	url, ok := strings.CutPrefix(lines.Text(), "simcloud listening on ")
	if !ok {
		t.Fatalf("first line %q", lines.Text())
	}
	go func() {
		for lines.Scan() {
		}
	}()
	data, err := os.ReadFile(cy)
	if err != nil {
		t.Fatalf("clouds.yaml: %v", err)
	}
	if !strings.Contains(string(data), "  simcloud:\n") || !strings.Contains(string(data), "auth_url: "+url+"/identity/v3\n") {
		t.Errorf("clouds.yaml:\n%s", data)
	}
	resp, err := http.Get(url + "/_sim/servers")
	if err != nil {
		t.Fatalf("control API: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Count(string(body), `"vm_state"`) != 3 || !strings.Contains(string(body), `"status": "ERROR"`) {
		t.Errorf("servers: %s", body)
	}
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("exit %d after cancel", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("simcloud did not stop after cancel")
	}
}
