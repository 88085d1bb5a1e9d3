package scheduler

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// testPolicyYAML is the policy file of the run tests; %s is the wait_timeout.
const testPolicyYAML = `cloud: sim
state: /unused/lineage.db
limits: {concurrency: 8, requests_per_second: 2000}
policies:
  - name: web
    select:
      tags: [backup=daily]
      exclude_tags: [no-backup]
    schedule:
      cron: "30 2 * * *"
      timezone: Asia/Shanghai
      spread: 20m
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "20060102-1504" }}'
      metadata:
        source: '{{ .Server.ID }}'
      wait_timeout: %s
    retention:
      keep_last: 3
`

// harness is a simulated cloud over HTTP, our adapter on it, a temp-dir store and
// a compiled policy.
type runHarness struct {
	t     testing.TB
	sim   *simcloud.Sim
	cloud cloud.Cloud
	store *store.Store
	cfg   *policy.Config
	p     *policy.Policy
	slot  time.Time
	path  string
}

type runHarnessOptions struct {
	waitTimeout string
	sim         simcloud.Options
	maxRetries  int // of the adapter; 0 for its default
	pageSize    int // of the adapter; 0 leaves it to the cloud
}

func newRunHarness(t testing.TB, o runHarnessOptions) *runHarness {
	t.Helper()
	if o.waitTimeout == "" {
		o.waitTimeout = "20s"
	}
	if o.sim.ImageBuildTime == 0 {
		o.sim.ImageBuildTime = 100 * time.Millisecond
	}
	if o.sim.SnapshotBuildTime == 0 {
		o.sim.SnapshotBuildTime = 60 * time.Millisecond
	}
	if o.sim.Seed == 0 {
		o.sim.Seed = 42
	}
	o.sim.DeterministicIDs = true // ids of the seed alone: ties in listings break the same way every run
	sim := simcloud.New(o.sim)
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatalf("start simulator: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	dir := t.TempDir()
	cy := filepath.Join(dir, "clouds.yaml")
	if err := os.WriteFile(cy, sim.CloudsYAML("sim"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OS_CLIENT_CONFIG_FILE", cy)
	ctx := context.Background()
	cl, err := openstack.New(ctx, openstack.Options{CloudName: "sim", RetryBaseDelay: 5 * time.Millisecond, MaxRetries: o.maxRetries, PageSize: o.pageSize,
		RequestTimeout: 20 * time.Second, CreateImageTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("openstack.New on the simulator: %v", err)
	}
	cfg, err := policy.Parse("test.yaml", []byte(fmt.Sprintf(testPolicyYAML, o.waitTimeout)))
	if err != nil {
		t.Fatalf("parse test policy: %v", err)
	}
	path := filepath.Join(dir, "lineage.db")
	st, err := store.Open(ctx, path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &runHarness{t: t, sim: sim, cloud: cl, store: st, cfg: cfg, p: cfg.Policies[0], path: path,
		slot: time.Date(2026, 11, 24, 18, 30, 0, 0, time.UTC)}
}

// runner returns a Runner on the harness with fast polling.
func (h *runHarness) runner(mod func(*runnerOptions)) *Runner {
	o := runnerOptions{SharedOptions: SharedOptions{Cloud: h.cloud, Store: h.store, Limits: h.cfg.Limits,
		PollInterval: 10 * time.Millisecond, MaxPollInterval: 40 * time.Millisecond}}
	if mod != nil {
		mod(&o)
	}
	return o.runner()
}

// runnerOptions are a test's options of a Runner and of the Shared it runs on, in
// one struct so that a test's mod can set either.
type runnerOptions struct {
	SharedOptions
	RunnerOptions
}

// runner returns a Runner with o on resources of its own.
func (o runnerOptions) runner() *Runner {
	return NewRunner(NewShared(o.SharedOptions), o.RunnerOptions)
}

// addServers adds n tagged servers, every other one volume-backed (1 or 2 volumes).
func (h *runHarness) addServers(n int) []string {
	var ids []string
	for i := 0; i < n; i++ {
		spec := simcloud.ServerSpec{Name: fmt.Sprintf("web-%02d", i), Tags: []string{"backup=daily"}, AZ: "az-" + fmt.Sprint(i%2+1)}
		if i%2 == 1 {
			spec.Volumes = 1 + i%4/3 // 1 or 2 volumes
		}
		ids = append(ids, h.sim.AddServer(spec))
	}
	return ids
}

// stampedImages returns the simulator's images stamped for the slot by server.
func (h *runHarness) stampedImages() map[string][]simcloud.ImageState {
	out := map[string][]simcloud.ImageState{}
	for _, im := range h.sim.Images() {
		st, ok := cloud.StampOf(im.Properties)
		if !ok || st.Owner != h.store.Owner() || st.Slot != StampSlot(h.slot) {
			continue
		}
		out[st.Server] = append(out[st.Server], im)
	}
	return out
}

// checkLineageMatchesCloud asserts that every good row is an active image in the
// simulator whose snapshots are exactly the rows' snapshots, all available, with
// the right volumes; and that no server has two images for the slot.
func (h *runHarness) checkLineageMatchesCloud() {
	t := h.t
	t.Helper()
	ctx := context.Background()
	for server, ims := range h.stampedImages() {
		if len(ims) > 1 {
			t.Errorf("server %s has %d images for one slot", server, len(ims))
		}
	}
	rows, err := h.store.Images(ctx, store.ImageFilter{Policy: h.p.Name, Slot: h.slot})
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range rows {
		if row.State != store.ImageGood {
			continue
		}
		im, ok := h.sim.Image(row.ImageID)
		if !ok {
			t.Errorf("row %d: good image %s is not in the cloud", row.Row, row.ImageID)
			continue
		}
		if im.Status != "active" || im.ServerID != row.ServerID {
			t.Errorf("row %d: good image %s is %s of server %s (want active of %s)", row.Row, im.ID, im.Status, im.ServerID, row.ServerID)
		}
		if im.Size != row.SizeBytes {
			t.Errorf("row %d: size %d, cloud says %d", row.Row, row.SizeBytes, im.Size)
		}
		snaps, err := h.store.Snapshots(ctx, row.Row)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, sn := range snaps {
			got = append(got, sn.SnapshotID)
			cs, ok := h.sim.Snapshot(sn.SnapshotID)
			if !ok {
				t.Errorf("snapshot %s of row %d is not in the cloud", sn.SnapshotID, row.Row)
				continue
			}
			if cs.Status != "available" || sn.State != store.SnapshotAvailable || cs.VolumeID != sn.VolumeID || sn.VolumeID == "" {
				t.Errorf("snapshot %s: lineage %s volume %q, cloud %s volume %q", sn.SnapshotID, sn.State, sn.VolumeID, cs.Status, cs.VolumeID)
			}
		}
		want := append([]string(nil), im.SnapshotIDs...)
		sort.Strings(got)
		sort.Strings(want)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("row %d snapshots %v, cloud image names %v", row.Row, got, want)
		}
		if row.VolumeBacked != (len(want) > 0) {
			t.Errorf("row %d: volume_backed=%v with %d snapshots", row.Row, row.VolumeBacked, len(want))
		}
	}
}

func (h *runHarness) totalCreateCalls(ids []string) int {
	n := 0
	for _, id := range ids {
		n += h.sim.CreateImageCalls(id)
	}
	return n
}

// TestRunSlotFiftyServers is the acceptance run: 50 mixed servers, two in ERROR, one
// busy: every eligible server gets exactly one good image, skips are recorded with
// reasons, and the lineage matches the cloud. Running the same slot again makes no
// new image.
func TestRunSlotFiftyServers(t *testing.T) {
	h := newRunHarness(t, runHarnessOptions{})
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
			h := newRunHarness(t, runHarnessOptions{})
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
	h := newRunHarness(t, runHarnessOptions{})
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
		arrange func(h *runHarness, id string)
		reason  string
		snap    store.SnapshotState // expected state of the row's snapshots, "" for none
	}{
		{name: "snapshot fails, image vanishes", arrange: func(h *runHarness, id string) { h.sim.FailNextSnapshot(id) },
			reason: "vanished while waiting (Glance 404)"},
		{name: "volume-backed snapshot fails", volumes: 1, arrange: func(h *runHarness, id string) { h.sim.FailNextSnapshot(id) },
			reason: "vanished"},
		{name: "stuck in saving past wait_timeout", arrange: func(h *runHarness, id string) { h.sim.StickNextImage(id) },
			reason: "not good within wait_timeout 1s: image"},
		{name: "volume snapshot in error", volumes: 2, arrange: func(h *runHarness, id string) { h.sim.FailNextVolumeSnapshot(id) },
			reason: "is error", snap: store.SnapshotError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newRunHarness(t, runHarnessOptions{waitTimeout: "1s"})
			good := h.sim.AddServer(simcloud.ServerSpec{Name: "ok", Tags: []string{"backup=daily"}, Volumes: tc.volumes})
			bad := h.sim.AddServer(simcloud.ServerSpec{Name: "bad", Tags: []string{"backup=daily"}, Volumes: tc.volumes})
			tc.arrange(h, bad)
			rep, err := h.runner(nil).RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerScheduled)
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
		h := newRunHarness(t, runHarnessOptions{})
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
		h := newRunHarness(t, runHarnessOptions{maxRetries: 1})
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
	h := newRunHarness(t, runHarnessOptions{})
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
	h := newRunHarness(t, runHarnessOptions{})
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
	h := newRunHarness(t, runHarnessOptions{waitTimeout: "300ms"})
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
	h := newRunHarness(t, runHarnessOptions{waitTimeout: "15s"})
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
