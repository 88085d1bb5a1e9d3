package store

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// metricsFixture is a lineage with known answers for the metrics queries. It writes
// images and snapshots with SQL: these tests are about the read queries, not the
// state machine that normally writes the rows.
type metricsFixture struct {
	t     *testing.T
	s     *Store
	clock time.Time
	rows  int
}

// newMetricsFixture opens the internal tests' store. It cannot use
// storetest.MustOpen: storetest imports store, so package store's own (internal)
// tests importing it would be an import cycle; this and plan_test.go's Open are the
// two store.Open boilerplates left for that reason.
func newMetricsFixture(t *testing.T) *metricsFixture {
	t.Helper()
	f := &metricsFixture{t: t, clock: time.Date(2026, 11, 22, 2, 30, 0, 0, time.UTC)}
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "lineage.db"), Options{Now: func() time.Time { return f.clock }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	f.s = s
	return f
}

// slot runs one slot at instant at: started at at, finished a minute later, with
// good images of every selected server except failed ones.
func (f *metricsFixture) slot(policy string, at time.Time, outcome SlotOutcome, selected, failed int) Slot {
	f.t.Helper()
	ctx := context.Background()
	f.clock = at
	sl, err := f.s.StartSlot(ctx, Slot{Policy: policy, Slot: at, Trigger: TriggerScheduled})
	if err != nil {
		f.t.Fatal(err)
	}
	f.clock = at.Add(time.Minute)
	if outcome != OutcomeRunning {
		if err := f.s.FinishSlot(ctx, sl.ID, outcome, "", SlotCounts{Selected: selected, Good: selected - failed, Failed: failed}); err != nil {
			f.t.Fatal(err)
		}
	}
	return sl
}

// image writes an image row of sl for server in state, requested at requested.
func (f *metricsFixture) image(sl Slot, server, state string, requested time.Time) int64 {
	f.t.Helper()
	f.rows++
	res, err := f.s.db.Exec(`INSERT INTO images (image_id, name, policy, server_id, slot, slot_id, owner, state,
			requested_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		fmt.Sprintf("img-%d", f.rows), fmt.Sprintf("%s-%d", server, f.rows), sl.Policy, server,
		fmtTime(sl.Slot), sl.ID, f.s.Owner(), state, fmtTime(requested), fmtTime(requested))
	if err != nil {
		f.t.Fatal(err)
	}
	id, _ := res.LastInsertId()
	return id
}

func (f *metricsFixture) snapshot(imageRow int64, state string) {
	f.t.Helper()
	f.rows++
	if _, err := f.s.db.Exec(`INSERT INTO snapshots (snapshot_id, image_row, state, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?)`, fmt.Sprintf("snap-%d", f.rows), imageRow, state, fmtTime(f.clock), fmtTime(f.clock)); err != nil {
		f.t.Fatal(err)
	}
}

func (f *metricsFixture) event(sl Slot, kind, server string) {
	f.t.Helper()
	if _, err := f.s.AddEvent(context.Background(), Event{Kind: kind, Policy: sl.Policy, ServerID: server,
		Slot: sl.Slot, SlotID: sl.ID}); err != nil {
		f.t.Fatal(err)
	}
}

func day(d, h, m int) time.Time { return time.Date(2026, 11, d, h, m, 0, 0, time.UTC) }

func TestMetricsQueries(t *testing.T) {
	ctx := context.Background()
	f := newMetricsFixture(t)

	// web: slot 1 imaged a, b and e; slot 2 imaged a, failed b, skipped c (ERROR) and
	// dropped d's intent (busy); e is no longer selected. Slot 3's listing failed
	// (nothing selected), slot 4 is still running: neither replaces slot 2 as the
	// latest completed slot.
	s1 := f.slot("web", day(22, 2, 30), OutcomeRan, 3, 0)
	f.image(s1, "a", "good", day(22, 2, 30))
	f.image(s1, "b", "good", day(22, 2, 31))
	eOld := f.image(s1, "e", "good", day(22, 2, 32))
	s2 := f.slot("web", day(23, 2, 30), OutcomeRan, 4, 1)
	f.image(s2, "a", "good", day(23, 2, 35))
	f.image(s2, "b", "failed", day(23, 2, 36))
	f.event(s2, EventServerSkipped, "c")
	f.event(s2, EventIntentDropped, "d")
	f.slot("web", day(24, 2, 30), OutcomeFailed, 0, 0)
	s4 := f.slot("web", day(25, 2, 30), OutcomeRunning, 0, 0)
	f.image(s4, "a", "requested", day(25, 2, 30))
	f.image(s4, "f", "creating", day(25, 2, 31)) // f is new: not live until slot 4 completes

	// Images being deleted and deleted, with their snapshots: leftovers are those
	// whose image is gone (deletion states) or whose image row is deleted.
	old := f.slot("web", day(1, 2, 30), OutcomeRan, 1, 0)
	del := f.image(old, "a", "deleting", day(1, 2, 30))
	f.snapshot(del, "deleting")       // leftover
	f.snapshot(del, "kept_in_use")    // leftover
	f.snapshot(del, "error_deleting") // leftover
	gone := f.image(old, "b", "deleted", day(1, 2, 31))
	f.snapshot(gone, "available") // leftover (image row deleted, snapshot not)
	f.snapshot(gone, "deleted")
	f.snapshot(gone, "missing")
	f.snapshot(eOld, "available") // a good image's snapshot: not a leftover
	kept := f.image(old, "c", "kept_protected", day(1, 2, 32))
	f.snapshot(kept, "available")

	db := f.slot("db", day(23, 4, 0), OutcomeSkippedOverlap, 0, 0)
	f.image(db, "x", "good", day(23, 4, 0)) // an image but no completed slot: no live servers

	t.Run("ImageCountsOfPolicy", func(t *testing.T) {
		want := map[string]map[ImageState]int{
			"web":  {"good": 4, "failed": 1, "requested": 1, "creating": 1, "deleting": 1, "kept_protected": 1},
			"db":   {"good": 1},
			"nope": {},
		}
		for p, w := range want {
			got, err := f.s.ImageCountsOfPolicy(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, w) {
				t.Errorf("%s: got %v\nwant %v", p, got, w)
			}
		}
	})
	t.Run("LeftoverSnapshotCount", func(t *testing.T) {
		n, err := f.s.LeftoverSnapshotCount(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n != 4 {
			t.Errorf("leftover snapshots = %d, want 4", n)
		}
	})
	t.Run("NewestGoodPerServer", func(t *testing.T) {
		got, err := f.s.NewestGoodPerServer(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		want := []ServerRecoveryPoint{
			{ServerID: "a", NewestGood: day(23, 2, 35)},
			{ServerID: "b", NewestGood: day(22, 2, 31)},
			{ServerID: "c"},
			{ServerID: "d"},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %v\nwant %v", got, want)
		}
		for _, p := range []string{"db", "nope"} {
			got, err := f.s.NewestGoodPerServer(ctx, p)
			if err != nil || len(got) != 0 {
				t.Errorf("%s: got %v, %v; want no live servers", p, got, err)
			}
		}
	})
	t.Run("LastSuccessfulSlots", func(t *testing.T) {
		got, err := f.s.LastSuccessfulSlots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Slot 2 had a failed image and slot 3 failed: the last success is slot 1,
		// finished at 02:31 on the 22nd (the old slot finished earlier).
		want := map[string]time.Time{"web": day(22, 2, 31)}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
}
