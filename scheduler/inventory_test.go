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
