package scheduler

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/cloudtest"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// reviewClock is a manual clock shared by a Fake, a store and a Runner; Sleep
// advances it instead of waiting.
type reviewClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *reviewClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *reviewClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// reviewEnv is a Fake cloud, a temp-dir store and the run tests' policy, all on
// one manual clock.
type reviewEnv struct {
	clock *reviewClock
	fake  *cloudtest.Fake
	store *store.Store
	cfg   *policy.Config
	p     *policy.Policy
	slot  time.Time
}

func newReviewEnv(t *testing.T, waitTimeout string) *reviewEnv {
	t.Helper()
	slot := time.Date(2026, 11, 24, 18, 30, 0, 0, time.UTC)
	clock := &reviewClock{now: slot.Add(time.Minute)}
	fake := cloudtest.NewFake(cloudtest.FakeOptions{Now: clock.Now, SnapshotBuildTime: 30 * time.Second,
		ImageBuildTime: time.Minute})
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "lineage.db"), store.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg, err := policy.Parse("test.yaml", []byte(fmt.Sprintf(testPolicyYAML, waitTimeout)))
	if err != nil {
		t.Fatal(err)
	}
	return &reviewEnv{clock: clock, fake: fake, store: st, cfg: cfg, p: cfg.Policies[0], slot: slot}
}

func (e *reviewEnv) runner(cl cloud.Cloud, mod func(*runnerOptions)) *Runner {
	o := runnerOptions{SharedOptions: SharedOptions{Cloud: cl, Store: e.store, Limits: e.cfg.Limits, Now: e.clock.Now,
		PollInterval: 10 * time.Second, MaxPollInterval: time.Minute,
		Sleep: func(ctx context.Context, d time.Duration) error {
			e.clock.Advance(d)
			return ctx.Err()
		}}}
	if mod != nil {
		mod(&o)
	}
	return o.runner()
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
	e := newReviewEnv(t, "1h")
	id := e.fake.AddServer(cloudtest.ServerSpec{Name: "db", Tags: []string{"backup=daily"}, Volumes: 1})
	ctx, cancel := context.WithCancel(context.Background())
	cl := &inflightCloud{Cloud: e.fake, fake: e.fake, onFirst: cancel}
	if _, err := e.runner(cl, nil).RunSlot(ctx, e.cfg.Version, e.p, e.slot, TriggerManual); err == nil {
		t.Fatal("the stopped run reported no error")
	}
	row, err := e.store.ImageByKey(context.Background(), "web", id, e.slot)
	if err != nil {
		t.Fatal(err)
	}
	if row.State != store.ImageRequested || row.Attempts != 1 {
		t.Fatalf("after the stopped run the row is %s with %d attempts", row.State, row.Attempts)
	}

	// The re-run, a minute later; Nova finishes the first request while it waits.
	e.clock.Advance(time.Minute)
	polls := 0
	r := e.runner(cl, func(o *runnerOptions) {
		o.Sleep = func(ctx context.Context, d time.Duration) error {
			polls++
			if polls == 2 {
				cl.finish()
			}
			e.clock.Advance(d)
			return ctx.Err()
		}
	})
	rep, err := r.RunSlot(context.Background(), e.cfg.Version, e.p, e.slot, TriggerManual)
	if err != nil {
		t.Fatal(err)
	}
	cl.finish()
	if n := cl.createCalls(); n != 1 {
		t.Errorf("createImage called %d times for one slot, want 1", n)
	}
	stamped, err := e.fake.ListImages(context.Background(), cloud.Stamp{Owner: e.store.Owner(), Policy: "web",
		Server: id, Slot: StampSlot(e.slot)}.Properties())
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

// TestPruneProtectedImageGoneIsNotGood: a kept_protected image that is gone from
// Glance when its recheck comes (someone unprotected and deleted it) must not go back
// to good: a row recorded good whose image does not exist counts towards min_keep
// and the keep rules in place of a real backup, and tells the gauges a server has a
// backup it does not have. It becomes failed, so that the journal cleans the
// snapshots left behind.
func TestPruneProtectedImageGoneIsNotGood(t *testing.T) {
	h := newPruneHarness(t, "      keep_last: 1")
	h.server("db", 1)
	h.slots(2)
	good := h.rows(store.ImageGood)
	old, newest := good[0], good[1]
	if !h.sim.SetImageProtected(old.ImageID, true) {
		t.Fatal("cannot protect the image")
	}
	h.prune(PruneOptions{})
	if row, _ := h.store.Image(context.Background(), old.Row); row.State != store.ImageKeptProtected {
		t.Fatalf("old row is %s, want kept_protected", row.State)
	}
	// The newest image is deleted behind our back and reconcile --fix records it.
	h.sim.DeleteImageDirect(newest.ImageID)
	if _, err := h.store.MarkGone(context.Background(), newest.Row, "gone (test)"); err != nil {
		t.Fatal(err)
	}
	// And so is the protected one.
	h.sim.DeleteImageDirect(old.ImageID)
	h.clock.Add(ProtectedRecheck + time.Minute)
	h.prune(PruneOptions{})
	row, err := h.store.Image(context.Background(), old.Row)
	if err != nil {
		t.Fatal(err)
	}
	if row.State == store.ImageGood {
		t.Fatalf("row of image %s, gone from Glance, is recorded good", old.ImageID)
	}
	// Past the failed grace, the journal deletes the snapshots it left behind.
	h.clock.Add(time.Hour + policy.FailedGrace + time.Minute)
	h.prune(PruneOptions{})
	if row, _ := h.store.Image(context.Background(), old.Row); row.State != store.ImageDeleted {
		t.Fatalf("old row is %s (%s), want deleted", row.State, row.LastError)
	}
	h.checkDeletedGone()
}

// TestLaterRunSettlesRowsLeftInProgress: a run stopped while it waited (^C on
// `imagekeeper run` from a crontab, where no daemon ever resumes waits) leaves its
// rows creating. Nothing else ever decides them: retention counts an in-progress row
// neither as a backup nor as garbage, so the image (and, if it failed, the volume
// snapshots behind it) would stay forever. The next run of the policy, once their
// wait_timeout has passed, settles them.
func TestLaterRunSettlesRowsLeftInProgress(t *testing.T) {
	e := newReviewEnv(t, "1h")
	id := e.fake.AddServer(cloudtest.ServerSpec{Name: "db", Tags: []string{"backup=daily"}, Volumes: 1})
	stopped := e.runner(e.fake, func(o *runnerOptions) {
		o.hooks.beforePoll = func(int) error { return errors.New("stopped") }
	})
	if _, err := stopped.RunSlot(context.Background(), e.cfg.Version, e.p, e.slot, TriggerManual); err != nil && !errors.Is(err, errAbandoned) {
		t.Logf("stopped run: %v", err)
	}
	row, err := e.store.ImageByKey(context.Background(), "web", id, e.slot)
	if err != nil {
		t.Fatal(err)
	}
	if row.State != store.ImageCreating {
		t.Fatalf("after the stopped run the row is %s", row.State)
	}
	// The next day's run, long after wait_timeout; no ResumeWaits in between.
	e.clock.Advance(24 * time.Hour)
	next := e.slot.Add(24 * time.Hour)
	if _, err := e.runner(e.fake, nil).RunSlot(context.Background(), e.cfg.Version, e.p, next, TriggerManual); err != nil {
		t.Fatal(err)
	}
	row, err = e.store.ImageByKey(context.Background(), "web", id, e.slot)
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
