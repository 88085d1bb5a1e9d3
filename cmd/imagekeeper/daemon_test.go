package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/scheduler"
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// policyYAML is one policy of the test config.
func policyYAML(name, every, tag string, extra string) string {
	return fmt.Sprintf(`  - name: %s
    select: {tags: [%s]}
    schedule: {cron: "%s"%s}
    image:
      name: '{{ .Server.Name }}-%s-{{ .Slot.Format "150405" }}'
      wait_timeout: 30s
    retention: {keep_last: 100, min_keep: 1}
`, name, tag, every, extra, name)
}

// running is a daemon started in-process.
type running struct {
	d        *Daemon
	sigs     chan os.Signal
	done     chan error
	addr     string
	st       *store.Store
	reloaded chan error
	logs     *syncBuffer
}

// daemonOpt changes a Daemon before it starts.
type daemonOpt func(*Daemon)

// start runs a daemon on the env and waits until it serves.
func (e *env) start(opts ...daemonOpt) *running {
	e.t.Helper()
	r := &running{sigs: make(chan os.Signal, 4), done: make(chan error, 1), reloaded: make(chan error, 16),
		logs: &syncBuffer{}}
	started := make(chan struct{})
	ctx, reload, abort := signalled(e.t, r.sigs)
	r.d = &Daemon{
		ConfigPath:         e.config,
		DrainTimeout:       30 * time.Second,
		Logger:             slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Getenv:             func(string) string { return "" },
		Reload:             reload,
		Abort:              abort,
		WatchInterval:      50 * time.Millisecond,
		RunnerPollInterval: 50 * time.Millisecond,
		NewCloud: func(ctx context.Context, cfg *policy.Config, log *slog.Logger, observe func(openstack.Request)) (cloud.Cloud, error) {
			return openstack.New(ctx, openstack.Options{CloudName: cfg.Cloud, Observe: observe, Logger: log,
				RetryBaseDelay: 10 * time.Millisecond,
				ParseOptions:   []clouds.ParseOption{clouds.WithLocations(e.clouds)}})
		},
		Started: func(addr string, st *store.Store) {
			r.addr, r.st = addr, st
			close(started)
		},
		Reloaded: func(err error) { r.reloaded <- err },
	}
	for _, o := range opts {
		o(r.d)
	}
	go func() { r.done <- r.d.Run(ctx) }()
	select {
	case <-started:
	case err := <-r.done:
		e.t.Fatalf("daemon exited before serving: %v\n%s", err, r.logs)
	case <-time.After(30 * time.Second):
		e.t.Fatalf("daemon did not start\n%s", r.logs)
	}
	e.t.Cleanup(func() {
		select {
		case r.sigs <- syscall.SIGTERM:
		default:
		}
		select {
		case r.sigs <- syscall.SIGTERM:
		default:
		}
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			e.t.Errorf("daemon did not stop")
		}
	})
	return r
}

// signalled passes the signals a test sends on sigs through main's forwardSignals
// and returns what they become: Run's context and the daemon's Reload and Abort.
func signalled(t *testing.T, sigs chan os.Signal) (ctx context.Context, reload, abort <-chan struct{}) {
	ctx, stop := context.WithCancelCause(context.Background())
	rl, ab := make(chan struct{}, 1), make(chan struct{})
	go forwardSignals(sigs, stop, rl, ab)
	t.Cleanup(func() { close(sigs) }) // after the daemon's: nothing sends any more
	return ctx, rl, ab
}

// stop sends SIGTERM and returns Run's error.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.sigs <- syscall.SIGTERM
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon did not drain\n%s", r.logs)
		return nil
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func slotsOf(t *testing.T, st *store.Store, p string) []store.Slot {
	t.Helper()
	sl, err := st.Slots(context.Background(), store.SlotFilter{Policy: p})
	if err != nil {
		t.Fatal(err)
	}
	return sl // newest first
}

func countOutcome(sl []store.Slot, outcomes ...store.SlotOutcome) int {
	n := 0
	for _, s := range sl {
		for _, o := range outcomes {
			if s.Outcome == o {
				n++
			}
		}
	}
	return n
}

// simImagesOf returns the simulator's images stamped with policy p.
func simImagesOf(sim *simcloud.Sim, p string) []simcloud.ImageState {
	var out []simcloud.ImageState
	for _, im := range sim.Images() {
		if im.Properties[cloud.StampPolicy] == p {
			out = append(out, im)
		}
	}
	return out
}

func daemonGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestDaemonRunsSlotsAndServes starts the daemon on two 1 s policies against the
// simulator: slots fire on their own, every slot gets a ledger row with no gaps,
// images become good in the cloud, and the HTTP endpoints answer.
func TestDaemonRunsSlotsAndServes(t *testing.T) {
	e := newEnv(t, simcloud.Options{})
	e.sim.AddServer(simcloud.ServerSpec{Name: "web-1", Tags: []string{"web"}})
	e.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: []string{"db"}, Volumes: 2})
	e.sim.AddServer(simcloud.ServerSpec{Name: "broken", Tags: []string{"web"}, Status: "ERROR"})
	e.writeConfig(policyYAML("web", "@every 1s", "web", "") + policyYAML("db", "@every 2s", "db", ""))
	r := e.start()

	eventually(t, "3 web slots and 2 db slots ran", 30*time.Second, func() bool {
		return countOutcome(slotsOf(t, r.st, "web"), store.OutcomeRan) >= 3 &&
			countOutcome(slotsOf(t, r.st, "db"), store.OutcomeRan) >= 2
	})
	code, body := daemonGet(t, "http://"+r.addr+"/healthz")
	if code != 200 {
		t.Errorf("/healthz = %d %q", code, body)
	}
	code, body = daemonGet(t, "http://"+r.addr+"/readyz")
	if code != 200 || !strings.Contains(body, "cloud: ok") || !strings.Contains(body, "store: ok") {
		t.Errorf("/readyz = %d %q", code, body)
	}
	code, body = daemonGet(t, "http://"+r.addr+"/metrics")
	if code != 200 || !strings.Contains(body, `imagekeeper_slots_total{outcome="ran",policy="web"}`) ||
		!strings.Contains(body, "imagekeeper_next_slot_timestamp_seconds") {
		t.Errorf("/metrics = %d, lacks slot metrics:\n%s", code, body)
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("clean drain returned %v\n%s", err, r.logs)
	}

	st := storetest.MustOpenAt(t, e.state, nil)
	for _, p := range []struct {
		name string
		step time.Duration
	}{{"web", time.Second}, {"db", 2 * time.Second}} {
		sl := slotsOf(t, st, p.name)
		for i := 1; i < len(sl); i++ {
			if gap := sl[i-1].Slot.Sub(sl[i].Slot); gap != p.step {
				t.Errorf("%s: slots %v and %v are %v apart: a slot has no outcome", p.name, sl[i].Slot, sl[i-1].Slot, gap)
			}
		}
		for _, s := range sl {
			if s.Outcome != store.OutcomeRan {
				t.Errorf("%s slot %v: outcome %s (%s)", p.name, s.Slot, s.Outcome, s.Reason)
			}
		}
	}
	good, err := st.Images(context.Background(), store.ImageFilter{States: []store.ImageState{store.ImageGood}})
	if err != nil {
		t.Fatal(err)
	}
	if len(good) < 5 {
		t.Fatalf("%d good images, want at least one per ran slot", len(good))
	}
	for _, im := range good {
		if _, ok := e.sim.Image(im.ImageID); !ok {
			t.Errorf("good image %s is not in the cloud", im.ImageID)
		}
	}
	for _, im := range e.sim.Images() {
		if s, _ := e.sim.Server(im.ServerID); s.Name == "broken" {
			t.Errorf("the server in ERROR got image %s", im.ID)
		}
	}
}

// TestDaemonReload edits the policy file under a running daemon: a policy is added,
// one is changed, one removed, then a broken file changes nothing; SIGHUP reloads too.
func TestDaemonReload(t *testing.T) {
	// Builds of two seconds keep a run of a in flight most of the time, so that the
	// reload below lands while one is.
	e := newEnv(t, simcloud.Options{ImageBuildTime: 2 * time.Second})
	e.sim.AddServer(simcloud.ServerSpec{Name: "a-1", Tags: []string{"a"}})
	e.sim.AddServer(simcloud.ServerSpec{Name: "b-1", Tags: []string{"b"}})
	e.sim.AddServer(simcloud.ServerSpec{Name: "g-1", Tags: []string{"g"}})
	const keepOne = "keep_last: 1, min_keep: 1"
	e.writeConfig(retentionPolicyYAML("a", "@every 1s", "a", keepOne, "") +
		retentionPolicyYAML("gone", "@every 1s", "g", keepOne, ""))
	r := e.start()
	ctx := context.Background()
	// A run of a that asked for its image just now holds a's lock for two seconds:
	// no retention of a runs until it ends, so a's good images now are exactly the
	// ones the reload finds.
	var aGood []store.Image
	var aBusy store.Image
	eventually(t, "a has a good image and the next just requested, and gone made an image", 60*time.Second, func() bool {
		good, _ := r.st.Images(ctx, store.ImageFilter{Policy: "gone", States: []store.ImageState{store.ImageGood}})
		aGood, _ = r.st.Images(ctx, store.ImageFilter{Policy: "a", States: []store.ImageState{store.ImageGood}})
		busy, _ := r.st.Images(ctx, store.ImageFilter{Policy: "a",
			States: []store.ImageState{store.ImageRequested, store.ImageCreating}})
		aBusy = store.Image{}
		for _, im := range busy {
			if time.Since(im.RequestedAt) < 300*time.Millisecond {
				aBusy = im
			}
		}
		return len(good) >= 1 && len(aGood) >= 1 && aBusy.Row != 0
	})
	version := r.d.currentVersion()

	// a moves to every 2 s and keeps 100, gone is removed, b is added. What was good
	// under the old rules is kept by the new ones, whatever was in flight.
	e.writeConfig(policyYAML("a", "@every 2s", "a", "") + policyYAML("b", "@every 1s", "b", ""))
	if err := waitReload(t, r); err != nil {
		t.Fatalf("reload failed: %v\n%s", err, r.logs)
	}
	swapped := time.Now()
	if v := r.d.currentVersion(); v == version {
		t.Fatal("config version unchanged after a good reload")
	}
	if im, err := r.st.Image(ctx, aBusy.Row); err != nil || im.State == store.ImageGood || im.State == store.ImageFailed {
		// The run ended (and retention ran) before the reload: the old rules applied.
		t.Logf("a's image in flight settled before the reload landed (%v, %v): not checking a's images", im.State, err)
		aGood = nil
	}
	goneImages := len(simImagesOf(e.sim, "gone"))
	eventually(t, "b ran twice and a ran on its new schedule", 60*time.Second, func() bool {
		return countOutcome(slotsOf(t, r.st, "b"), store.OutcomeRan) >= 2 &&
			len(slotsAfter(slotsOf(t, r.st, "a"), swapped.Add(time.Second))) >= 2
	})
	for _, s := range slotsAfter(slotsOf(t, r.st, "gone"), swapped.Add(time.Second)) {
		t.Errorf("removed policy took slot %v (%s)", s.Slot, s.Outcome)
	}
	for _, s := range slotsAfter(slotsOf(t, r.st, "a"), swapped.Add(time.Second)) {
		if s.Slot.Unix()%2 != 0 {
			t.Errorf("a took %v after moving to every 2 s", s.Slot)
		}
	}
	if n := len(simImagesOf(e.sim, "gone")); n < goneImages || goneImages == 0 {
		t.Errorf("removed policy's images: %d before, %d after: removal must not delete them", goneImages, n)
	}
	for _, im := range aGood {
		got, err := r.st.Image(ctx, im.Row)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != store.ImageGood {
			t.Errorf("a's image %s, good at the reload to keep_last 100, is now %s: pruned by the replaced rules",
				im.ImageID, got.State)
		}
	}

	// A broken file changes nothing.
	version = r.d.currentVersion()
	if err := os.WriteFile(e.config, []byte("policies:\n  - name: [oops\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := waitReload(t, r); err == nil {
		t.Fatal("a broken policy file reloaded")
	}
	if v := r.d.currentVersion(); v != version {
		t.Fatalf("a failed reload changed the config version %s -> %s", version, v)
	}
	before := countOutcome(slotsOf(t, r.st, "b"), store.OutcomeRan)
	eventually(t, "b still runs after the failed reload", 30*time.Second, func() bool {
		return countOutcome(slotsOf(t, r.st, "b"), store.OutcomeRan) >= before+2
	})
	if !strings.Contains(r.logs.String(), "reload failed; keeping the running config") {
		t.Errorf("failed reload not logged:\n%s", r.logs)
	}
	code, body := daemonGet(t, "http://"+r.addr+"/metrics")
	if code != 200 || !strings.Contains(body, "imagekeeper_config_last_reload_successful 0") {
		t.Errorf("reload metric not 0 after a failed reload:\n%s", grepLines(body, "reload"))
	}

	// SIGHUP reloads even when the file did not change (here: back to a good one).
	e.writeConfig(policyYAML("b", "@every 1s", "b", ""))
	if err := waitReload(t, r); err != nil {
		t.Fatal(err)
	}
	r.sigs <- syscall.SIGHUP
	if err := waitReload(t, r); err != nil {
		t.Fatalf("SIGHUP reload: %v", err)
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("drain: %v", err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func waitReload(t *testing.T, r *running) error {
	t.Helper()
	select {
	case err := <-r.reloaded:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("no reload\n%s", r.logs)
		return nil
	}
}

func slotsAfter(sl []store.Slot, t time.Time) []store.Slot {
	var out []store.Slot
	for _, s := range sl {
		if s.Slot.After(t) {
			out = append(out, s)
		}
	}
	return out
}

// TestDaemonDrainAndResume stops a daemon while it waits for a slow image: a
// drain that runs out leaves the image creating, and the next daemon on the same
// database finishes the wait; a second signal stops waiting at once.
func TestDaemonDrainAndResume(t *testing.T) {
	awayFromTheHour(t)
	e := newEnv(t, simcloud.Options{ImageBuildTime: 4 * time.Second})
	e.sim.AddServer(simcloud.ServerSpec{Name: "slow-1", Tags: []string{"slow"}})
	e.writeConfig(policyYAML("slow", "@every 1h", "slow", ", catch_up: latest, max_lateness: 2h"))
	// The store says the policy last ran long ago, so the start catches up at once.
	seedLastSlot(t, e.state, "slow", time.Now().Add(-3*time.Hour))

	r := e.start(func(d *Daemon) { d.DrainTimeout = 200 * time.Millisecond })
	eventually(t, "an image is being made", 30*time.Second, func() bool {
		ims, _ := r.st.Images(context.Background(), store.ImageFilter{Policy: "slow",
			States: []store.ImageState{store.ImageCreating}})
		return len(ims) == 1
	})
	err := r.stop(t)
	if !errors.Is(err, scheduler.ErrDrainInterrupted) {
		t.Fatalf("drain past its timeout returned %v, want ErrDrainInterrupted", err)
	}
	st := storetest.MustOpenAt(t, e.state, nil)
	ims, err := st.Images(context.Background(), store.ImageFilter{Policy: "slow"})
	if err != nil || len(ims) != 1 || ims[0].State != store.ImageCreating {
		t.Fatalf("after an interrupted drain: %+v, %v; want one image still creating", ims, err)
	}
	if sl, err := st.SlotByKey(context.Background(), "slow", ims[0].Slot); err != nil || sl.Outcome != store.OutcomeRunning {
		t.Fatalf("after an interrupted drain the slot is %+v, %v; want running", sl, err)
	}
	st.Close()

	r2 := e.start()
	eventually(t, "the resumed wait makes the image good", 30*time.Second, func() bool {
		ims, _ := r2.st.Images(context.Background(), store.ImageFilter{Policy: "slow"})
		return len(ims) == 1 && ims[0].State == store.ImageGood
	})
	if n := e.sim.CreateImageCalls(ims[0].ServerID); n != 1 {
		t.Fatalf("server imaged %d times; the restart must resume, not re-create", n)
	}
	// The slot the first daemon left running gets its outcome from the second.
	eventually(t, "the interrupted slot to get an outcome", 30*time.Second, func() bool {
		sl, err := r2.st.SlotByKey(context.Background(), "slow", ims[0].Slot)
		return err == nil && sl.Outcome == store.OutcomeCaughtUp && sl.Counts.Good == 1
	})
	if n := e.sim.CreateImageCalls(ims[0].ServerID); n != 1 {
		t.Fatalf("server imaged %d times after the interrupted slot was resumed", n)
	}
	if err := r2.stop(t); err != nil {
		t.Fatalf("clean drain: %v", err)
	}

	// A second signal stops waiting even with a long drain timeout.
	e.sim.AddServer(simcloud.ServerSpec{Name: "slow-2", Tags: []string{"slow2"}})
	e.writeConfig(policyYAML("slow2", "@every 1h", "slow2", ", catch_up: latest, max_lateness: 2h"))
	seedLastSlot(t, e.state, "slow2", time.Now().Add(-3*time.Hour))
	r3 := e.start(func(d *Daemon) { d.DrainTimeout = time.Hour })
	eventually(t, "a new image is being made", 30*time.Second, func() bool {
		ims, _ := r3.st.Images(context.Background(), store.ImageFilter{Policy: "slow2",
			States: []store.ImageState{store.ImageCreating}})
		return len(ims) >= 1
	})
	r3.sigs <- syscall.SIGTERM
	r3.sigs <- syscall.SIGINT
	select {
	case err := <-r3.done:
		r3.done <- err
		if !errors.Is(err, scheduler.ErrDrainInterrupted) {
			t.Fatalf("second signal: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a second signal did not stop the drain")
	}
}

// awayFromTheHour returns the time once it is at least 3 s past an hour and 60 s
// before the next one: tests on "@every 1h" policies must not see a live slot fire
// mid-test, and need the latest slot older than a 2 s max_lateness.
func awayFromTheHour(t *testing.T) time.Time {
	t.Helper()
	now := time.Now().UTC()
	into := now.Sub(now.Truncate(time.Hour))
	switch {
	case into < 3*time.Second:
		time.Sleep(3*time.Second - into)
	case into > time.Hour-60*time.Second:
		t.Logf("waiting %v for the hour to pass", time.Hour+3*time.Second-into)
		time.Sleep(time.Hour + 3*time.Second - into)
	}
	return time.Now().UTC()
}

// seedLastSlot records a ran slot for p in the store at path, as a daemon that
// stopped after it would have left it.
func seedLastSlot(t *testing.T, path, p string, slot time.Time) {
	t.Helper()
	st := storetest.MustOpenAt(t, path, nil)
	defer st.Close() // before the daemon the test starts opens it
	sl, err := st.StartSlot(context.Background(), store.Slot{Policy: p, Slot: slot.UTC().Truncate(time.Second),
		Trigger: store.TriggerScheduled})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.FinishSlot(context.Background(), sl.ID, store.OutcomeRan, "", store.SlotCounts{}); err != nil {
		t.Fatal(err)
	}
}

// TestDaemonCatchUp restarts a daemon whose store says the policy last ran hours
// ago: the latest missed hourly slot is caught up when catch_up is latest and it is
// within max_lateness, and recorded missed otherwise; earlier ones are missed.
func TestDaemonCatchUp(t *testing.T) {
	latest := awayFromTheHour(t).Truncate(time.Hour)
	tests := []struct {
		name      string
		schedule  string
		wantCatch bool
	}{
		{"latest within max_lateness", `, catch_up: latest, max_lateness: 2h`, true},
		{"latest beyond max_lateness", `, catch_up: latest, max_lateness: 2s`, false},
		{"none", `, catch_up: none, max_lateness: 2h`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, simcloud.Options{})
			srv := e.sim.AddServer(simcloud.ServerSpec{Name: "h-1", Tags: []string{"h"}})
			e.writeConfig(policyYAML("hourly", "@every 1h", "h", tt.schedule))
			// Down since 3 hours before the latest slot: 3 slots were missed.
			seedLastSlot(t, e.state, "hourly", latest.Add(-3*time.Hour))
			r := e.start()
			if tt.wantCatch {
				eventually(t, "the caught-up slot finishes", 30*time.Second, func() bool {
					return countOutcome(slotsOf(t, r.st, "hourly"), store.OutcomeCaughtUp) == 1
				})
			}
			if err := r.stop(t); err != nil {
				t.Fatal(err)
			}
			st := storetest.MustOpenAt(t, e.state, nil)
			got := map[string]store.SlotOutcome{}
			for _, s := range slotsOf(t, st, "hourly") {
				got[s.Slot.UTC().Format("15:04")] = s.Outcome
			}
			want := map[string]store.SlotOutcome{
				latest.Add(-3 * time.Hour).Format("15:04"): store.OutcomeRan,
				latest.Add(-2 * time.Hour).Format("15:04"): store.OutcomeMissed,
				latest.Add(-1 * time.Hour).Format("15:04"): store.OutcomeMissed,
				latest.Format("15:04"):                     store.OutcomeMissed,
			}
			if tt.wantCatch {
				want[latest.Format("15:04")] = store.OutcomeCaughtUp
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("ledger %v\nwant   %v", got, want)
			}
			imgs := simImagesOf(e.sim, "hourly")
			if tt.wantCatch {
				if len(imgs) != 1 || imgs[0].Properties[cloud.StampSlot] != latest.Format(time.RFC3339) ||
					imgs[0].ServerID != srv {
					t.Fatalf("images %+v, want one of %s for slot %s", imgs, srv, latest.Format(time.RFC3339))
				}
			} else if len(imgs) != 0 {
				t.Fatalf("no slot ran, yet images %+v exist", imgs)
			}
		})
	}
}

// TestSecondDaemonRefused starts two daemons on one database: the second fails at
// once with an error naming the first one's PID.
func TestSecondDaemonRefused(t *testing.T) {
	e := newEnv(t, simcloud.Options{})
	e.writeConfig(policyYAML("a", "@every 1h", "a", ""))
	r := e.start()
	second := &Daemon{ConfigPath: e.config, Getenv: func(string) string { return "" },
		NewCloud: func(context.Context, *policy.Config, *slog.Logger, func(openstack.Request)) (cloud.Cloud, error) {
			t.Error("the second daemon got as far as the cloud")
			return nil, errors.New("unreachable")
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := second.Run(ctx)
	if !errors.Is(err, errLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second daemon: %v; want errLocked naming pid %d", err, os.Getpid())
	}
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitFailure {
		t.Fatalf("second daemon exit code: %v", err)
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

// TestDaemonNotifiesSystemd runs the daemon with NOTIFY_SOCKET and WATCHDOG_USEC
// set and checks what systemd would see, in order.
func TestDaemonNotifiesSystemd(t *testing.T) {
	path, next := notifySocket(t)
	e := newEnv(t, simcloud.Options{})
	e.writeConfig(policyYAML("a", "@every 1h", "a", ""))
	environ := map[string]string{"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}
	r := e.start(func(d *Daemon) { d.Getenv = func(k string) string { return environ[k] } })
	// nextState skips watchdog pings, counting them.
	pings := 0
	nextState := func() string {
		for {
			m := next()
			if m != "WATCHDOG=1" {
				return m
			}
			pings++
		}
	}
	if got := nextState(); got != "READY=1" {
		t.Fatalf("first state %q, want READY=1", got)
	}
	r.sigs <- syscall.SIGHUP
	if got := nextState(); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Fatalf("reload state %q", got)
	}
	if got := nextState(); got != "READY=1" {
		t.Fatalf("after reload %q, want READY=1", got)
	}
	for pings == 0 {
		if m := next(); m != "WATCHDOG=1" {
			t.Fatalf("unexpected %q while waiting for a watchdog ping", m)
		}
		pings++
	}
	r.sigs <- syscall.SIGTERM
	if got := nextState(); got != "STOPPING=1" {
		t.Fatalf("stop state %q, want STOPPING=1", got)
	}
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	r.done <- nil
}

// TestReadyzReportsCloudDown makes the cloud unreachable: /readyz turns 503 and
// says the cloud is what fails.
func TestReadyzReportsCloudDown(t *testing.T) {
	e := newEnv(t, simcloud.Options{})
	e.writeConfig(policyYAML("a", "@every 1h", "a", ""))
	r := e.start(func(d *Daemon) { d.CloudFreshness = time.Nanosecond })
	if code, body := daemonGet(t, "http://"+r.addr+"/readyz"); code != 200 {
		t.Fatalf("/readyz with a healthy cloud = %d %q", code, body)
	}
	e.sim.SetFault(simcloud.Fault{Op: "*", ErrorStatus: 503})
	code, body := daemonGet(t, "http://"+r.addr+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "cloud: down since") ||
		!strings.Contains(body, "store: ok") {
		t.Fatalf("/readyz with the cloud down = %d %q\n%s", code, body, r.logs)
	}
	if code, _ := daemonGet(t, "http://"+r.addr+"/healthz"); code != 200 {
		t.Fatalf("/healthz = %d while the process serves", code)
	}
	e.sim.ClearFaults()
}

func TestDaemonFlags(t *testing.T) {
	var stdout, stderr strings.Builder
	m := &Main{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }}
	if code := m.Run(context.Background(), []string{"daemon", "--drain-timeout", "0s"}); code != exitUsage {
		t.Fatalf("--drain-timeout 0s: exit %d, want %d (%s)", code, exitUsage, stderr.String())
	}
	stderr.Reset()
	code := m.Run(context.Background(), []string{"daemon", "--config", filepath.Join(t.TempDir(), "missing.yaml")})
	// A file that is not there is a usage error (exit 2), as for every command.
	if code != exitUsage || !strings.Contains(stderr.String(), "missing.yaml") {
		t.Fatalf("missing config: exit %d, stderr %q", code, stderr.String())
	}
}

// TestDaemonReconcilesPeriodically arranges an image that carries our owner stamp
// but has no lineage row: the daemon's periodic reconcile must report it as drift
// and must not delete it (the stamp alone proves nothing).
func TestDaemonReconcilesPeriodically(t *testing.T) {
	e := newEnv(t, simcloud.Options{})
	e.sim.AddServer(simcloud.ServerSpec{Name: "a-1", Tags: []string{"a"}})
	e.writeConfig(policyYAML("a", "@every 1h", "a", ""))
	r := e.start(func(d *Daemon) { d.ReconcileInterval = 100 * time.Millisecond })
	stray := e.sim.PutImage(simcloud.ImageState{Name: "stray", Status: "active", Properties: cloud.Stamp{
		Owner: r.st.Owner(), Policy: "a", Server: "not-in-lineage", Slot: "2026-11-24T18:30:00Z"}.Properties()})
	eventually(t, "the periodic reconcile to report the stray image", 30*time.Second, func() bool {
		return strings.Contains(r.logs.String(), "reconcile found drift") &&
			strings.Contains(r.logs.String(), "stamped_unknown=1")
	})
	if _, ok := e.sim.Image(stray); !ok {
		t.Fatal("the periodic reconcile deleted an image it cannot prove ours")
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("drain: %v", err)
	}
}
