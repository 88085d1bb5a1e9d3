package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
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
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
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
	ready := regexp.MustCompile(`(?m)\[web\] image web-\d-\d{6} of web-\d is ready: image \S+ active$`).FindAllString(text, -1)
	if len(ready) < 4 {
		t.Errorf("saw %d web images made, want at least 4:\n%s", len(ready), text)
	}
	if !regexp.MustCompile(`(?m)\[db\] image db-\d-\d{6} of db-\d is ready: image \S+ active, (1 volume snapshot|2 volume snapshots) available$`).MatchString(text) {
		t.Errorf("no volume-backed image made:\n%s", text)
	}
	// The deletion lines still say "image and 1 volume snapshots gone": that message
	// is the runner's own (scheduler/prune.go), told as it is.
	if bad := regexp.MustCompile(`(?m)is ready: .*\b[01] volume snapshots`).FindString(text); bad != "" {
		t.Errorf("snapshot count not in words: %q", bad)
	}
	if !strings.Contains(text, "skipped server web-broken") {
		t.Errorf("the server in ERROR was not reported skipped:\n%s", text)
	}
	if !strings.Contains(text, "] deleted image web-") || !strings.Contains(text, "retention kept the newest 3") {
		t.Errorf("no pruning within 40 s:\n%s", text)
	}
	// The db policy's hooks (examples/hooks/timestamp.sh) ran around its snapshots:
	// a pre and a post, the post after an image was requested.
	if !strings.Contains(text, "the db policy's hooks ran") ||
		!regexp.MustCompile(`(?m) pre server=db-\d `).MatchString(text) ||
		!regexp.MustCompile(`(?m) post server=db-\d .* image=\S+ result=requested$`).MatchString(text) {
		t.Errorf("no pre/post hook lines from the demo's db policy:\n%s", text)
	}
	if !strings.Contains(text, "stopped cleanly.") {
		t.Errorf("no clean stop:\n%s", text)
	}
	if strings.Contains(stderr.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", stderr.String())
	}
}

// TestNarratorImageReady checks the sentence for a good image counts its volume
// snapshots in words ("1 volume snapshot", "2 volume snapshots") and names none for
// an image-backed server, whatever count the runner's event message gives.
func TestNarratorImageReady(t *testing.T) {
	ctx := context.Background()
	st := storetest.MustOpen(t, nil)
	slot := time.Date(2026, 11, 24, 18, 30, 0, 0, time.UTC)
	n := &narrator{out: io.Discard, st: st, serverName: func(id string) string { return "" }}
	for i, tt := range []struct {
		snapshots int
		want      string
	}{
		{0, "[db] image db-0-183000 of db-0 is ready: image img-0 active"},
		{1, "[db] image db-1-183000 of db-1 is ready: image img-1 active, 1 volume snapshot available"},
		{2, "[db] image db-2-183000 of db-2 is ready: image img-2 active, 2 volume snapshots available"},
	} {
		server := fmt.Sprintf("db-%d", i)
		im, _, err := st.RecordIntent(ctx, store.Intent{Policy: "db", ServerID: "id-" + server, ServerName: server,
			VolumeBacked: tt.snapshots > 0, Slot: slot, Name: server + "-183000"})
		if err != nil {
			t.Fatal(err)
		}
		var snaps []store.Snapshot
		for j := range tt.snapshots {
			snaps = append(snaps, store.Snapshot{SnapshotID: fmt.Sprintf("snap-%d-%d", i, j), VolumeID: fmt.Sprintf("vol-%d-%d", i, j)})
		}
		if err := st.AddSnapshots(ctx, im.Row, snaps); err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("img-%d", i)
		e := store.Event{Kind: store.EventImageGood, Policy: "db", ServerID: "id-" + server, ImageRow: im.Row, ImageID: id,
			Message: fmt.Sprintf("image %s active, %d volume snapshots available", id, tt.snapshots)}
		if got := n.narrate(ctx, e); got != tt.want {
			t.Errorf("%d snapshots:\n got %q\nwant %q", tt.snapshots, got, tt.want)
		}
	}
}
