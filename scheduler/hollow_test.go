package scheduler

import (
	"context"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
)

// TestHollowImageStopsCounting: a volume snapshot behind the newest good image is
// deleted behind our back. The periodic reconcile (no --fix) marks the row failed
// (hollow) and records the snapshot missing, so keep_last 1 keeps the older, intact
// image instead; after the grace retention deletes the hollow image and the
// snapshots it has left, like any failed image.
func TestHollowImageStopsCounting(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("db", 2)
	h.slots(2)
	ctx := context.Background()
	good := h.rows(store.ImageGood)
	if len(good) != 2 {
		t.Fatalf("%d good rows, want 2", len(good))
	}
	older, newest := good[0], good[1]
	snaps := h.snapshotsOf(newest.Row)
	if len(snaps) != 2 || !h.sim.DeleteSnapshotDirect(snaps[0].SnapshotID) {
		t.Fatalf("snapshots of the newest image: %+v", snaps)
	}
	if _, err := NewReconciler(h.r.sh).Reconcile(ctx, h.cfg, false); err != nil {
		t.Fatal(err)
	}
	row, err := h.store.Image(ctx, newest.Row)
	if err != nil {
		t.Fatal(err)
	}
	if row.State == store.ImageGood {
		t.Fatalf("hollow image is still good after reconcile")
	}
	if row.Failure != store.FailureHollow {
		t.Errorf("hollow row: %s failure %q (%s)", row.State, row.Failure, row.Reason)
	}
	if sn := h.snapshotsOf(newest.Row)[0]; sn.SnapshotID != snaps[0].SnapshotID || sn.State != store.SnapshotMissing {
		t.Errorf("deleted snapshot %s: lineage says %s of %s, want missing", snaps[0].SnapshotID, sn.State, sn.SnapshotID)
	}
	h.prune(PruneOptions{})
	if cur, _ := h.store.Image(ctx, older.Row); cur.State != store.ImageGood {
		t.Errorf("the older, intact image was pruned (%s): the hollow one counted towards keep_last", cur.State)
	}
	h.clock.Advance(2 * time.Hour)
	h.prune(PruneOptions{})
	if cur, _ := h.store.Image(ctx, newest.Row); cur.State != store.ImageDeleted {
		t.Errorf("after the grace the hollow row is %s, want deleted", cur.State)
	}
	if cur, _ := h.store.Image(ctx, older.Row); cur.State != store.ImageGood {
		t.Errorf("older image %s after the hollow one was deleted", cur.State)
	}
	h.checkDeletedGone()
}
