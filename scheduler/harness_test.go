package scheduler

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/cloudtest"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// This file is the one home of the scene most scheduler tests share: a cloud, our
// adapter on it, a store and a compiled policy, built by newHarness with options
// (builder style). The Scheduler's own tests (scheduler_test.go) tick a Scheduler
// over fake runs and an in-memory ledger instead: no cloud, no store.

// testPolicyYAML is the policy file of the harness on real time (the run tests):
// policy web; %s is the wait_timeout.
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

// prunePolicyYAML is the policy file of retentionScene (the prune tests): policy
// nightly; %s is the retention block.
const prunePolicyYAML = `cloud: sim
state: /unused/lineage.db
limits: {concurrency: 4, requests_per_second: 1000}
policies:
  - name: nightly
    select:
      tags: [backup=nightly]
    schedule:
      cron: "30 2 * * *"
      timezone: UTC
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "20060102" }}'
      wait_timeout: 1h
    retention:
%s
`

// harness is a simulated cloud over HTTP with our OpenStack adapter on it (or, with
// withFakeCloud, the in-memory Fake), a store in a temporary directory and a
// compiled policy. By default it runs on real time with builds of a fraction of a
// second; withClock puts the cloud, the store and every Runner on one manual clock
// whose Sleep moves it, so that nothing waits for real.
type harness struct {
	t     testing.TB
	clock *storetest.Clock // nil on real time
	sim   *simcloud.Sim    // nil with withFakeCloud
	fake  *cloudtest.Fake  // set only with withFakeCloud
	cloud cloud.Cloud
	store *store.Store
	cfg   *policy.Config
	p     *policy.Policy
	slot  time.Time // the slot a test runs by default
	r     *Runner   // runner(nil), for tests that need one Runner throughout
}

// harnessSetup is what newHarness builds; harnessOptions change it.
type harnessSetup struct {
	policyFile string // its name, for parse errors
	policy     []byte
	sim        simcloud.Options
	adapter    openstack.Options
	clockAt    time.Time              // zero: real time
	fake       *cloudtest.FakeOptions // nil: the simulator
}

// harnessOption changes the scene newHarness builds; options apply in order.
type harnessOption func(*harnessSetup)

// withWaitTimeout gives the run tests' policy (testPolicyYAML) this wait_timeout
// instead of 20s.
func withWaitTimeout(d string) harnessOption {
	return func(s *harnessSetup) { s.policyFile, s.policy = "test.yaml", fmt.Appendf(nil, testPolicyYAML, d) }
}

// withPolicy makes the policy file doc (named file, for parse errors) instead of
// the run tests' policy; the harness's policy is its first.
func withPolicy(file string, doc []byte) harnessOption {
	return func(s *harnessSetup) { s.policyFile, s.policy = file, doc }
}

// withSim changes the simulator's options after the scene's defaults.
func withSim(mod func(*simcloud.Options)) harnessOption {
	return func(s *harnessSetup) { mod(&s.sim) }
}

// withAdapter changes the OpenStack adapter's options after the scene's defaults.
func withAdapter(mod func(*openstack.Options)) harnessOption {
	return func(s *harnessSetup) { mod(&s.adapter) }
}

// withClock puts the scene on a manual clock reading at: the cloud and the store
// read it, and a Runner's Sleep moves it.
func withClock(at time.Time) harnessOption {
	return func(s *harnessSetup) { s.clockAt = at }
}

// withFakeCloud makes the cloud the in-memory Fake (on the harness's clock, if it has
// one) instead of the simulator behind our adapter.
func withFakeCloud(o cloudtest.FakeOptions) harnessOption {
	return func(s *harnessSetup) { s.fake = &o }
}

// retentionScene is the scene of the prune, reconcile and late tests: the nightly
// policy with the given retention block, on a manual clock at 2026-11-30 12:00 UTC,
// with builds and deletes that take minutes of that clock and an adapter that does
// not retry.
func retentionScene(retention string) harnessOption {
	return func(s *harnessSetup) {
		s.clockAt = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
		s.policyFile, s.policy = "prune.yaml", fmt.Appendf(nil, prunePolicyYAML, retention)
		s.sim = simcloud.Options{Seed: 7, ImageBuildTime: 2 * time.Minute, SnapshotBuildTime: time.Minute,
			SnapshotDeleteTime: 30 * time.Second, TokenTTL: 1000 * time.Hour}
		s.adapter = openstack.Options{RetryBaseDelay: time.Millisecond, MaxRetries: -1, RequestTimeout: 20 * time.Second}
	}
}

// fakeCloudScene is the scene of tests that stop a run and run its slot again: the
// run tests' policy with this wait_timeout on the in-memory Fake (snapshots take
// 30 s, images a minute), all on a manual clock a minute past the slot.
func fakeCloudScene(waitTimeout string) harnessOption {
	return func(s *harnessSetup) {
		withWaitTimeout(waitTimeout)(s)
		s.clockAt = time.Date(2026, 11, 24, 18, 31, 0, 0, time.UTC)
		s.fake = &cloudtest.FakeOptions{SnapshotBuildTime: 30 * time.Second, ImageBuildTime: time.Minute}
	}
}

// newHarness builds the scene: by default the run tests' policy with a wait_timeout
// of 20s, on real time, a simulator whose images take 100 ms and snapshots 60 ms,
// and an adapter with short retries.
func newHarness(t testing.TB, opts ...harnessOption) *harness {
	t.Helper()
	s := harnessSetup{
		policyFile: "test.yaml", policy: fmt.Appendf(nil, testPolicyYAML, "20s"),
		sim: simcloud.Options{Seed: 42, ImageBuildTime: 100 * time.Millisecond, SnapshotBuildTime: 60 * time.Millisecond},
		adapter: openstack.Options{RetryBaseDelay: 5 * time.Millisecond, RequestTimeout: 20 * time.Second,
			CreateImageTimeout: 10 * time.Second},
	}
	for _, o := range opts {
		o(&s)
	}
	h := &harness{t: t, slot: time.Date(2026, 11, 24, 18, 30, 0, 0, time.UTC)}
	var now func() time.Time
	if !s.clockAt.IsZero() {
		h.clock = storetest.NewClock(s.clockAt)
		now = h.clock.Now
	}
	cfg, err := policy.Parse(s.policyFile, s.policy)
	if err != nil {
		t.Fatalf("parse test policy: %v", err)
	}
	h.cfg, h.p = cfg, cfg.Policies[0]
	if s.fake != nil {
		s.fake.Now = now
		h.fake = cloudtest.NewFake(*s.fake)
		h.cloud = h.fake
	} else {
		h.sim, h.cloud = startSim(t, s.sim, now, s.adapter)
	}
	h.store = storetest.MustOpen(t, h.clock)
	h.r = h.runner(nil)
	return h
}

// startSim starts a simulator with o on now (the wall clock when nil) and returns it
// with our adapter on it, configured by a.
func startSim(t testing.TB, o simcloud.Options, now func() time.Time, a openstack.Options) (*simcloud.Sim, cloud.Cloud) {
	t.Helper()
	if now != nil || o.Now == nil { // a test may give the simulator a clock of its own (withSim)
		o.Now = now
	}
	o.DeterministicIDs = true // ids of the seed alone: ties in listings break the same way every run
	sim := simcloud.New(o)
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatalf("start simulator: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	cy := filepath.Join(t.TempDir(), "clouds.yaml")
	if err := os.WriteFile(cy, sim.CloudsYAML("sim"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OS_CLIENT_CONFIG_FILE", cy)
	a.CloudName = "sim"
	cl, err := openstack.New(context.Background(), a)
	if err != nil {
		t.Fatalf("openstack.New on the simulator: %v", err)
	}
	return sim, cl
}

// runner returns a Runner on the scene, changed by mod: on the manual clock it polls
// every 10 s of that clock (up to a minute), on real time every 10 ms (up to 40 ms).
func (h *harness) runner(mod func(*runnerOptions)) *Runner {
	o := runnerOptions{SharedOptions: SharedOptions{Cloud: h.cloud, Store: h.store, Limits: h.cfg.Limits,
		PollInterval: 10 * time.Millisecond, MaxPollInterval: 40 * time.Millisecond}}
	if h.clock != nil {
		o.Now, o.Sleep = h.clock.Now, h.clock.Sleep
		o.PollInterval, o.MaxPollInterval = 10*time.Second, time.Minute
	}
	if mod != nil {
		mod(&o)
	}
	return NewRunner(NewShared(o.SharedOptions), o.RunnerOptions)
}

// runnerOptions are a test's options of a Runner and of the Shared it runs on, in
// one struct so that a test's mod can set either.
type runnerOptions struct {
	SharedOptions
	RunnerOptions
}

// addServers adds n tagged servers, every other one volume-backed (1 or 2 volumes).
func (h *harness) addServers(n int) []string {
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
func (h *harness) stampedImages() map[string][]simcloud.ImageState {
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
func (h *harness) checkLineageMatchesCloud() {
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

func (h *harness) totalCreateCalls(ids []string) int {
	n := 0
	for _, id := range ids {
		n += h.sim.CreateImageCalls(id)
	}
	return n
}

// server adds a tagged server with n volumes (0: image-backed).
func (h *harness) server(name string, volumes int) string {
	return h.sim.AddServer(simcloud.ServerSpec{Name: name, Volumes: volumes, Tags: []string{"backup=nightly"}})
}

// slots runs the policy's slot on each of the days before the clock's day, oldest
// first, and checks that every server got a good image.
func (h *harness) slots(days int) {
	h.t.Helper()
	today := h.clock.Now().Truncate(24 * time.Hour)
	for d := days; d >= 1; d-- {
		slot := today.AddDate(0, 0, -d).Add(2*time.Hour + 30*time.Minute)
		rep, err := h.r.RunSlot(context.Background(), h.cfg.Version, h.p, slot, TriggerManual)
		if err != nil {
			h.t.Fatalf("run slot %v: %v", slot, err)
		}
		for _, s := range rep.Servers {
			if s.Outcome != ServerGood {
				h.t.Fatalf("slot %v: server %s: %s (%s)", slot, s.ServerID, s.Outcome, s.Reason)
			}
		}
	}
}

func (h *harness) prune(opts PruneOptions) *PruneReport {
	h.t.Helper()
	rep, err := NewRetention(h.r.sh, policy.NewCoordinator(h.cfg), RetentionOptions{}).Prune(context.Background(), h.p.Name, opts)
	if err != nil {
		h.t.Fatalf("prune: %v", err)
	}
	return rep
}

func (h *harness) rows(states ...store.ImageState) []store.Image {
	h.t.Helper()
	rows, err := h.store.Images(context.Background(), store.ImageFilter{Policy: h.p.Name, States: states})
	if err != nil {
		h.t.Fatal(err)
	}
	return rows
}

func (h *harness) snapshotsOf(row int64) []store.Snapshot {
	h.t.Helper()
	s, err := h.store.Snapshots(context.Background(), row)
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

// checkDeletedGone asserts that every deleted row's image and snapshots are gone
// from the cloud, and every good row's are there.
func (h *harness) checkDeletedGone() {
	h.t.Helper()
	for _, row := range h.rows() {
		_, imageThere := h.sim.Image(row.ImageID)
		switch row.State {
		case store.ImageDeleted:
			if imageThere {
				h.t.Errorf("row %d deleted, image %s still in the cloud", row.Row, row.ImageID)
			}
			for _, sn := range h.snapshotsOf(row.Row) {
				if _, ok := h.sim.Snapshot(sn.SnapshotID); ok || sn.State != store.SnapshotDeleted {
					h.t.Errorf("row %d deleted, snapshot %s in cloud=%v, lineage %s", row.Row, sn.SnapshotID, ok, sn.State)
				}
			}
		case store.ImageGood:
			if !imageThere {
				h.t.Errorf("row %d good, image %s not in the cloud", row.Row, row.ImageID)
			}
			for _, sn := range h.snapshotsOf(row.Row) {
				if cs, ok := h.sim.Snapshot(sn.SnapshotID); !ok || cs.Status != cloud.SnapshotAvailable {
					h.t.Errorf("row %d good, snapshot %s in cloud=%v status %s", row.Row, sn.SnapshotID, ok, cs.Status)
				}
			}
		}
	}
}
