package scheduler

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// hookLog is a file that the hook scripts and the recording cloud append lines to,
// each "UNIXNANO WHAT...", so that their order can be checked.
type hookLog struct {
	path string
	mu   sync.Mutex
}

func (l *hookLog) add(what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, err := os.OpenFile(l.path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		panic(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "%d %s\n", time.Now().UnixNano(), what)
}

type logLine struct {
	at   time.Time
	what string
}

func (l *hookLog) lines(t *testing.T) []logLine {
	t.Helper()
	b, err := os.ReadFile(l.path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []logLine
	for _, s := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if s == "" {
			continue
		}
		ns, what, _ := strings.Cut(s, " ")
		n, err := strconv.ParseInt(ns, 10, 64)
		if err != nil {
			t.Fatalf("log line %q: %v", s, err)
		}
		out = append(out, logLine{time.Unix(0, n), what})
	}
	return out
}

// index returns the position of the first line starting with prefix, -1 if none.
func index(lines []logLine, prefix string) int {
	for i, l := range lines {
		if strings.HasPrefix(l.what, prefix) {
			return i
		}
	}
	return -1
}

// recordingCloud logs createImage calls and the task states it reads.
type recordingCloud struct {
	cloud.Cloud
	log *hookLog
}

func (c recordingCloud) CreateImage(ctx context.Context, serverID, name string, md map[string]string) (string, error) {
	c.log.add("create " + serverID)
	id, err := c.Cloud.CreateImage(ctx, serverID, name, md)
	c.log.add("created " + serverID)
	return id, err
}

func (c recordingCloud) GetServer(ctx context.Context, id string) (cloud.Server, error) {
	s, err := c.Cloud.GetServer(ctx, id)
	if err == nil {
		c.log.add("task " + id + " " + cmpOr(s.TaskState, "none"))
	}
	return s, err
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// hookScript writes an executable script that logs "NAME $1 $RESULT" with a
// timestamp, then runs body.
func hookScript(t *testing.T, dir, name, logPath, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	src := "#!/bin/sh\nprintf '%s %s %s %s\\n' \"$(date +%s%N)\" " + name + " \"$1\" \"${IMAGEKEEPER_RESULT:-}\" >> " + logPath + "\n" + body + "\n"
	if err := os.WriteFile(p, []byte(src), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

const hookPolicyYAML = `cloud: sim
state: /unused/lineage.db
limits: {concurrency: 8, requests_per_second: 2000}
policies:
  - name: db
    select: {tags: [backup=daily]}
    schedule: {cron: "30 2 * * *"}
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "20060102-1504" }}'
      wait_timeout: 20s
      hooks:
        pre:
          command: [%q, '{{ .Server.Name }}']
          timeout: %s
          on_failure: %s
        post:
          command: [%q, '{{ .Server.Name }}']
          timeout: 5s
    retention: {keep_last: 3}
`

// hookHarness is the harness with a policy that has hooks, a log of what the hook
// scripts and the cloud did, in order, and metrics.
type hookHarness struct {
	*harness
	log     *hookLog
	metrics *Metrics
}

// newHookHarness is the harness (its simulator changed by sim, when not nil) whose
// policy has hooks: the pre script runs preBody after logging, the post script
// postBody.
func newHookHarness(t *testing.T, preBody, postBody, preTimeout, onFailure string, sim func(*simcloud.Options)) *hookHarness {
	dir := t.TempDir()
	lg := &hookLog{path: filepath.Join(dir, "order.log")}
	pre := hookScript(t, dir, "pre", lg.path, preBody)
	post := hookScript(t, dir, "post", lg.path, postBody)
	opts := []harnessOption{withPolicy("hooks.yaml", fmt.Appendf(nil, hookPolicyYAML, pre, preTimeout, onFailure, post))}
	if sim != nil {
		opts = append(opts, withSim(sim))
	}
	h := newHarness(t, opts...)
	if errs := h.cfg.CheckHooks(); len(errs) > 0 {
		t.Fatalf("check hooks: %v", errs)
	}
	h.cloud = recordingCloud{Cloud: h.cloud, log: lg}
	return &hookHarness{harness: h, log: lg, metrics: NewMetrics(prometheus.NewRegistry(), BuildInfo{})}
}

func (h *hookHarness) run(t *testing.T, mod func(*runnerOptions)) (*SlotReport, error) {
	r := h.runner(func(o *runnerOptions) {
		o.Metrics = h.metrics
		if mod != nil {
			mod(o)
		}
	})
	return r.RunSlot(context.Background(), "v1", h.p, h.slot, TriggerManual)
}

func (h *hookHarness) hookRuns(hook, result string) float64 {
	return testutil.ToFloat64(h.metrics.hookRuns.WithLabelValues(h.p.Name, hook, result))
}

func (h *hookHarness) openHooks(t *testing.T) int {
	open, err := h.store.OpenHooks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(open)
}

// TestHooksOrder: pre runs before createImage; post after the snapshot's point in
// time (the task state has left image_snapshot/image_snapshot_pending, or the
// Cinder snapshots exist) and long before a slow upload makes the image active.
func TestHooksOrder(t *testing.T) {
	h := newHookHarness(t, "", "", "5s", "skip", func(o *simcloud.Options) {
		o.ImageQueueTime, o.ImageBuildTime = 400*time.Millisecond, 1500*time.Millisecond
	})
	img := h.sim.AddServer(simcloud.ServerSpec{Name: "db-img", Tags: []string{"backup=daily"}})
	vol := h.sim.AddServer(simcloud.ServerSpec{Name: "db-vol", Tags: []string{"backup=daily"}, Volumes: 2})
	h.sim.SlowNextImage(img, 3*time.Second)
	rep, err := h.run(t, nil)
	if err != nil || !rep.OK() {
		t.Fatalf("run: %v %+v", err, rep)
	}
	lines := h.log.lines(t)
	for _, l := range lines {
		t.Logf("%s %s", l.at.Format("15:04:05.000"), l.what)
	}
	for _, sv := range []struct{ id, name string }{{img, "db-img"}, {vol, "db-vol"}} {
		pre, create, created, post := index(lines, "pre "+sv.name), index(lines, "create "+sv.id),
			index(lines, "created "+sv.id), index(lines, "post "+sv.name)
		if pre < 0 || create < 0 || post < 0 || !(pre < create && created < post) {
			t.Fatalf("%s: want pre < createImage < post; pre %d create %d created %d post %d", sv.name, pre, create, created, post)
		}
		if !strings.HasSuffix(lines[post].what, " "+PostRequested) {
			t.Errorf("%s: post saw %q, want IMAGEKEEPER_RESULT=%s", sv.name, lines[post].what, PostRequested)
		}
	}
	// The image-backed server: the last task state read before post is past the
	// point in time, and post ran before the image could be active.
	post := index(lines, "post db-img")
	last := ""
	for _, l := range lines[:post] {
		if strings.HasPrefix(l.what, "task "+img+" ") {
			last = strings.TrimPrefix(l.what, "task "+img+" ")
		}
	}
	if last == "" || snapshotPointStates[last] {
		t.Errorf("post ran after task state %q; want one past image_snapshot", last)
	}
	sawSnapshot := false
	for _, l := range lines[:post] {
		if l.what == "task "+img+" image_snapshot_pending" || l.what == "task "+img+" image_snapshot" {
			sawSnapshot = true
		}
	}
	if !sawSnapshot {
		t.Errorf("post did not wait: no image_snapshot task state was read before it")
	}
	created := lines[index(lines, "created "+img)].at
	if d := lines[post].at.Sub(created); d > 3*time.Second {
		t.Errorf("post ran %s after createImage; the upload takes 4.5 s and post must not wait for it", d)
	}
	for _, row := range mustImages(t, h.store, h.p.Name) {
		if row.Metadata[cloud.StampConsistency] != cloud.ConsistencyApplication {
			t.Errorf("row %d consistency %q, want application", row.Row, row.Metadata[cloud.StampConsistency])
		}
		im, _ := h.sim.Image(row.ImageID)
		if im.Properties[cloud.StampConsistency] != cloud.ConsistencyApplication {
			t.Errorf("image %s property %s = %q", row.ImageID, cloud.StampConsistency, im.Properties[cloud.StampConsistency])
		}
	}
	if got := h.hookRuns(HookPre, HookOK); got != 2 {
		t.Errorf("hook_runs_total{pre,ok} = %v, want 2", got)
	}
	if got := h.hookRuns(HookPost, HookOK); got != 2 {
		t.Errorf("hook_runs_total{post,ok} = %v, want 2", got)
	}
	if n := h.openHooks(t); n != 0 {
		t.Errorf("%d journal rows still open", n)
	}
}

func mustImages(t *testing.T, st *store.Store, pol string) []store.Image {
	t.Helper()
	rows, err := st.Images(context.Background(), store.ImageFilter{Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// TestHooksPreFails: skip makes no image and still runs post; continue makes a
// crash-consistent image.
func TestHooksPreFails(t *testing.T) {
	for _, mode := range []string{"skip", "continue"} {
		t.Run(mode, func(t *testing.T) {
			h := newHookHarness(t, "echo frozen-not; exit 3", "", "5s", mode, nil)
			id := h.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: []string{"backup=daily"}})
			rep, err := h.run(t, nil)
			if err != nil {
				t.Fatal(err)
			}
			lines := h.log.lines(t)
			if index(lines, "post db-1") < 0 {
				t.Errorf("post did not run after a failed pre")
			}
			if got := h.hookRuns(HookPre, HookFailed); got != 1 {
				t.Errorf("hook_runs_total{pre,failed} = %v", got)
			}
			switch mode {
			case "skip":
				if len(rep.Servers) != 1 || rep.Servers[0].Outcome != ServerSkipped || rep.Servers[0].Reason != SkipHookFailed {
					t.Fatalf("servers %+v, want skipped hook_failed", rep.Servers)
				}
				if n := h.sim.CreateImageCalls(id); n != 0 {
					t.Errorf("createImage called %d times after a failed pre with skip", n)
				}
				if !strings.HasSuffix(lines[index(lines, "post db-1")].what, PostNotRequested) {
					t.Errorf("post result: %q", lines[index(lines, "post db-1")].what)
				}
				evs, _ := h.store.Events(context.Background(), store.EventFilter{Kind: store.EventHookFailed})
				if len(evs) != 1 || !strings.Contains(evs[0].Message, "frozen-not") {
					t.Errorf("hook_failed events %+v, want one with the pre's stdout", evs)
				}
			case "continue":
				if !rep.OK() || rep.Servers[0].Outcome != ServerGood {
					t.Fatalf("servers %+v, want good", rep.Servers)
				}
				row := mustImages(t, h.store, h.p.Name)[0]
				if row.Metadata[cloud.StampConsistency] != cloud.ConsistencyCrash {
					t.Errorf("consistency %q, want crash", row.Metadata[cloud.StampConsistency])
				}
			}
			if n := h.openHooks(t); n != 0 {
				t.Errorf("%d journal rows open", n)
			}
		})
	}
}

// TestHooksPreHangs: a pre that outlives its timeout is killed with its whole
// process group (its child too), and post still runs.
func TestHooksPreHangs(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	h := newHookHarness(t, "sleep 60 & echo $! > "+pidFile+"; sleep 60", "", "1s", "skip", nil)
	h.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: []string{"backup=daily"}})
	start := time.Now()
	rep, err := h.run(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("run took %s; the pre's timeout is 1s", d)
	}
	if rep.Servers[0].Outcome != ServerSkipped {
		t.Errorf("outcome %+v", rep.Servers[0])
	}
	if got := h.hookRuns(HookPre, HookTimeout); got != 1 {
		t.Errorf("hook_runs_total{pre,timeout} = %v", got)
	}
	if index(h.log.lines(t), "post db-1") < 0 {
		t.Errorf("post did not run after a pre that timed out")
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(5 * time.Second)
	for {
		// A killed child is gone once reaped (by init, its parent died too); a
		// zombie still answers signal 0, so read its state.
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(st), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pre's child %d still runs: the process group was not killed", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHooksPostFails: a failing post is recorded and counted; the image is still good.
func TestHooksPostFails(t *testing.T) {
	h := newHookHarness(t, "", "echo cannot thaw >&2; exit 1", "5s", "skip", nil)
	h.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: []string{"backup=daily"}})
	rep, err := h.run(t, nil)
	if err != nil || !rep.OK() {
		t.Fatalf("%v %+v", err, rep)
	}
	if got := h.hookRuns(HookPost, HookFailed); got != 1 {
		t.Errorf("hook_runs_total{post,failed} = %v", got)
	}
	evs, _ := h.store.Events(context.Background(), store.EventFilter{Kind: store.EventHookFailed})
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "cannot thaw") {
		t.Errorf("events %+v", evs)
	}
	if n := h.openHooks(t); n != 0 {
		t.Errorf("%d journal rows open after a failed post (it ran; nothing is owed)", n)
	}
}

// TestHooksCreateFails: createImage refused after pre: post runs at once.
func TestHooksCreateFails(t *testing.T) {
	h := newHookHarness(t, "", "", "5s", "skip", nil)
	id := h.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: []string{"backup=daily"}})
	h.cloud = failCreate{Cloud: h.cloud}
	rep, err := h.run(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Servers[0].Outcome != ServerFailed {
		t.Errorf("outcome %+v", rep.Servers[0])
	}
	lines := h.log.lines(t)
	p := index(lines, "post db-1")
	if p < 0 || !strings.HasSuffix(lines[p].what, PostCreateFailed) {
		t.Errorf("post after a failed createImage: %v", lines)
	}
	_ = id
	if n := h.openHooks(t); n != 0 {
		t.Errorf("%d journal rows open", n)
	}
}

type failCreate struct{ cloud.Cloud }

func (failCreate) CreateImage(context.Context, string, string, map[string]string) (string, error) {
	return "", &cloud.Error{Op: "create image", Status: 400, Kind: cloud.ErrInvalid, Reason: "refused"}
}

// TestHooksDrain: the run is stopped (a drain) between pre and post: post runs at
// once, and the image is recorded crash-consistent.
func TestHooksDrain(t *testing.T) {
	h := newHookHarness(t, "", "", "5s", "skip", func(o *simcloud.Options) {
		o.ImageQueueTime, o.ImageBuildTime = 30*time.Second, 60*time.Second
	})
	h.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: []string{"backup=daily"}})
	ctx, cancel := context.WithCancel(context.Background())
	h.cloud = cancelAfterCreate{Cloud: h.cloud, cancel: cancel}
	r := h.runner(func(o *runnerOptions) { o.Metrics = h.metrics })
	_, err := r.RunSlot(ctx, "v1", h.p, h.slot, TriggerScheduled)
	if !errors.Is(err, context.Canceled) {
		t.Logf("run: %v", err)
	}
	lines := h.log.lines(t)
	p := index(lines, "post db-1")
	if p < 0 || !strings.HasSuffix(lines[p].what, PostPointNotSeen) {
		t.Fatalf("post after a drain: %v", lines)
	}
	row := mustImages(t, h.store, h.p.Name)[0]
	if row.Metadata[cloud.StampConsistency] != cloud.ConsistencyCrash {
		t.Errorf("consistency %q after a post before the point in time, want crash", row.Metadata[cloud.StampConsistency])
	}
	if n := h.openHooks(t); n != 0 {
		t.Errorf("%d journal rows open", n)
	}
}

type cancelAfterCreate struct {
	cloud.Cloud
	cancel func()
}

func (c cancelAfterCreate) CreateImage(ctx context.Context, s, n string, md map[string]string) (string, error) {
	id, err := c.Cloud.CreateImage(ctx, s, n, md)
	c.cancel()
	return id, err
}

// TestHooksKilledBetween: a process killed after pre and createImage, before post,
// leaves an open journal row; the next start runs the post first.
func TestHooksKilledBetween(t *testing.T) {
	h := newHookHarness(t, "", "", "5s", "skip", nil)
	h.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: []string{"backup=daily"}})
	_, _ = h.run(t, func(o *runnerOptions) {
		o.hooks.afterCreate = func(string, string) error { return errors.New("kill -9") }
	})
	if index(h.log.lines(t), "post db-1") >= 0 {
		t.Fatal("post ran although the process was 'killed' before it")
	}
	if n := h.openHooks(t); n != 1 {
		t.Fatalf("%d open journal rows, want 1", n)
	}
	// The next start.
	r := h.runner(nil)
	n, err := r.RunOwedPostHooks(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("RunOwedPostHooks = %d, %v", n, err)
	}
	lines := h.log.lines(t)
	p := index(lines, "post db-1")
	if p < 0 || !strings.HasSuffix(lines[p].what, PostInterrupted) {
		t.Fatalf("post at the next start: %v", lines)
	}
	if n := h.openHooks(t); n != 0 {
		t.Errorf("%d journal rows open after the owed post ran", n)
	}
	if n, _ := r.RunOwedPostHooks(context.Background()); n != 0 {
		t.Errorf("a second start ran %d posts again", n)
	}
}

// TestHooksHostileName: a server name full of shell syntax reaches the hook as one
// argv element, verbatim, and nothing of it is interpreted.
func TestHooksHostileName(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "pwned")
	argsFile := filepath.Join(dir, "args")
	h := newHookHarness(t, `printf '%s' "$1" > `+argsFile, "", "5s", "skip", nil)
	name := "db; touch " + marker + " $(touch " + marker + ") `touch " + marker + "` | x && y > z"
	h.sim.AddServer(simcloud.ServerSpec{Name: name, Tags: []string{"backup=daily"}})
	if _, err := h.run(t, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the server name was interpreted by a shell")
	}
	got, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != name {
		t.Errorf("argv[1] = %q, want %q", got, name)
	}
}

// TestHookOutputBounded: at most MaxHookOutput bytes of each stream are kept.
func TestHookOutputBounded(t *testing.T) {
	res := runHookCommand(context.Background(), []string{"/bin/sh", "-c",
		"head -c 1000000 /dev/zero | tr '\\0' a; head -c 1000000 /dev/zero | tr '\\0' b >&2"}, nil, 10*time.Second)
	if res.Result != HookOK {
		t.Fatalf("result %+v", res.Result)
	}
	if len(res.Stdout) != MaxHookOutput || len(res.Stderr) != MaxHookOutput || !res.Truncated {
		t.Errorf("stdout %d stderr %d bytes truncated %v; want %d each, truncated", len(res.Stdout), len(res.Stderr),
			res.Truncated, MaxHookOutput)
	}
	env := runHookCommand(context.Background(), []string{"/usr/bin/env"}, map[string]string{"IMAGEKEEPER_SLOT": "x"}, 5*time.Second)
	if strings.Contains(env.Stdout, "HOME=") || !strings.Contains(env.Stdout, "IMAGEKEEPER_SLOT=x") {
		t.Errorf("hook environment is not clean: %q", env.Stdout)
	}
}
