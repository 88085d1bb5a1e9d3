package scheduler

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// countActions returns the report's counts, after checking that they agree with
// its items (every image is listed in a full report; in a short one, the images
// not listed are the kept, protected and deferred ones).
func countActions(t *testing.T, rep *PruneReport, full bool) map[PruneAction]int {
	t.Helper()
	listed := map[PruneAction]int{}
	for _, it := range rep.Items {
		listed[it.Action]++
	}
	for a, n := range rep.Counts {
		quiet := a == PruneKeep || a == PruneProtected || a == PruneDeferred
		if listed[a] != n && (full || !quiet) {
			t.Fatalf("report counts %s %d, lists %d (full=%v)", a, n, listed[a], full)
		}
	}
	return rep.Counts
}

func TestPruneDeletesImageAndVolumeBackedWithSnapshots(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 2"))
	h.server("app", 0)
	vol := h.server("db", 2)
	h.slots(4)
	if n := len(h.sim.Snapshots()); n != 8 {
		t.Fatalf("setup: %d snapshots in the cloud, want 8 (4 images x 2 volumes)", n)
	}

	rep := h.prune(PruneOptions{Full: true})
	if got := countActions(t, rep, true); got[PruneDeleted] != 4 || got[PruneKeep] != 4 || len(rep.Items) != 8 {
		t.Fatalf("first prune actions = %v over %d items, want 4 deleted and 4 kept", got, len(rep.Items))
	}
	if rep.SnapshotsDeleted != 4 {
		t.Errorf("SnapshotsDeleted = %d, want 4", rep.SnapshotsDeleted)
	}
	for _, it := range rep.Items {
		if it.Action == PruneDeleted && (len(it.Reasons) == 0 || it.Reasons[0] != policy.ReasonNoRule) {
			t.Errorf("deleted %s with reasons %q", it.ImageID, it.Reasons)
		}
	}
	h.checkDeletedGone()
	if n := len(h.sim.Snapshots()); n != 4 {
		t.Errorf("%d snapshots left in the cloud, want 4", n)
	}
	// The newest two of each server are what is left.
	for _, row := range h.rows(store.ImageGood) {
		if row.Slot.Before(h.clock.Now().AddDate(0, 0, -3)) {
			t.Errorf("kept row %d of %v, want only the two newest slots", row.Row, row.Slot)
		}
	}
	if n := len(h.rows(store.ImageDeleted)); n != 4 {
		t.Errorf("%d deleted rows, want 4", n)
	}
	var volDeleted int
	for _, row := range h.rows(store.ImageDeleted) {
		if row.ServerID == vol {
			volDeleted++
			if n := len(h.snapshotsOf(row.Row)); n != 2 {
				t.Errorf("deleted volume-backed row %d has %d snapshot rows, want 2", row.Row, n)
			}
		}
	}
	if volDeleted != 2 {
		t.Errorf("%d volume-backed rows deleted, want 2", volDeleted)
	}

	// A second prune finds nothing more to do and calls no delete.
	h.sim.ResetRequests()
	rep = h.prune(PruneOptions{})
	if got := countActions(t, rep, false); got[PruneKeep] != 4 || len(rep.Items) != 0 {
		t.Fatalf("second prune actions = %v, want 4 kept", got)
	}
	if req := h.sim.Requests(); req["image.delete"]+req["volume.snapshots.delete"] != 0 {
		t.Fatalf("second prune made delete calls: %v", req)
	}
}

func TestPruneDryRunChangesNothing(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("app", 0)
	h.server("db", 1)
	h.slots(3)
	ctx := context.Background()
	imagesBefore, snapsBefore := h.sim.Images(), h.sim.Snapshots()
	rowsBefore := h.rows()
	eventsBefore, err := h.store.Events(ctx, store.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	h.sim.ResetRequests()

	rep := h.prune(PruneOptions{DryRun: true})
	if got := countActions(t, rep, false); got[PruneDelete] != 4 || got[PruneKeep] != 2 {
		t.Fatalf("dry run actions = %v, want 4 delete and 2 keep", got)
	}
	if !rep.DryRun {
		t.Error("report does not say dry run")
	}
	// Planned from packed rows, the shown items still carry every field a report
	// prints.
	byRow := map[int64]store.Image{}
	for _, im := range rowsBefore {
		byRow[im.Row] = im
	}
	for _, it := range rep.Items {
		im := byRow[it.ImageRow]
		if it.Name != im.Name || it.ServerName != im.ServerName || it.ImageID != im.ImageID || it.ServerID != im.ServerID ||
			!it.Slot.Equal(im.Slot) || it.Name == "" || it.ServerName == "" {
			t.Errorf("item %+v does not show row %+v", it, im)
		}
	}
	if !reflect.DeepEqual(h.sim.Images(), imagesBefore) || !reflect.DeepEqual(h.sim.Snapshots(), snapsBefore) {
		t.Fatal("dry run changed the cloud")
	}
	if !reflect.DeepEqual(h.rows(), rowsBefore) {
		t.Fatal("dry run changed the lineage")
	}
	eventsAfter, err := h.store.Events(ctx, store.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(eventsAfter) != len(eventsBefore) {
		t.Fatalf("dry run wrote %d events", len(eventsAfter)-len(eventsBefore))
	}
	// It reads (servers, and each image it would delete, as the real run does before
	// it deletes) and nothing else.
	for op, n := range h.sim.Requests() {
		if op != "compute.servers.list" && op != "keystone.token" && op != "compute.versions" && op != "image.get" && n > 0 {
			t.Errorf("dry run called %s %d times", op, n)
		}
	}
}

func TestPruneKeepsProtectedImageAndRechecksLater(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("db", 1)
	h.slots(2)
	old := h.rows(store.ImageGood)[0] // ordered by slot: the oldest
	if !h.sim.SetImageProtected(old.ImageID, true) {
		t.Fatal("cannot protect the image")
	}
	rep := h.prune(PruneOptions{})
	if got := countActions(t, rep, false); got[PruneProtected] != 1 || got[PruneKeep] != 1 {
		t.Fatalf("actions = %v, want 1 protected and 1 kept", got)
	}
	row, err := h.store.Image(context.Background(), old.Row)
	if err != nil {
		t.Fatal(err)
	}
	if row.State != store.ImageKeptProtected || row.LastError == "" || row.NextAttemptAt.IsZero() {
		t.Fatalf("protected row: state %s, last error %q, next %v", row.State, row.LastError, row.NextAttemptAt)
	}
	if _, ok := h.sim.Image(old.ImageID); !ok {
		t.Fatal("protected image deleted")
	}
	for _, sn := range h.snapshotsOf(old.Row) {
		if cs, ok := h.sim.Snapshot(sn.SnapshotID); !ok || cs.Status != cloud.SnapshotAvailable {
			t.Fatalf("snapshot %s of the protected image touched: %v %s", sn.SnapshotID, ok, cs.Status)
		}
	}

	// Not retried every cycle: an hour later, no call about it at all.
	h.clock.Advance(time.Hour)
	h.sim.ResetRequests()
	rep = h.prune(PruneOptions{})
	if got := countActions(t, rep, false); got[PruneProtected] != 1 {
		t.Fatalf("second prune actions = %v, want it still protected", got)
	}
	if req := h.sim.Requests(); req["image.delete"] != 0 || req["image.get"] != 0 {
		t.Fatalf("protected image looked at again within the recheck interval: %v", req)
	}

	// Once the recheck is due and someone unprotected it, it goes.
	h.sim.SetImageProtected(old.ImageID, false)
	h.clock.Advance(ProtectedRecheck)
	rep = h.prune(PruneOptions{})
	if got := countActions(t, rep, false); got[PruneDeleted] != 1 {
		t.Fatalf("prune after unprotect: actions = %v, want 1 deleted", got)
	}
	h.checkDeletedGone()
}

// TestPruneDryRunShowsWhatTheRealRunDoes protects an image retention would delete
// in Glance: the dry run must show it kept (protected), as the real run keeps it,
// and agree with the real run on every other image. Before plan-then-execute, the
// dry run never asked Glance and showed it as delete.
func TestPruneDryRunShowsWhatTheRealRunDoes(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("db", 1)
	h.server("app", 0)
	h.slots(3)
	var protected store.Image
	for _, row := range h.rows(store.ImageGood) {
		if row.VolumeBacked && protected.Row == 0 {
			protected = row // the oldest of db
		}
	}
	if !h.sim.SetImageProtected(protected.ImageID, true) {
		t.Fatal("cannot protect the image")
	}
	h.sim.ResetRequests()
	dry := h.prune(PruneOptions{DryRun: true, Full: true})
	for op, n := range h.sim.Requests() {
		if n > 0 && (strings.Contains(op, "delete") || strings.Contains(op, "update")) {
			t.Errorf("dry run called %s %d times", op, n)
		}
	}
	real := h.prune(PruneOptions{Full: true})
	byRow := func(rep *PruneReport) map[int64]PruneItem {
		out := map[int64]PruneItem{}
		for _, it := range rep.Items {
			out[it.ImageRow] = it
		}
		return out
	}
	d, r := byRow(dry), byRow(real)
	if len(d) != 6 || len(r) != 6 {
		t.Fatalf("dry run lists %d images, the real run %d; want 6 each", len(d), len(r))
	}
	if it := d[protected.Row]; it.Action != PruneProtected || !it.Keep {
		t.Errorf("dry run shows the protected image as %s (keep %v), reasons %q; want protected, kept", it.Action, it.Keep, it.Reasons)
	}
	// What the dry run says is what the real run did: delete became deleted.
	done := map[PruneAction]PruneAction{PruneDelete: PruneDeleted}
	for row, di := range d {
		want := di.Action
		if w, ok := done[want]; ok {
			want = w
		}
		if got := r[row].Action; got != want {
			t.Errorf("row %d: dry run says %s, the real run did %s", row, di.Action, got)
		}
	}
	if _, ok := h.sim.Image(protected.ImageID); !ok {
		t.Fatal("protected image deleted")
	}
}

func TestPruneSnapshotInUseIsKeptAndRetriedWithBackoff(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("db", 2)
	h.slots(2)
	old := h.rows(store.ImageGood)[0]
	snaps := h.snapshotsOf(old.Row)
	busy, free := snaps[0].SnapshotID, snaps[1].SnapshotID
	if !h.sim.AddVolumeFromSnapshot(busy) {
		t.Fatal("cannot add a volume from the snapshot")
	}

	rep := h.prune(PruneOptions{})
	if got := countActions(t, rep, false); got[PrunePending] != 1 {
		t.Fatalf("actions = %v, want 1 pending", got)
	}
	if _, ok := h.sim.Image(old.ImageID); ok {
		t.Fatal("image still in the cloud; it must go before its snapshots")
	}
	if _, ok := h.sim.Snapshot(free); ok {
		t.Fatal("the free snapshot was not deleted")
	}
	if cs, ok := h.sim.Snapshot(busy); !ok || cs.Status != cloud.SnapshotAvailable {
		t.Fatalf("busy snapshot: exists=%v status %s, want it kept available", ok, cs.Status)
	}
	row, _ := h.store.Image(context.Background(), old.Row)
	if row.State != store.ImageDeleting {
		t.Fatalf("row is %s, want deleting until every snapshot is gone", row.State)
	}
	sn, err := h.store.SnapshotByID(context.Background(), busy)
	if err != nil {
		t.Fatal(err)
	}
	if sn.State != store.SnapshotKeptInUse || sn.NextAttemptAt.IsZero() || sn.LastError == "" {
		t.Fatalf("busy snapshot row: %s next %v error %q", sn.State, sn.NextAttemptAt, sn.LastError)
	}

	// Within the backoff: nothing is asked of Cinder.
	h.sim.ResetRequests()
	h.clock.Advance(RetryBackoffBase / 2)
	rep = h.prune(PruneOptions{})
	if got := countActions(t, rep, false); got[PrunePending] != 1 {
		t.Fatalf("actions within backoff = %v", got)
	}
	if req := h.sim.Requests(); req["volume.snapshots.delete"]+req["volume.snapshots.get"] != 0 {
		t.Fatalf("retried within the backoff: %v", req)
	}

	// After the backoff, still busy: kept again, with a longer wait.
	h.clock.Advance(RetryBackoffBase)
	h.prune(PruneOptions{})
	sn2, _ := h.store.SnapshotByID(context.Background(), busy)
	if sn2.State != store.SnapshotKeptInUse || sn2.DeleteAttempts != 2 {
		t.Fatalf("second attempt: %s, %d attempts", sn2.State, sn2.DeleteAttempts)
	}
	if gap, first := sn2.NextAttemptAt.Sub(h.clock.Now()), sn.NextAttemptAt.Sub(sn.UpdatedAt); gap <= first {
		t.Fatalf("backoff did not grow: %v then %v", first, gap)
	}

	// The volume goes away (here: the snapshot vanishes for good); the journal ends.
	h.sim.DeleteSnapshotDirect(busy)
	h.clock.Advance(RetryBackoffMax)
	rep = h.prune(PruneOptions{})
	if got := countActions(t, rep, false); got[PruneDeleted] != 1 {
		t.Fatalf("after the volume went: actions = %v, want 1 deleted", got)
	}
	h.checkDeletedGone()
}

// TestPruneResumesAfterCrashAtEachStep kills the journal after each of its steps
// and checks that the next prune finishes the job with nothing left behind.
func TestPruneResumesAfterCrashAtEachStep(t *testing.T) {
	crash := errors.New("crash")
	for _, tc := range []struct {
		name  string
		hooks func(*pruneHooks)
		// after the crash: is the image still in the cloud?
		imageThere bool
	}{
		{"after mark deleting", func(k *pruneHooks) { k.afterBegin = func(int64) error { return crash } }, true},
		{"after image delete", func(k *pruneHooks) { k.afterImageDelete = func(int64) error { return crash } }, false},
		{"after first snapshot delete", func(k *pruneHooks) {
			k.afterSnapshotDelete = func(int64, string) error { return crash }
		}, false},
		{"before mark deleted", func(k *pruneHooks) { k.beforeMarkDeleted = func(int64) error { return crash } }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, retentionScene("      keep_last: 1"))
			h.server("db", 2)
			h.slots(2)
			old := h.rows(store.ImageGood)[0]
			var opts PruneOptions
			tc.hooks(&opts.hooks)
			h.prune(opts)
			row, _ := h.store.Image(context.Background(), old.Row)
			if row.State != store.ImageDeleting {
				t.Fatalf("after the crash the row is %s, want deleting", row.State)
			}
			if _, ok := h.sim.Image(old.ImageID); ok != tc.imageThere {
				t.Fatalf("after the crash image in cloud = %v, want %v", ok, tc.imageThere)
			}
			rep := h.prune(PruneOptions{})
			if got := countActions(t, rep, false); got[PruneDeleted] != 1 || got[PruneKeep] != 1 {
				t.Fatalf("resume: actions = %v, want 1 deleted, 1 kept", got)
			}
			h.checkDeletedGone()
			if n := len(h.sim.Snapshots()); n != 2 {
				t.Fatalf("%d snapshots left, want the kept image's 2", n)
			}
		})
	}
}

// TestPruneNeverTouchesInheritedStamp: a server booted from one of our images passes
// our stamp on to any image made of it. That image has no lineage row, so no prune
// may ever delete it, however its stamp reads.
func TestPruneNeverTouchesInheritedStamp(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("app", 0)
	h.slots(1)
	ours := h.rows(store.ImageGood)[0]
	base, _ := h.sim.Image(ours.ImageID)
	// Someone boots a server from our image and snapshots it by hand.
	clone := h.sim.AddServer(simcloud.ServerSpec{Name: "clone", ImageProperties: base.Properties})
	foreign, err := h.cloud.CreateImage(context.Background(), clone, "hand-made", nil)
	if err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(time.Hour)
	fi, ok := h.sim.Image(foreign)
	if !ok {
		t.Fatal("hand-made image missing")
	}
	if st, ok := cloud.StampOf(fi.Properties); !ok || st.Owner != h.store.Owner() {
		t.Fatalf("setup: the hand-made image does not carry our stamp: %v", fi.Properties)
	}
	// More of our own images, so that retention has work to do.
	h.slots(3)
	h.prune(PruneOptions{})
	h.clock.Advance(48 * time.Hour)
	h.prune(PruneOptions{})
	if _, ok := h.sim.Image(foreign); !ok {
		t.Fatal("the image with an inherited stamp was deleted")
	}
	if _, err := h.store.ImageByID(context.Background(), foreign); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the image with an inherited stamp got a lineage row: %v", err)
	}
}

func TestPruneHonoursMaxDeletionsPerRun(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1\n      max_deletions_per_run: 4"))
	for i := range 3 {
		h.server(fmt.Sprintf("app-%d", i), i%2)
	}
	h.slots(4) // 3 servers x 3 old images = 9 to delete
	var runs [][]time.Time
	for i, want := range []int{4, 4, 1, 0} {
		rep := h.prune(PruneOptions{Full: i%2 == 0})
		got := countActions(t, rep, i%2 == 0)
		if got[PruneDeleted] != want || got[PruneDeferred] != max(9-4*(i+1), 0) {
			t.Fatalf("prune %d: actions = %v, want %d deleted and %d deferred", i, got, want, max(9-4*(i+1), 0))
		}
		var slots []time.Time
		for _, it := range rep.Items {
			if it.Action == PruneDeleted {
				slots = append(slots, it.Slot)
			}
			if it.Action == PruneDeferred && it.Reasons[len(it.Reasons)-1] != ReasonDeferredLimit {
				t.Fatalf("deferred item without the reason: %q", it.Reasons)
			}
		}
		sort.Slice(slots, func(i, j int) bool { return slots[i].Before(slots[j]) })
		runs = append(runs, slots)
	}
	// Oldest first: nothing a run deleted is younger than what a later run deleted.
	for i := 1; i < len(runs); i++ {
		if len(runs[i]) > 0 && runs[i-1][len(runs[i-1])-1].After(runs[i][0]) {
			t.Fatalf("run %d deleted %v, younger than run %d's %v", i-1, runs[i-1], i, runs[i])
		}
	}
	h.checkDeletedGone()
}

func TestPruneWhenServerGone(t *testing.T) {
	for _, tc := range []struct {
		mode    string
		deleted int
	}{{"keep", 0}, {"apply", 2}} {
		t.Run(tc.mode, func(t *testing.T) {
			h := newHarness(t, retentionScene("      keep_last: 1\n      when_server_gone: "+tc.mode))
			id := h.server("app", 0)
			h.slots(3)
			h.sim.RemoveServer(id)
			rep := h.prune(PruneOptions{Full: true})
			if rep.ServersGone != 1 {
				t.Fatalf("ServersGone = %d, want 1", rep.ServersGone)
			}
			if got := countActions(t, rep, true); got[PruneDeleted] != tc.deleted {
				t.Fatalf("actions = %v, want %d deleted", got, tc.deleted)
			}
			if tc.mode == "keep" {
				for _, it := range rep.Items {
					if it.Reasons[len(it.Reasons)-1] != ReasonServerGone && it.Action == PruneKeep && it.Reasons[0] == policy.ReasonNoRule {
						t.Fatalf("kept without the server-gone reason: %q", it.Reasons)
					}
				}
			}
			h.checkDeletedGone()
		})
	}
}

// TestPruneSkipsPolicyNotInForce: retention asks the config owner for the policy
// once it holds the lock; a policy absent or disabled then deletes nothing.
func TestPruneSkipsPolicyNotInForce(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("app", 0)
	h.slots(3)
	removed := *h.cfg
	removed.Policies = nil
	disabled := *h.cfg
	off := *h.p
	off.Enabled = false
	disabled.Policies = []*policy.Policy{&off}
	cfgs := policy.NewCoordinator(h.cfg)
	ret := NewRetention(h.r.sh, cfgs, RetentionOptions{})
	for _, tc := range []struct {
		name string
		cfg  *policy.Config
		why  string
	}{{"removed", &removed, "not in the config"}, {"disabled", &disabled, "disabled"}} {
		if err := cfgs.Apply(tc.cfg); err != nil {
			t.Fatal(err)
		}
		for _, dry := range []bool{true, false} {
			rep, err := ret.Prune(context.Background(), h.p.Name, PruneOptions{DryRun: dry, Full: true})
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if !strings.Contains(rep.Inactive, tc.why) || len(rep.Items) != 0 {
				t.Errorf("%s (dry run %v): inactive %q, %d items; want %q and none", tc.name, dry, rep.Inactive, len(rep.Items), tc.why)
			}
		}
		if n := len(h.rows(store.ImageGood)); n != 3 {
			t.Fatalf("%s: %d good rows left, want all 3", tc.name, n)
		}
	}
	// Back in force, the same call prunes.
	if err := cfgs.Apply(h.cfg); err != nil {
		t.Fatal(err)
	}
	if rep, err := ret.Prune(context.Background(), h.p.Name, PruneOptions{}); err != nil || rep.Counts[PruneDeleted] != 2 {
		t.Fatalf("prune once the policy is back: %v, %v; want 2 deleted", rep, err)
	}
}

// TestPruneRefusesForeignStamp: a lineage row whose image id points at an image that
// is not stamped for it (here: another installation's) is never deleted.
func TestPruneRefusesForeignStamp(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("app", 0)
	h.slots(2)
	srvX := h.server("x", 0) // live, selected, with no image of our own yet
	ctx := context.Background()
	slot := h.clock.Now().AddDate(0, 0, -10)
	foreign := h.sim.PutImage(simcloud.ImageState{Name: "theirs", Properties: cloud.Stamp{Owner: "someone-else",
		Policy: h.p.Name, Server: srvX, Slot: StampSlot(slot)}.Properties()})
	im, _, err := h.store.RecordIntent(ctx, store.Intent{Policy: h.p.Name, ServerID: srvX, Slot: slot, Name: "theirs"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.SetImageID(ctx, im.Row, foreign, true, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.MarkGood(ctx, im.Row, store.Good{}); err != nil {
		t.Fatal(err)
	}
	// Two good rows for srv-x would let retention delete the older; add a newer one
	// the same way, stamped correctly, so that the foreign one is the candidate.
	newer := h.sim.PutImage(simcloud.ImageState{Name: "ours", Properties: cloud.Stamp{Owner: h.store.Owner(),
		Policy: h.p.Name, Server: srvX, Slot: StampSlot(slot.Add(time.Hour))}.Properties()})
	im2, _, _ := h.store.RecordIntent(ctx, store.Intent{Policy: h.p.Name, ServerID: srvX, Slot: slot.Add(time.Hour), Name: "ours"})
	h.store.SetImageID(ctx, im2.Row, newer, true, "test")
	h.store.MarkGood(ctx, im2.Row, store.Good{})

	rep := h.prune(PruneOptions{})
	var refused bool
	for _, it := range rep.Items {
		if it.ImageID == foreign {
			refused = it.Action == PruneRefused
		}
	}
	if !refused {
		t.Fatalf("foreign-stamped image not refused: %+v", rep.Items)
	}
	if _, ok := h.sim.Image(foreign); !ok {
		t.Fatal("foreign-stamped image deleted")
	}
	row, _ := h.store.Image(ctx, im.Row)
	if row.State != store.ImageGood {
		t.Fatalf("refused row is %s, want it left good (the journal never opened)", row.State)
	}
}

// TestPruneDefersOnCloudErrorAndRetries: a Glance delete that fails (after the
// adapter's retries) leaves the journal open with a backoff; the next prune after it
// finishes the job.
func TestPruneDefersOnCloudErrorAndRetries(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("app", 0)
	h.slots(2)
	old := h.rows(store.ImageGood)[0]
	h.sim.SetFault(simcloud.Fault{Op: "image.delete", ErrorStatus: 503, Count: 1})
	rep := h.prune(PruneOptions{})
	if got := countActions(t, rep, false); got[PrunePending] != 1 {
		t.Fatalf("actions = %v, want 1 pending", got)
	}
	row, _ := h.store.Image(context.Background(), old.Row)
	if row.State != store.ImageDeleting || row.LastError == "" || !row.NextAttemptAt.After(h.clock.Now()) {
		t.Fatalf("after a failed delete: state %s, error %q, next %v", row.State, row.LastError, row.NextAttemptAt)
	}
	if _, ok := h.sim.Image(old.ImageID); !ok {
		t.Fatal("image gone although the delete failed")
	}
	h.clock.Advance(RetryBackoffBase)
	rep = h.prune(PruneOptions{})
	if got := countActions(t, rep, false); got[PruneDeleted] != 1 {
		t.Fatalf("retry: actions = %v, want 1 deleted", got)
	}
	h.checkDeletedGone()
}

// TestPruneCleansFailedImageAfterGrace: a volume-backed image whose snapshots went
// to error is failed; it is kept while within wait_timeout + FailedGrace, then the
// journal deletes what is left of it (Nova already deleted the image; the error
// snapshots stay behind in Cinder).
func TestPruneCleansFailedImageAfterGrace(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 3"))
	srv := h.server("db", 2)
	h.slots(1)
	h.sim.FailNextSnapshot(srv)
	today := h.clock.Now().Truncate(24 * time.Hour)
	rep, err := h.r.RunSlot(context.Background(), h.cfg.Version, h.p, today.Add(2*time.Hour+30*time.Minute), TriggerManual)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Servers[0].Outcome != ServerFailed {
		t.Fatalf("setup: the slot's image is %s, want failed", rep.Servers[0].Outcome)
	}
	failed := h.rows(store.ImageFailed)
	if len(failed) != 1 {
		t.Fatalf("%d failed rows, want 1", len(failed))
	}
	snaps := h.snapshotsOf(failed[0].Row)
	if len(snaps) != 2 {
		t.Fatalf("failed row has %d snapshot rows, want 2", len(snaps))
	}
	for _, sn := range snaps {
		if _, ok := h.sim.Snapshot(sn.SnapshotID); !ok {
			t.Fatalf("setup: error snapshot %s not in Cinder", sn.SnapshotID)
		}
	}

	rep2 := h.prune(PruneOptions{Full: true})
	var reasons []string
	for _, it := range rep2.Items {
		if it.ImageRow == failed[0].Row {
			reasons = it.Reasons
			if it.Action != PruneKeep {
				t.Fatalf("failed image within grace: action %s", it.Action)
			}
		}
	}
	if len(reasons) != 2 || reasons[1] != policy.ReasonFailedGrace {
		t.Fatalf("failed image within grace: reasons %q", reasons)
	}

	h.clock.Advance(h.p.Image.WaitTimeout + policy.FailedGrace)
	rep2 = h.prune(PruneOptions{})
	if got := countActions(t, rep2, false); got[PruneDeleted] != 1 || got[PruneKeep] != 1 {
		t.Fatalf("after the grace: actions = %v, want the failed one deleted and the good one kept", got)
	}
	for _, sn := range snaps {
		if _, ok := h.sim.Snapshot(sn.SnapshotID); ok {
			t.Errorf("error snapshot %s still in Cinder", sn.SnapshotID)
		}
	}
	h.checkDeletedGone()
}

func TestPruneCountsDeletionsInMetrics(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("app", 0)
	h.server("db", 2)
	h.slots(2)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, BuildInfo{Version: "test"})
	m.InitPolicy(h.p.Name)
	h.r = h.runner(func(o *runnerOptions) { o.Metrics = m })
	h.prune(PruneOptions{})
	for _, tc := range []struct {
		vec  *prometheus.CounterVec
		want float64
	}{{m.imagesDeleted, 2}, {m.snapshotsDeleted, 2}} {
		if got := testutil.ToFloat64(tc.vec.WithLabelValues(h.p.Name, DeleteConfirmed)); got != tc.want {
			t.Errorf("deleted counter = %v, want %v", got, tc.want)
		}
	}
}

// TestRetentionYieldsThePolicyLockToABackupRun: retention waiting for Cinder to
// finish a snapshot deletion holds the policy's lock, which a backup run of the
// policy needs too. Found by the soak: a Cinder read that hung kept a daily-style
// run queued behind retention for over a minute. Retention must let go at once
// and leave the snapshot to the journal, never delay a backup.
func TestRetentionYieldsThePolicyLockToABackupRun(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("db", 1)
	h.slots(2)

	hung := make(chan struct{})
	var once sync.Once
	opts := PruneOptions{}
	opts.hooks.afterSnapshotDelete = func(int64, string) error {
		// From now on every Cinder read hangs, as in the soak.
		once.Do(func() {
			h.sim.SetFault(simcloud.Fault{Op: "volume.snapshots.get", Hang: true})
			close(hung)
		})
		return nil
	}
	type result struct {
		rep *PruneReport
		err error
	}
	done := make(chan result, 1)
	rt := NewRetention(h.r.sh, policy.NewCoordinator(h.cfg), RetentionOptions{})
	go func() {
		rep, err := rt.Prune(context.Background(), h.p.Name, opts)
		done <- result{rep, err}
	}()
	select {
	case <-hung:
	case r := <-done:
		t.Fatalf("prune ended before it deleted a snapshot: %+v, %v", r.rep, r.err)
	}

	// The backup run asks for the policy lock while retention waits for Cinder.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	unlock, err := h.r.sh.LockPolicy(ctx, h.p.Name)
	if err != nil {
		t.Fatalf("a backup run could not take the policy lock while retention waited for Cinder: %v", err)
	}
	unlock()

	r := <-done
	if r.err != nil {
		t.Fatalf("prune: %v", r.err)
	}
	if got := countActions(t, r.rep, false); got[PrunePending] != 1 {
		t.Errorf("prune that yielded: actions %v, want the image pending (its snapshot left to the journal)", got)
	}
	deleting := h.rows(store.ImageDeleting)
	if len(deleting) != 1 {
		t.Fatalf("%d rows deleting after the yielded prune, want 1", len(deleting))
	}

	// The next prune finishes the journal once Cinder answers again.
	h.sim.ClearFaults()
	h.clock.Advance(time.Minute)
	h.prune(PruneOptions{})
	if n := len(h.rows(store.ImageDeleting)); n != 0 {
		t.Errorf("%d rows still deleting after the next prune", n)
	}
	if n := len(h.rows(store.ImageDeleted)); n != 1 {
		t.Errorf("%d rows deleted, want 1", n)
	}
	h.checkDeletedGone()
}

// TestPruneStopsWhenReloadSupersedesItsConfig checks that a prune whose config was
// replaced by a reload before a deletion started does not start it: the deletions
// the old config decided are left for a prune by the new one (issue 11; the soak's
// kept_by_config saw a removed policy's images deleted 1.4 s after the reload).
func TestPruneStopsWhenReloadSupersedesItsConfig(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("app", 0)
	h.server("db", 1)
	h.slots(3)
	h.sim.ResetRequests()
	calls := 0
	rep := h.prune(PruneOptions{InForce: func() bool { calls++; return calls == 1 }})
	if !rep.Superseded {
		t.Error("the report does not say the prune was superseded")
	}
	if n := h.sim.Requests()["image.delete"]; n != 1 {
		t.Fatalf("%d image deletes after the reload superseded the prune at its second deletion, want 1 (the one started before)", n)
	}
	rep = h.prune(PruneOptions{})
	if rep.Superseded || h.sim.Requests()["image.delete"] != 4 {
		t.Fatalf("the next prune: superseded %v, %d image deletes in all, want 4", rep.Superseded, h.sim.Requests()["image.delete"])
	}
}

// TestPruneProtectedImageGoneIsNotGood: a kept_protected image that is gone from
// Glance when its recheck comes (someone unprotected and deleted it) must not go back
// to good: a row recorded good whose image does not exist counts towards min_keep
// and the keep rules in place of a real backup, and tells the gauges a server has a
// backup it does not have. It becomes failed, so that the journal cleans the
// snapshots left behind.
func TestPruneProtectedImageGoneIsNotGood(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
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
	h.clock.Advance(ProtectedRecheck + time.Minute)
	h.prune(PruneOptions{})
	row, err := h.store.Image(context.Background(), old.Row)
	if err != nil {
		t.Fatal(err)
	}
	if row.State == store.ImageGood {
		t.Fatalf("row of image %s, gone from Glance, is recorded good", old.ImageID)
	}
	// Past the failed grace, the journal deletes the snapshots it left behind.
	h.clock.Advance(time.Hour + policy.FailedGrace + time.Minute)
	h.prune(PruneOptions{})
	if row, _ := h.store.Image(context.Background(), old.Row); row.State != store.ImageDeleted {
		t.Fatalf("old row is %s (%s), want deleted", row.State, row.LastError)
	}
	h.checkDeletedGone()
}
