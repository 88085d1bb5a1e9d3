package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// TestCleanupsUnwindNewestFirst: the stack closes in reverse order of opening, each
// closer once, however often it is unwound.
func TestCleanupsUnwindNewestFirst(t *testing.T) {
	var closed []string
	c := cleanups{log: discardLogger()}
	for _, name := range []string{"lock", "lineage", "http server"} {
		c.push(name, func() { closed = append(closed, name) })
	}
	c.unwind()
	c.unwind()
	if want := []string{"http server", "lineage", "lock"}; !slices.Equal(closed, want) {
		t.Fatalf("closed %q, want %q", closed, want)
	}
}

// closedOrder returns what the daemon's cleanup stack closed, in order, from its
// debug log.
func closedOrder(logs string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`msg=closed what=("[^"]*"|\S+)`).FindAllStringSubmatch(logs, -1) {
		out = append(out, strings.Trim(m[1], `"`))
	}
	return out
}

// TestDaemonStartFailureClosesWhatItOpened makes the control socket, a late step
// of the start (after the lock, the lineage, HTTP, the watchdog, the cloud and the
// scheduler), fail: Run returns exit 1 naming it, and everything opened before is
// closed, newest first: the started scheduler too, the HTTP port is free again and
// the database lock released.
func TestDaemonStartFailureClosesWhatItOpened(t *testing.T) {
	e := newEnv(t, simcloud.Options{})
	e.writeConfig(policyYAML("a", "@every 1h", "a", ""))
	// A non-empty directory where the socket goes cannot be removed as a stale socket.
	if err := os.MkdirAll(filepath.Join(controlSocketPath(e.state), "x"), 0o750); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	listening := make(chan string, 1)
	d := &Daemon{
		ConfigPath:    e.config,
		Logger:        slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Getenv:        func(string) string { return "" },
		PprofListen:   "127.0.0.1:0",
		WatchInterval: 50 * time.Millisecond,
		NewCloud: func(ctx context.Context, cfg *policy.Config, log *slog.Logger, observe func(openstack.Request)) (cloud.Cloud, error) {
			return openstack.New(ctx, openstack.Options{CloudName: cfg.Cloud, Observe: observe, Logger: log,
				ParseOptions: []clouds.ParseOption{clouds.WithLocations(e.clouds)}})
		},
		Listening: func(addr string) { listening <- addr },
		Started:   func(string, *store.Store) { t.Error("started despite the failed control socket") },
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := d.Run(ctx)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitFailure || !strings.Contains(err.Error(), "control socket") {
		t.Fatalf("Run = %v, want exit 1 naming the control socket\n%s", err, logs)
	}
	want := []string{"scheduler", "watchdog and background loops", "http server", "lineage", "database lock", "pprof server"}
	if got := closedOrder(logs.String()); !slices.Equal(got, want) {
		t.Fatalf("closed %q\nwant   %q", got, want)
	}
	addr := <-listening
	if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("%s still serves after the failed start", addr)
	}
	lock, err := acquireLock(e.state)
	if err != nil {
		t.Fatalf("the database lock is still held: %v", err)
	}
	_ = lock.Release()
}

// TestDaemonStopClosesInReverse: a clean stop closes everything the phases opened,
// newest first, and removes the control socket.
func TestDaemonStopClosesInReverse(t *testing.T) {
	e := newEnv(t, simcloud.Options{})
	e.writeConfig(policyYAML("a", "@every 1h", "a", ""))
	r := e.start()
	if _, err := os.Stat(controlSocketPath(e.state)); err != nil {
		t.Fatalf("control socket while running: %v", err)
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	want := []string{"restore drills", "control socket", "scheduler", "watchdog and background loops",
		"http server", "lineage", "database lock"}
	if got := closedOrder(r.logs.String()); !slices.Equal(got, want) {
		t.Fatalf("closed %q\nwant   %q", got, want)
	}
	if _, err := os.Stat(controlSocketPath(e.state)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("control socket after the stop: %v", err)
	}
}
