package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/cloudtest"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// TestRunSlotFiftyServers is the acceptance run: 50 mixed servers, two in ERROR, one
// busy: every eligible server gets exactly one good image, skips are recorded with
// reasons, and the lineage matches the cloud. Running the same slot again makes no
// new image.
func TestRunSlotFiftyServers(t *testing.T) {
	h := newHarness(t)
	ids := h.addServers(50)
	h.sim.SetServerStatus(ids[3], "ERROR")
	h.sim.SetServerStatus(ids[10], "ERROR")
	h.sim.SetServerTaskState(ids[20], "image_uploading")
	// Not selected: wrong tags, or excluded.
	other := h.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: []string{"backup=weekly"}})
	excluded := h.sim.AddServer(simcloud.ServerSpec{Name: "web-x", Tags: []string{"backup=daily", "no-backup"}})

	var mu sync.Mutex
	var events []ProgressEvent
	metrics := NewMetrics(prometheus.NewRegistry(), BuildInfo{Version: "test"})
	r := h.runner(func(o *runnerOptions) {
		o.Progress = func(e ProgressEvent) { mu.Lock(); events = append(events, e); mu.Unlock() }
		o.Metrics = metrics
	})
	ctx := context.Background()
	rep, err := r.RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerManual)
	if err != nil {
		t.Fatalf("RunSlot: %v", err)
	}
	want := store.SlotCounts{Selected: 50, Good: 47, Skipped: 3}
	if rep.Counts != want {
		t.Errorf("counts = %+v, want %+v", rep.Counts, want)
	}
	if rep.Outcome != store.OutcomeRan || !rep.OK() {
		t.Errorf("outcome %s ok=%v reason %q", rep.Outcome, rep.OK(), rep.Reason)
	}
	skips := map[string]string{}
	for _, s := range rep.Servers {
		if s.Outcome == ServerSkipped {
			skips[s.ServerID] = s.Reason
		}
	}
	wantSkips := map[string]string{ids[3]: SkipErrorState, ids[10]: SkipErrorState, ids[20]: SkipBusy}
	if fmt.Sprint(skips) != fmt.Sprint(wantSkips) {
		t.Errorf("skips = %v, want %v", skips, wantSkips)
	}
	// Skips are in the audit with their reasons.
	evs, err := h.store.Events(ctx, store.EventFilter{Kind: store.EventServerSkipped, SlotID: rep.SlotID})
	if err != nil {
		t.Fatal(err)
	}
	gotEv := map[string]string{}
	for _, e := range evs {
		gotEv[e.ServerID] = strings.SplitN(e.Message, ":", 2)[0]
	}
	if fmt.Sprint(gotEv) != fmt.Sprint(wantSkips) {
		t.Errorf("skip events = %v, want %v", gotEv, wantSkips)
	}
	stamped := h.stampedImages()
	for i, id := range ids {
		_, skipped := wantSkips[id]
		n := len(stamped[id])
		if skipped && n != 0 || !skipped && n != 1 {
			t.Errorf("server %d (%s): %d images, skipped=%v", i, id, n, skipped)
		}
		if !skipped && h.sim.CreateImageCalls(id) != 1 {
			t.Errorf("server %s: %d createImage calls", id, h.sim.CreateImageCalls(id))
		}
	}
	for _, id := range []string{other, excluded} {
		if h.sim.CreateImageCalls(id) != 0 {
			t.Errorf("unselected server %s was imaged", id)
		}
	}
	rows, _ := h.store.Images(ctx, store.ImageFilter{Policy: "web"})
	if len(rows) != 47 {
		t.Errorf("%d lineage rows, want 47", len(rows))
	}
	for _, row := range rows {
		if row.State != store.ImageGood {
			t.Errorf("row of %s is %s (%s)", row.ServerID, row.State, row.Reason)
		}
		if row.Metadata[cloud.StampOwner] != h.store.Owner() || row.Metadata["source"] != row.ServerID {
			t.Errorf("row metadata %v", row.Metadata)
		}
		if !strings.HasPrefix(row.Name, "web-") || !strings.HasSuffix(row.Name, "-20261125-0230") {
			t.Errorf("rendered name %q (slot in Asia/Shanghai)", row.Name)
		}
		if row.PolicyVersion != h.p.Version || row.ConfigVersion != h.cfg.Version {
			t.Errorf("versions %q/%q", row.PolicyVersion, row.ConfigVersion)
		}
	}
	h.checkLineageMatchesCloud()
	sl, err := h.store.SlotByKey(ctx, "web", h.slot)
	if err != nil || sl.Outcome != store.OutcomeRan || sl.Counts != want || sl.Trigger != store.TriggerManual {
		t.Errorf("slot row = %+v, %v", sl, err)
	}
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"images created good", testutil.ToFloat64(metrics.imagesCreated.WithLabelValues("web", CreateGood)), 47},
		{"images created failed", testutil.ToFloat64(metrics.imagesCreated.WithLabelValues("web", CreateFailed)), 0},
		{"skipped error_state", testutil.ToFloat64(metrics.serversSkipped.WithLabelValues("web", SkipErrorState)), 2},
		{"skipped busy", testutil.ToFloat64(metrics.serversSkipped.WithLabelValues("web", SkipBusy)), 1},
		{"slots ran", testutil.ToFloat64(metrics.slots.WithLabelValues("web", string(store.OutcomeRan))), 1},
		{"servers selected", testutil.ToFloat64(metrics.serversSelected.WithLabelValues("web")), 50},
	} {
		if c.got != c.want {
			t.Errorf("metric %s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if len(events) != 51 || events[0].Total != 50 || events[0].Done != 0 || events[50].Done != 50 {
		t.Errorf("progress: %d events (first %+v)", len(events), events[0])
	}

	// The same slot again: nothing new is asked for.
	before := h.totalCreateCalls(ids)
	rep2, err := h.runner(nil).RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerManual)
	if err != nil {
		t.Fatal(err)
	}
	if after := h.totalCreateCalls(ids); after != before {
		t.Errorf("second run made %d createImage calls", after-before)
	}
	if rep2.Counts.Good != 47 || rep2.Counts.Existing != 47 || rep2.Counts.Skipped != 3 {
		t.Errorf("second run counts = %+v", rep2.Counts)
	}
	sl, _ = h.store.SlotByKey(ctx, "web", h.slot)
	if sl.Runs != 2 {
		t.Errorf("slot runs = %d, want 2", sl.Runs)
	}
	h.checkLineageMatchesCloud()
}

// TestCrashPoints stops a run at each crash point and checks that the next run (or
// ResumeWaits) adopts every stamped image and no slot gets two images.
func TestCrashPoints(t *testing.T) {
	errCrash := errors.New("crash")
	cases := []struct {
		name   string
		hooks  runHooks
		resume bool // finish with ResumeWaits instead of a re-run
		calls  int  // createImage calls per server expected in the end
	}{
		{name: "after intent", hooks: runHooks{afterIntent: func(string) error { return errCrash }}, calls: 1},
		{name: "after call before id", hooks: runHooks{afterCreate: func(string, string) error { return errCrash }}, calls: 1},
		{name: "after call before id, resumed", hooks: runHooks{afterCreate: func(string, string) error { return errCrash }}, resume: true, calls: 1},
		{name: "during wait", hooks: runHooks{beforePoll: func(int) error { return errCrash }}, calls: 1},
		{name: "during wait, resumed", hooks: runHooks{beforePoll: func(int) error { return errCrash }}, resume: true, calls: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			ids := h.addServers(6)
			ctx := context.Background()
			crashing := h.runner(func(o *runnerOptions) { o.hooks = tc.hooks })
			if _, err := crashing.RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerScheduled); err != nil && !errors.Is(err, errAbandoned) {
				t.Logf("crashed run: %v", err)
			}
			rows, _ := h.store.Images(ctx, store.ImageFilter{Policy: "web"})
			if len(rows) != len(ids) {
				t.Fatalf("after the crash: %d rows, want %d", len(rows), len(ids))
			}
			for _, row := range rows {
				if row.State == store.ImageGood || row.State == store.ImageFailed {
					t.Errorf("after the crash row of %s is already %s", row.ServerID, row.State)
				}
			}
			fresh := h.runner(nil)
			if tc.resume {
				if err := fresh.ResumeWaits(ctx, policy.NewCoordinator(h.cfg)); err != nil {
					t.Fatal(err)
				}
			} else {
				rep, err := fresh.RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerScheduled)
				if err != nil {
					t.Fatal(err)
				}
				if rep.Counts.Good != len(ids) {
					t.Errorf("re-run counts %+v", rep.Counts)
				}
			}
			rows, _ = h.store.Images(ctx, store.ImageFilter{Policy: "web"})
			for _, row := range rows {
				if row.State != store.ImageGood {
					t.Errorf("row of %s is %s (%s)", row.ServerID, row.State, row.Reason)
				}
				wantAdopted := tc.hooks.afterCreate != nil
				if row.Adopted != wantAdopted {
					t.Errorf("row of %s adopted=%v, want %v", row.ServerID, row.Adopted, wantAdopted)
				}
			}
			for _, id := range ids {
				if n := h.sim.CreateImageCalls(id); n != tc.calls {
					t.Errorf("server %s: %d createImage calls, want %d", id, n, tc.calls)
				}
			}
			h.checkLineageMatchesCloud()
		})
	}
}

// TestUnknownOutcomeIsAdopted: createImage is processed but the answer is a 500 (an
// unknown outcome): the stamped image is adopted, never asked for twice.
func TestUnknownOutcomeIsAdopted(t *testing.T) {
	h := newHarness(t)
	ids := h.addServers(4)
	h.sim.SetFault(simcloud.Fault{Op: "compute.createImage", ErrorStatus: 500, After: true, Count: 2})
	rep, err := h.runner(nil).RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerScheduled)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts.Good != 4 || !rep.OK() {
		t.Errorf("counts %+v", rep.Counts)
	}
	adopted := 0
	for _, s := range rep.Servers {
		if s.Adopted {
			adopted++
		}
	}
	if adopted != 2 {
		t.Errorf("%d adopted, want 2", adopted)
	}
	for _, id := range ids {
		if n := h.sim.CreateImageCalls(id); n != 1 {
			t.Errorf("server %s: %d createImage calls", id, n)
		}
	}
	h.checkLineageMatchesCloud()
}

// TestFailures: each failure ends in failed with its reason, and nothing is
// recorded good that is not.
func TestFailures(t *testing.T) {
	cases := []struct {
		name    string
		volumes int
		arrange func(h *harness, id string)
		reason  string
		snap    store.SnapshotState // expected state of the row's snapshots, "" for none
	}{
		{name: "snapshot fails, image vanishes", arrange: func(h *harness, id string) { h.sim.FailNextSnapshot(id) },
			reason: "vanished while waiting (Glance 404)"},
		{name: "volume-backed snapshot fails", volumes: 1, arrange: func(h *harness, id string) { h.sim.FailNextSnapshot(id) },
			reason: "vanished"},
		{name: "stuck in saving past wait_timeout", arrange: func(h *harness, id string) { h.sim.StickNextImage(id) },
			reason: "not good within wait_timeout 1s: image"},
		{name: "volume snapshot in error", volumes: 2, arrange: func(h *harness, id string) { h.sim.FailNextVolumeSnapshot(id) },
			reason: "is error", snap: store.SnapshotError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The cloud's time moves only by what the Runner sleeps (between polls;
			// within one, only sub-millisecond rate-limit waits), so a poll sees the
			// cloud at one instant. On the wall clock, a poll that listed the
			// volume-backed image just before it vanished (at 30 ms) and read its
			// snapshots after they went to error (at 60 ms), which load makes
			// possible, rightly reported the error instead of the vanishing.
			cloudClock := storetest.NewClock(time.Now())
			h := newHarness(t, withWaitTimeout("1s"), withSim(func(o *simcloud.Options) { o.Now = cloudClock.Now }))
			good := h.sim.AddServer(simcloud.ServerSpec{Name: "ok", Tags: []string{"backup=daily"}, Volumes: tc.volumes})
			bad := h.sim.AddServer(simcloud.ServerSpec{Name: "bad", Tags: []string{"backup=daily"}, Volumes: tc.volumes})
			tc.arrange(h, bad)
			r := h.runner(func(o *runnerOptions) {
				o.Sleep = func(ctx context.Context, d time.Duration) error {
					if err := sleepCtx(ctx, d); err != nil {
						return err
					}
					cloudClock.Advance(d)
					return nil
				}
			})
			rep, err := r.RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerScheduled)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK() || rep.Counts.Good != 1 || rep.Counts.Failed != 1 {
				t.Errorf("ok=%v counts %+v", rep.OK(), rep.Counts)
			}
			ctx := context.Background()
			row, err := h.store.ImageByKey(ctx, "web", bad, h.slot)
			if err != nil {
				t.Fatal(err)
			}
			if row.State != store.ImageFailed || !strings.Contains(row.Reason, tc.reason) || row.ImageID == "" {
				t.Errorf("bad row: %s %q (image %q), want failed with %q", row.State, row.Reason, row.ImageID, tc.reason)
			}
			if tc.snap != "" {
				snaps, _ := h.store.Snapshots(ctx, row.Row)
				if len(snaps) == 0 {
					t.Errorf("no snapshots recorded for the failed image")
				}
				// The wait fails the image at the first snapshot it reads in error; a
				// sibling read a moment earlier may still be recorded creating, as it
				// was then. None may be recorded available.
				inState := 0
				for _, sn := range snaps {
					switch sn.State {
					case tc.snap:
						inState++
					case store.SnapshotCreating:
					default:
						t.Errorf("snapshot %s is %s, want %s (or creating, as last read)", sn.SnapshotID, sn.State, tc.snap)
					}
				}
				if inState == 0 {
					t.Errorf("no snapshot of the failed image is recorded %s", tc.snap)
				}
			}
			okRow, _ := h.store.ImageByKey(ctx, "web", good, h.slot)
			if okRow.State != store.ImageGood {
				t.Errorf("good server's row is %s (%s)", okRow.State, okRow.Reason)
			}
			evs, _ := h.store.Events(ctx, store.EventFilter{ImageRow: row.Row, Kind: store.EventImageFailed})
			if len(evs) != 1 || evs[0].Message != row.Reason {
				t.Errorf("failure events = %+v", evs)
			}
			h.checkLineageMatchesCloud()
		})
	}
}

// Test429Storm: the cloud throttles every kind of call for a while; the run still
// ends with each server good, and a createImage that stays throttled past the
// adapter's retries fails with the reason, never recorded good.
func Test429Storm(t *testing.T) {
	t.Run("passing storm", func(t *testing.T) {
		h := newHarness(t)
		ids := h.addServers(8)
		for _, op := range []string{"compute.createImage", "image.list", "image.get", "volume.snapshots.get"} {
			h.sim.SetFault(simcloud.Fault{Op: op, Status429RetryAfter: time.Millisecond, ErrorRate: 0.5, Count: 3})
		}
		rep, err := h.runner(nil).RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerScheduled)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Counts.Good != len(ids) || !rep.OK() {
			t.Errorf("counts %+v", rep.Counts)
		}
		for _, id := range ids {
			if n := h.sim.CreateImageCalls(id); n < 1 {
				t.Errorf("server %s: no createImage call", id)
			}
		}
		h.checkLineageMatchesCloud()
	})
	t.Run("createImage throttled past retries", func(t *testing.T) {
		h := newHarness(t, withAdapter(func(o *openstack.Options) { o.MaxRetries = 1 }))
		ok := h.sim.AddServer(simcloud.ServerSpec{Name: "a", Tags: []string{"backup=daily"}})
		h.sim.SetFault(simcloud.Fault{Op: "compute.createImage", Status429RetryAfter: time.Millisecond, Count: 2})
		rep, err := h.runner(func(o *runnerOptions) { o.Limits.Concurrency = 1 }).RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerScheduled)
		if err != nil {
			t.Fatal(err)
		}
		row, err := h.store.ImageByKey(context.Background(), "web", ok, h.slot)
		if err != nil {
			t.Fatal(err)
		}
		if rep.OK() || row.State != store.ImageFailed || row.ImageID != "" || !strings.Contains(row.Reason, "createImage") {
			t.Errorf("throttled server: ok=%v row %s %q id %q", rep.OK(), row.State, row.Reason, row.ImageID)
		}
		if len(h.stampedImages()) != 0 {
			t.Errorf("an image exists although every createImage was throttled")
		}
	})
}

// TestBusyOnCreateIsASkip: Nova answers 409 (task in progress appeared after the
// listing): the server is skipped as busy, the intent row is dropped with an audit
// event, and a later run of the slot images it.
func TestBusyOnCreateIsASkip(t *testing.T) {
	h := newHarness(t)
	id := h.sim.AddServer(simcloud.ServerSpec{Name: "w", Tags: []string{"backup=daily"}})
	h.sim.SetFault(simcloud.Fault{Op: "compute.createImage", ErrorStatus: 409, Count: 1})
	ctx := context.Background()
	rep, err := h.runner(nil).RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerScheduled)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Servers) != 1 || rep.Servers[0].Outcome != ServerSkipped || rep.Servers[0].Reason != SkipBusy || !rep.OK() {
		t.Fatalf("report %+v", rep.Servers)
	}
	if _, err := h.store.ImageByKey(ctx, "web", id, h.slot); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("busy intent row still there: %v", err)
	}
	evs, _ := h.store.Events(ctx, store.EventFilter{ServerID: id, Kind: store.EventIntentDropped})
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "busy") {
		t.Errorf("drop events %+v", evs)
	}
	rep, err = h.runner(nil).RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerScheduled)
	if err != nil || rep.Counts.Good != 1 {
		t.Errorf("re-run: %+v %v", rep, err)
	}
	h.checkLineageMatchesCloud()
}

// TestSpreadDelaysScheduledRuns: a scheduled run starts each server at its stable
// offset after the slot; a manual one does not wait.
func TestSpreadDelaysScheduledRuns(t *testing.T) {
	h := newHarness(t)
	ids := h.addServers(3)
	now := h.slot // the run starts exactly at the slot
	var mu sync.Mutex
	slept := map[time.Duration]bool{}
	r := h.runner(func(o *runnerOptions) {
		o.Now = func() time.Time { return now }
		o.Sleep = func(ctx context.Context, d time.Duration) error {
			mu.Lock()
			slept[d] = true
			mu.Unlock()
			return sleepCtx(ctx, min(d, 10*time.Millisecond))
		}
		o.DefaultWaitTimeout = time.Hour
	})
	if _, err := r.RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerScheduled); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		off := spreadOffset("web", id, 20*time.Minute)
		if off <= 0 || off >= 20*time.Minute || !slept[off] {
			t.Errorf("server %s: offset %v not slept (slept %v)", id, off, slept)
		}
	}
}

// TestResumeFailsIntentWithoutImage: a process died after writing the intent and
// before calling createImage; after a restart ResumeWaits finds no stamped image
// and, once wait_timeout has passed, records the row failed with the reason (a
// later run of that slot may then try again).
func TestResumeFailsIntentWithoutImage(t *testing.T) {
	h := newHarness(t, withWaitTimeout("300ms"))
	ids := h.addServers(2)
	ctx := context.Background()
	crashing := h.runner(func(o *runnerOptions) {
		o.hooks.afterIntent = func(string) error { return errors.New("crash") }
	})
	_, _ = crashing.RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerScheduled)
	if err := h.runner(nil).ResumeWaits(ctx, policy.NewCoordinator(h.cfg)); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		row, err := h.store.ImageByKey(ctx, "web", id, h.slot)
		if err != nil {
			t.Fatal(err)
		}
		if row.State != store.ImageFailed || !strings.Contains(row.Reason, "no image with our stamp appeared") {
			t.Errorf("row of %s: %s %q", id, row.State, row.Reason)
		}
		if h.sim.CreateImageCalls(id) != 0 {
			t.Errorf("ResumeWaits called createImage")
		}
	}
	// A re-run of the slot looks for the stamp, finds none, and makes the image.
	rep, err := h.runner(nil).RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerScheduled)
	if err != nil || rep.Counts.Good != 2 {
		t.Fatalf("re-run: %+v, %v", rep, err)
	}
	for _, id := range ids {
		row, _ := h.store.ImageByKey(ctx, "web", id, h.slot)
		if row.Attempts != 1 || row.State != store.ImageGood {
			t.Errorf("row of %s after re-run: %s, %d attempts", id, row.State, row.Attempts)
		}
	}
	h.checkLineageMatchesCloud()
}

// TestStopWhileQueuedRecordsNoAttempt: a run stopped while its createImage waits
// for a rate-limit token has sent nothing, so the row records no attempt and the
// resumed slot calls createImage at once instead of waiting wait_timeout for a
// stamped image that cannot exist and failing the server.
func TestStopWhileQueuedRecordsNoAttempt(t *testing.T) {
	h := newHarness(t, withWaitTimeout("15s"))
	id := h.sim.AddServer(simcloud.ServerSpec{Name: "w", Tags: []string{"backup=daily"}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	queued := h.runner(func(o *runnerOptions) {
		// One call a second: ListServers takes the only token, createImage queues.
		o.Limits = policy.Limits{RequestsPerSecond: 1, Concurrency: 2}
		o.Sleep = func(ctx context.Context, d time.Duration) error {
			cancel() // the drain's second SIGTERM arrives while the call is queued
			return ctx.Err()
		}
	})
	if _, err := queued.RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerScheduled); err == nil {
		t.Fatal("stopped run returned no error")
	}
	bg := context.Background()
	row, err := h.store.ImageByKey(bg, "web", id, h.slot)
	if err != nil {
		t.Fatal(err)
	}
	if row.State != store.ImageRequested || row.Attempts != 0 || h.sim.CreateImageCalls(id) != 0 {
		t.Fatalf("after a stop while queued: row %s with %d attempts, %d calls; want requested, 0, 0",
			row.State, row.Attempts, h.sim.CreateImageCalls(id))
	}
	start := time.Now()
	rep, err := h.runner(nil).RunSlot(bg, h.cfg.Version, h.p, h.slot, TriggerScheduled)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts.Good != 1 || h.sim.CreateImageCalls(id) != 1 {
		t.Errorf("resumed slot: counts %+v, %d createImage calls; want 1 good from 1 call", rep.Counts, h.sim.CreateImageCalls(id))
	}
	// The old code waited the whole wait_timeout (15 s) here, then failed the server.
	if d := time.Since(start); d > 7*time.Second {
		t.Errorf("resumed slot took %v: it waited for an image that was never asked for", d)
	}
}

// inflightCloud models a createImage request that Nova is still working on when
// the client gives up: for a volume-backed server Nova snapshots every volume inside
// the request and only then makes the Glance image, and it sets no task state, so a
// second request is accepted. The first call returns an unknown outcome without an
// image; finish makes the image the first request was making.
type inflightCloud struct {
	cloud.Cloud
	fake *cloudtest.Fake

	mu       sync.Mutex
	calls    int
	onFirst  func()
	pending  func() // makes the first request's image
	finished bool
}

func (c *inflightCloud) CreateImage(ctx context.Context, serverID, name string, metadata map[string]string) (string, error) {
	c.mu.Lock()
	c.calls++
	first := c.calls == 1
	c.mu.Unlock()
	if !first {
		return c.Cloud.CreateImage(ctx, serverID, name, metadata)
	}
	meta := map[string]string{}
	for k, v := range metadata {
		meta[k] = v
	}
	c.mu.Lock()
	c.pending = func() { _, _ = c.fake.CreateImage(context.Background(), serverID, name, meta) }
	c.mu.Unlock()
	if c.onFirst != nil {
		c.onFirst()
	}
	return "", &cloud.Error{Op: "create image", ID: serverID, Kind: cloud.ErrUnknownOutcome, Err: context.Canceled}
}

// finish lets Nova complete the first request (once).
func (c *inflightCloud) finish() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending != nil && !c.finished {
		c.finished = true
		c.pending()
	}
}

func (c *inflightCloud) createCalls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// TestRerunDoesNotCallAgainWhileFirstCallMayBeInFlight: a run is stopped while its
// createImage request for a volume-backed server is in flight (the user hits ^C on
// `imagekeeper run`, or a second process runs the same slot). A re-run of the slot
// within wait_timeout finds no stamped image yet, because Nova makes the Glance image
// only after it has snapshotted the volumes. It must wait for the stamp, not call
// createImage again: a second call would make a second image for the slot.
func TestRerunDoesNotCallAgainWhileFirstCallMayBeInFlight(t *testing.T) {
	h := newHarness(t, fakeCloudScene("1h"))
	id := h.fake.AddServer(cloudtest.ServerSpec{Name: "db", Tags: []string{"backup=daily"}, Volumes: 1})
	ctx, cancel := context.WithCancel(context.Background())
	cl := &inflightCloud{Cloud: h.fake, fake: h.fake, onFirst: cancel}
	if _, err := h.runner(func(o *runnerOptions) { o.Cloud = cl }).RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerManual); err == nil {
		t.Fatal("the stopped run reported no error")
	}
	row, err := h.store.ImageByKey(context.Background(), "web", id, h.slot)
	if err != nil {
		t.Fatal(err)
	}
	if row.State != store.ImageRequested || row.Attempts != 1 {
		t.Fatalf("after the stopped run the row is %s with %d attempts", row.State, row.Attempts)
	}

	// The re-run, a minute later; Nova finishes the first request while it waits.
	h.clock.Advance(time.Minute)
	polls := 0
	r := h.runner(func(o *runnerOptions) {
		o.Cloud = cl
		o.Sleep = func(ctx context.Context, d time.Duration) error {
			polls++
			if polls == 2 {
				cl.finish()
			}
			h.clock.Advance(d)
			return ctx.Err()
		}
	})
	rep, err := r.RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerManual)
	if err != nil {
		t.Fatal(err)
	}
	cl.finish()
	if n := cl.createCalls(); n != 1 {
		t.Errorf("createImage called %d times for one slot, want 1", n)
	}
	stamped, err := h.fake.ListImages(context.Background(), cloud.Stamp{Owner: h.store.Owner(), Policy: "web",
		Server: id, Slot: StampSlot(h.slot)}.Properties())
	if err != nil {
		t.Fatal(err)
	}
	if len(stamped) != 1 {
		t.Errorf("%d images carry the slot's stamp, want 1", len(stamped))
	}
	if len(rep.Servers) != 1 || rep.Servers[0].Outcome != ServerGood || !rep.Servers[0].Adopted {
		t.Errorf("re-run report %+v", rep.Servers)
	}
}

// TestLaterRunSettlesRowsLeftInProgress: a run stopped while it waited (^C on
// `imagekeeper run` from a crontab, where no daemon ever resumes waits) leaves its
// rows creating. Nothing else ever decides them: retention counts an in-progress row
// neither as a backup nor as garbage, so the image (and, if it failed, the volume
// snapshots behind it) would stay forever. The next run of the policy, once their
// wait_timeout has passed, settles them.
func TestLaterRunSettlesRowsLeftInProgress(t *testing.T) {
	h := newHarness(t, fakeCloudScene("1h"))
	id := h.fake.AddServer(cloudtest.ServerSpec{Name: "db", Tags: []string{"backup=daily"}, Volumes: 1})
	stopped := h.runner(func(o *runnerOptions) {
		o.hooks.beforePoll = func(int) error { return errors.New("stopped") }
	})
	if _, err := stopped.RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerManual); err != nil && !errors.Is(err, errAbandoned) {
		t.Logf("stopped run: %v", err)
	}
	row, err := h.store.ImageByKey(context.Background(), "web", id, h.slot)
	if err != nil {
		t.Fatal(err)
	}
	if row.State != store.ImageCreating {
		t.Fatalf("after the stopped run the row is %s", row.State)
	}
	// The next day's run, long after wait_timeout; no ResumeWaits in between.
	h.clock.Advance(24 * time.Hour)
	next := h.slot.Add(24 * time.Hour)
	if _, err := h.runner(nil).RunSlot(context.Background(), h.cfg.Version, h.p, next, TriggerManual); err != nil {
		t.Fatal(err)
	}
	row, err = h.store.ImageByKey(context.Background(), "web", id, h.slot)
	if err != nil {
		t.Fatal(err)
	}
	if row.State != store.ImageGood {
		t.Errorf("row left creating by the stopped run is %s (%s) after a later run", row.State, row.Reason)
	}
}

// TestPickStampedSkipsInheritedStamps checks that adoption never takes a snapshot of
// another server that inherited our stamp (its instance_uuid names that server),
// even when it is the oldest image carrying the stamp.
func TestPickStampedSkipsInheritedStamps(t *testing.T) {
	stamp := cloud.Stamp{Owner: "o", Policy: "p", Server: "srv-1", Slot: "2026-11-24T18:30:00Z"}
	props := func(extra map[string]string) map[string]string {
		m := stamp.Properties()
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	t0 := time.Date(2026, 11, 24, 18, 30, 0, 0, time.UTC)
	images := []cloud.Image{
		{ID: "inherited", CreatedAt: t0, Properties: props(map[string]string{"instance_uuid": "srv-2"})},
		{ID: "ours", CreatedAt: t0.Add(time.Minute), Properties: props(map[string]string{"instance_uuid": "srv-1"})},
		{ID: "volume-backed", CreatedAt: t0.Add(2 * time.Minute), Properties: props(nil)},
	}
	got, ok := pickStamped(images, stamp)
	if !ok || got.ID != "ours" {
		t.Fatalf("pickStamped = %q, %v; want ours", got.ID, ok)
	}
	got, ok = pickStamped(images[:1], stamp)
	if ok {
		t.Fatalf("pickStamped adopted the inherited image %q", got.ID)
	}
	if got, ok = pickStamped(images[2:], stamp); !ok || got.ID != "volume-backed" {
		t.Fatalf("an image without instance_uuid (volume-backed) must be adoptable: %q, %v", got.ID, ok)
	}
}
