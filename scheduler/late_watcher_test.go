package scheduler

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// lateHarness is a prune harness whose images take three hours, past the policy's
// wait_timeout of one hour: every image of a slot times out and completes later.
func lateHarness(t *testing.T) (*harness, []string, time.Time) {
	h := newHarness(t, retentionScene("      keep_last: 1"), withSim(func(o *simcloud.Options) {
		o.ImageBuildTime, o.SnapshotBuildTime = 3*time.Hour, 3*time.Hour
	}))
	ids := []string{h.server("img", 0), h.server("vol", 2)}
	slot := h.clock.Now().Truncate(24*time.Hour).AddDate(0, 0, -1).Add(2*time.Hour + 30*time.Minute)
	rep, err := h.r.RunSlot(context.Background(), h.cfg.Version, h.p, slot, TriggerManual)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts.Failed != 2 || rep.OK() {
		t.Fatalf("slot past wait_timeout: counts %+v, want 2 failed (alerts fire as before)", rep.Counts)
	}
	return h, ids, slot
}

// TestLateImageIsKeptThenPromoted: images not good within wait_timeout are reported
// failed, are not deleted by the failed rule after FailedGrace while they may still
// complete, and become good (image_late_good) once they do: reconcile promotes them.
func TestLateImageIsKeptThenPromoted(t *testing.T) {
	h, _, _ := lateHarness(t)
	ctx := context.Background()
	for _, row := range h.rows() {
		if row.State != store.ImageFailed || row.ImageID == "" {
			t.Fatalf("row %d: %s %q, want failed with an image", row.Row, row.State, row.ImageID)
		}
	}
	// Past FailedGrace after the timeout, before the images complete.
	h.clock.Advance(90 * time.Minute)
	h.prune(PruneOptions{})
	for _, row := range h.rows() {
		if row.State != store.ImageFailed {
			t.Errorf("prune within the late window: row %d is %s (%s)", row.Row, row.State, row.DeleteReason)
		}
		if _, ok := h.sim.Image(row.ImageID); !ok {
			t.Errorf("prune within the late window deleted image %s", row.ImageID)
		}
	}
	// The images complete; reconcile (the daemon runs it every 15 minutes) promotes them.
	h.clock.Advance(2 * time.Hour)
	rep, err := NewReconciler(h.r.sh).Reconcile(ctx, h.cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts[DriftCategory("late_good")] != 2 {
		t.Errorf("reconcile counts %v, want late_good 2", rep.Counts)
	}
	for _, row := range h.rows() {
		if row.State != store.ImageGood {
			t.Errorf("after the images completed: row %d is %s (%s), want good", row.Row, row.State, row.Reason)
		}
		evs, err := h.store.Events(ctx, store.EventFilter{ImageRow: row.Row, Kind: "image_late_good"})
		if err != nil || len(evs) != 1 {
			t.Errorf("row %d: image_late_good events %v (%v)", row.Row, evs, err)
		}
	}
	h.checkDeletedGone()
}

// TestNextSlotPromotesLateImage: where no daemon reconciles, the policy's next slot
// run looks at the images in their late window and promotes those that completed.
func TestNextSlotPromotesLateImage(t *testing.T) {
	h, _, slot := lateHarness(t)
	h.clock.Advance(3 * time.Hour)
	if _, err := h.r.RunSlot(context.Background(), h.cfg.Version, h.p, slot.AddDate(0, 0, 1), TriggerManual); err != nil {
		t.Fatal(err)
	}
	rows, err := h.store.Images(context.Background(), store.ImageFilter{Policy: h.p.Name, Slot: slot})
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range rows {
		if row.State != store.ImageGood {
			t.Errorf("row %d of the late slot is %s (%s), want good", row.Row, row.State, row.Reason)
		}
	}
}

// TestPruneKeepsImageGlanceStillMakes: a failed image that Glance still shows saving
// (a stuck upload) is never deleted by retention, even long after its late window.
func TestPruneKeepsImageGlanceStillMakes(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	id := h.server("stuck", 0)
	h.sim.StickNextImage(id)
	slot := h.clock.Now().Truncate(24*time.Hour).AddDate(0, 0, -1).Add(2*time.Hour + 30*time.Minute)
	if _, err := h.r.RunSlot(context.Background(), h.cfg.Version, h.p, slot, TriggerManual); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(5 * 24 * time.Hour)
	h.prune(PruneOptions{})
	rows := h.rows()
	if len(rows) != 1 || rows[0].State != store.ImageFailed {
		t.Fatalf("rows %+v", rows)
	}
	if im, ok := h.sim.Image(rows[0].ImageID); !ok || im.Status != "saving" {
		t.Errorf("image %s still saving in Glance was deleted (present=%v, %s)", rows[0].ImageID, ok, im.Status)
	}
}

// TestWatchLatePromotes: the daemon's late watch promotes an image that completes
// after wait_timeout, and counts it in images_created_total{result="late_good"}.
func TestWatchLatePromotes(t *testing.T) {
	h := newHarness(t, withWaitTimeout("300ms"), withSim(func(o *simcloud.Options) {
		o.ImageBuildTime, o.SnapshotBuildTime = 1200*time.Millisecond, 1200*time.Millisecond
	}))
	h.addServers(2)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, testBuild)
	r := h.runner(func(o *runnerOptions) { o.Metrics = m })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rep, err := r.RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerManual)
	if err != nil || rep.Counts.Failed != 2 {
		t.Fatalf("slot: %+v %v, want 2 failed by wait_timeout", rep.Counts, err)
	}
	done := make(chan error, 1)
	go func() { done <- NewLateWatcher(r.sh).WatchLate(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rows, err := h.store.Images(ctx, store.ImageFilter{Policy: h.p.Name, States: []store.ImageState{store.ImageGood}})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("late watch: %d of 2 images good after 10s", len(rows))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := testutil.ToFloat64(m.imagesCreated.WithLabelValues("web", CreateLateGood)); got != 2 {
		t.Errorf("images_created_total{result=late_good} = %v, want 2", got)
	}
	cancel()
	<-done
	h.checkLineageMatchesCloud()
}
