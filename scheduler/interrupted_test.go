package scheduler

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/cloudtest"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// TestResumeInterruptedSlots leaves four slots running, as a killed process does,
// and checks that each gets an outcome: a recent scheduled slot is run again and
// makes its image once; a manual one, one of a removed policy and one older than
// max_lateness are recorded failed with their reason, and make no image.
func TestResumeInterruptedSlots(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, fakeCloudScene("10m"))
	srv := h.fake.AddServer(cloudtest.ServerSpec{Name: "web-1", Tags: []string{"backup=daily"}})
	start := func(policy string, slot time.Time, trigger string) store.Slot {
		t.Helper()
		sl, err := h.store.StartSlot(ctx, store.Slot{Policy: policy, Slot: slot, Due: slot, Trigger: trigger})
		if err != nil {
			t.Fatal(err)
		}
		return sl
	}
	recent := start("web", h.slot, store.TriggerScheduled)
	manual := start("web", h.slot.Add(-time.Hour), store.TriggerManual)
	removed := start("gone", h.slot, store.TriggerScheduled)
	tooLate := start("web", h.slot.Add(-48*time.Hour), store.TriggerScheduled)

	r := h.runner(nil)
	interrupted, err := r.InterruptedSlots(ctx)
	if err != nil || len(interrupted) != 4 {
		t.Fatalf("InterruptedSlots = %d slots, %v; want 4", len(interrupted), err)
	}
	if err := r.ResumeInterruptedSlots(ctx, policy.NewCoordinator(h.cfg), interrupted); err != nil {
		t.Fatal(err)
	}
	want := map[int64]struct {
		outcome store.SlotOutcome
		reason  string
	}{
		recent.ID:  {store.OutcomeRan, ""},
		manual.ID:  {store.OutcomeFailed, "manual run"},
		removed.ID: {store.OutcomeFailed, "no longer in the file"},
		tooLate.ID: {store.OutcomeFailed, "max_lateness"},
	}
	for id, w := range want {
		var got store.Slot
		all, err := h.store.Slots(ctx, store.SlotFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, sl := range all {
			if sl.ID == id {
				got = sl
			}
		}
		if got.Outcome != w.outcome || !strings.Contains(got.Reason, w.reason) {
			t.Errorf("slot %s %v (%s): outcome %q reason %q; want %q containing %q",
				got.Policy, got.Slot, got.Trigger, got.Outcome, got.Reason, w.outcome, w.reason)
		}
	}
	if n := h.fake.CreateImageCalls(srv); n != 1 {
		t.Errorf("createImage called %d times; only the resumed slot may ask, once", n)
	}
	if left, _ := r.InterruptedSlots(ctx); len(left) != 0 {
		t.Errorf("%d slots still running after the resume", len(left))
	}
}

// TestSlotRecordedBeforeWaitingForThePolicy checks that a slot waiting for its
// policy's lock (held here, as a resumed slot would hold it) already has a running
// row: a process killed while it waits must leave a slot to resume, not a hole.
func TestSlotRecordedBeforeWaitingForThePolicy(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := newHarness(t, fakeCloudScene("10m"))
	r := h.runner(nil)
	unlock, err := r.sh.LockPolicy(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	done := make(chan error, 1)
	go func() {
		_, err := r.RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerScheduled)
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		sl, err := h.store.SlotByKey(context.Background(), "web", h.slot)
		if err == nil && sl.Outcome == store.OutcomeRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no running slot row while the run waits for the policy lock: %+v, %v", sl, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel() // the process goes away while waiting
	if err := <-done; err == nil {
		t.Fatal("RunSlot returned no error after its context was cancelled")
	}
	left, err := r.InterruptedSlots(context.Background())
	if err != nil || len(left) != 1 {
		t.Fatalf("interrupted slots = %+v, %v; want the one that was waiting", left, err)
	}
}
