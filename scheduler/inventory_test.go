package scheduler

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// TestInventorySharesOneListingPerSlot: the runs of one slot instant share one
// listing (also while it is in flight); another instant lists again; a failed
// listing is handed to its waiters and not kept.
func TestInventorySharesOneListingPerSlot(t *testing.T) {
	var inv inventory
	ctx := context.Background()
	slot := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	var calls atomic.Int32
	gate := make(chan struct{})
	list := func(context.Context) ([]cloud.Server, error) {
		calls.Add(1)
		<-gate
		return []cloud.Server{{ID: "a"}, {ID: "b"}}, nil
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := inv.servers(ctx, slot, slot, list)
			if err != nil || len(got) != 2 {
				t.Errorf("servers = %v, %v", got, err)
			}
		}()
	}
	time.Sleep(20 * time.Millisecond) // let them queue behind the one in flight
	close(gate)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("20 runs of one slot listed %d times, want 1", n)
	}
	if _, err := inv.servers(ctx, slot.Add(time.Minute), slot.Add(time.Minute), list); err != nil || calls.Load() != 2 {
		t.Errorf("another slot: err %v, %d listings in all; want a second listing", err, calls.Load())
	}
	// A run of the first slot that starts late (behind a long run) lists afresh.
	if _, err := inv.servers(ctx, slot, slot.Add(inventoryTTL+time.Second), list); err != nil || calls.Load() != 3 {
		t.Errorf("a late run of a slot: err %v, %d listings in all; want a fresh one", err, calls.Load())
	}

	boom := errors.New("503")
	failing := func(context.Context) ([]cloud.Server, error) { calls.Add(1); return nil, boom }
	next := slot.Add(2 * time.Minute)
	if _, err := inv.servers(ctx, next, next, failing); !errors.Is(err, boom) {
		t.Fatalf("failed listing: err %v", err)
	}
	before := calls.Load()
	if _, err := inv.servers(ctx, next, next, list); err != nil || calls.Load() != before+1 {
		t.Errorf("after a failure: err %v, listed %d times; want a fresh listing", err, calls.Load()-before)
	}
}

func TestSelectServersFromTheSharedListing(t *testing.T) {
	all := []cloud.Server{
		{ID: "web-1", Tags: []string{"web"}, AvailabilityZone: "az1"},
		{ID: "web-2", Tags: []string{"web", "skip"}, AvailabilityZone: "az1"},
		{ID: "db-1", Tags: []string{"db"}, AvailabilityZone: "az2"},
		{ID: "bare", Tags: []string{}, AvailabilityZone: "az1"},
	}
	got, err := selectServers(all, cloud.Selector{Tags: []string{"web"}, ExcludeTags: []string{"skip"}})
	if err != nil || len(got) != 1 || got[0].ID != "web-1" {
		t.Errorf("tags: %v, %v", got, err)
	}
	got, err = selectServers(all, cloud.Selector{AvailabilityZones: []string{"az1"}})
	if err != nil || len(got) != 3 {
		t.Errorf("zone: %v, %v", got, err)
	}
	// Tags unknown (no server has the field): a tag selector must not quietly
	// select nothing.
	untagged := []cloud.Server{{ID: "x"}, {ID: "y"}}
	if _, err := selectServers(untagged, cloud.Selector{Tags: []string{"web"}}); !errors.Is(err, errNoTags) {
		t.Errorf("tag selector over an untagged listing: err %v, want errNoTags", err)
	}
	if got, err := selectServers(untagged, cloud.Selector{}); err != nil || len(got) != 2 {
		t.Errorf("no selector over an untagged listing: %v, %v", got, err)
	}
}

// countingLister counts ListServers calls.
type countingLister struct {
	cloud.Cloud
	n *atomic.Int32
}

func (c countingLister) ListServers(ctx context.Context, sel cloud.Selector) ([]cloud.Server, error) {
	c.n.Add(1)
	return c.Cloud.ListServers(ctx, sel)
}

// TestPrepareSlotListsBeforeTheRuns: the listing PrepareSlot starts before a slot
// is the one its runs select from (no second listing), and preparing the slot again
// lists nothing more.
func TestPrepareSlotListsBeforeTheRuns(t *testing.T) {
	h := newHarness(t)
	h.addServers(3)
	var n atomic.Int32
	r := h.runner(func(o *runnerOptions) { o.Cloud = countingLister{Cloud: o.Cloud, n: &n} })
	r.PrepareSlot(h.p, h.slot)
	r.PrepareSlot(h.p, h.slot)
	rep, err := r.RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerManual)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Servers) != 3 {
		t.Errorf("the run took %d servers, want 3", len(rep.Servers))
	}
	if got := n.Load(); got != 1 {
		t.Errorf("%d listings for one prepared slot, want 1", got)
	}
	// Another slot is listed for itself.
	r.PrepareSlot(h.p, h.slot.Add(time.Hour))
	deadline := time.Now().Add(10 * time.Second)
	for n.Load() != 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := n.Load(); got != 2 {
		t.Errorf("%d listings after preparing a second slot, want 2", got)
	}
}

// TestLeadScheduleFiresBeforeEachSlot: the prepare timer fires PrepareLead before
// every slot, the next one included when now is within the lead of a slot.
func TestLeadScheduleFiresBeforeEachSlot(t *testing.T) {
	slot := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	l := leadSchedule{s: minuteSchedule{}, lead: 2 * time.Second}
	for _, c := range []struct{ now, want time.Time }{
		{slot.Add(-30 * time.Second), slot.Add(-2 * time.Second)},
		{slot.Add(-2 * time.Second), slot.Add(time.Minute - 2*time.Second)},
		{slot.Add(-3 * time.Second), slot.Add(-2 * time.Second)},
		{slot.Add(-time.Second), slot.Add(time.Minute - 2*time.Second)},
	} {
		if got := l.Next(c.now); !got.Equal(c.want) {
			t.Errorf("Next(%s) = %s, want %s", c.now.Format(time.TimeOnly), got.Format(time.TimeOnly), c.want.Format(time.TimeOnly))
		}
	}
}

// minuteSchedule fires at every whole minute.
type minuteSchedule struct{}

func (minuteSchedule) Next(t time.Time) time.Time { return t.Truncate(time.Minute).Add(time.Minute) }
