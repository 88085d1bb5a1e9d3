package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// TestSlotOutcomeEmpty: the schema accepts the empty outcome (the 0001 CHECK refused
// it), an empty slot is not a successful one, and EmptySince finds where the current
// run of empty slots began.
func TestSlotOutcomeEmpty(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := storetest.MustOpen(t, c)
	base := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	finish := func(i int, outcome store.SlotOutcome, selected int) {
		t.Helper()
		c.Advance(time.Minute)
		sl, err := s.StartSlot(ctx, store.Slot{Policy: "p", Slot: base.Add(time.Duration(i) * time.Hour), Trigger: store.TriggerScheduled})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.FinishSlot(ctx, sl.ID, outcome, "", store.SlotCounts{Selected: selected, Good: selected}); err != nil {
			t.Fatalf("finish slot %d as %s: %v", i, outcome, err)
		}
	}
	since := func() time.Time {
		t.Helper()
		v, err := s.EmptySince(ctx, "p")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if !since().IsZero() {
		t.Fatal("EmptySince without slots is not zero")
	}
	finish(0, store.OutcomeRan, 2)
	finish(1, store.OutcomeEmpty, 0)
	finish(2, store.OutcomeFailed, 0) // a failed listing ends nothing
	finish(3, store.OutcomeEmpty, 0)
	if got := since(); !got.Equal(base.Add(time.Hour)) {
		t.Fatalf("EmptySince = %v, want the first empty slot %v", got, base.Add(time.Hour))
	}
	last, err := s.LastSuccessfulSlots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := c.Now().Add(-3 * time.Minute); !last["p"].Equal(want) {
		t.Fatalf("last success %v, want the ran slot's %v: an empty slot counted", last["p"], want)
	}
	finish(4, store.OutcomeRan, 1)
	if got := since(); !got.IsZero() {
		t.Fatalf("EmptySince = %v after a slot selected a server, want zero", got)
	}
	if _, err := s.StartSlot(ctx, store.Slot{Policy: "p", Slot: base.Add(9 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
}
