package scheduler

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// reconcileScene arranges one case of every drift category in the simulator and
// returns what it made.
type reconcileScene struct {
	adoptRow                     int64  // intent row an image stamped for it can be adopted into
	adoptImage                   string // that image
	orphanImage                  string // stamped with our owner, no intent row
	inheritedImage               string // made of a server booted from our image
	goneRow                      int64  // good row of an image-backed server whose image was deleted by hand
	leftRow                      int64  // good row of a volume-backed server whose image was deleted by hand
	leftSnaps                    []string
	hollowRow                    int64 // good row whose one snapshot was deleted by hand
	hollowSnap                   string
	resurrectedSnap              string // recorded deleted by the journal, back in Cinder
	appServer, dbServer, db2Serv string
}

func arrangeDrift(t *testing.T, h *harness) reconcileScene {
	t.Helper()
	ctx := context.Background()
	var sc reconcileScene
	sc.appServer = h.server("app", 0)
	sc.dbServer = h.server("db", 2)
	sc.db2Serv = h.server("db2", 1)
	h.slots(3)
	// keep_last 2 deletes the oldest image of each server: db's snapshots are then
	// recorded deleted. One of them comes back (the "always" leftover).
	h.prune(PruneOptions{})
	for _, row := range h.rows(store.ImageDeleted) {
		if row.ServerID == sc.dbServer {
			sc.resurrectedSnap = h.snapshotsOf(row.Row)[0].SnapshotID
		}
	}
	h.sim.PutSnapshot(simcloud.SnapshotState{ID: sc.resurrectedSnap, VolumeID: "vol-x", Status: "available", Size: 1})

	good := map[string][]store.Image{}
	for _, row := range h.rows(store.ImageGood) {
		good[row.ServerID] = append(good[row.ServerID], row)
	}
	// known_gone: the app server's older good image deleted behind our back.
	sc.goneRow = good[sc.appServer][0].Row
	h.sim.DeleteImageDirect(good[sc.appServer][0].ImageID)
	// leftover: the db server's older good image deleted behind our back; its two
	// snapshots stay.
	sc.leftRow = good[sc.dbServer][0].Row
	for _, sn := range h.snapshotsOf(sc.leftRow) {
		sc.leftSnaps = append(sc.leftSnaps, sn.SnapshotID)
	}
	h.sim.DeleteImageDirect(good[sc.dbServer][0].ImageID)
	// hollow: db2's newest image loses its snapshot.
	hollow := good[sc.db2Serv][len(good[sc.db2Serv])-1]
	sc.hollowRow, sc.hollowSnap = hollow.Row, h.snapshotsOf(hollow.Row)[0].SnapshotID
	h.sim.DeleteSnapshotDirect(sc.hollowSnap)

	// stamped_unknown, adoptable: an intent whose createImage outcome was lost.
	slot := h.clock.Now().Truncate(time.Hour).Add(-5 * time.Hour)
	intent, _, err := h.store.RecordIntent(ctx, store.Intent{Policy: h.p.Name, ServerID: sc.appServer, Slot: slot, Name: "app-lost"})
	if err != nil {
		t.Fatal(err)
	}
	sc.adoptRow = intent.Row
	sc.adoptImage = h.sim.PutImage(simcloud.ImageState{Name: "app-lost", Size: 10, Properties: cloud.Stamp{Owner: h.store.Owner(),
		Policy: h.p.Name, Server: sc.appServer, Slot: StampSlot(slot)}.Properties()})
	// stamped_unknown, not adoptable: no intent row at all.
	sc.orphanImage = h.sim.PutImage(simcloud.ImageState{Name: "orphan", Properties: cloud.Stamp{Owner: h.store.Owner(),
		Policy: h.p.Name, Server: sc.appServer, Slot: StampSlot(slot.Add(-24 * time.Hour))}.Properties()})
	// stamped_inherited: a server booted from our newest app image, snapshotted by hand.
	base, _ := h.sim.Image(good[sc.appServer][1].ImageID)
	clone := h.sim.AddServer(simcloud.ServerSpec{Name: "clone", ImageProperties: base.Properties})
	if sc.inheritedImage, err = h.cloud.CreateImage(ctx, clone, "by-hand", nil); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(2 * time.Hour) // past wait_timeout of the intent; the hand-made image is active
	return sc
}

func findingsBy(rep *ReconcileReport) map[DriftCategory][]DriftFinding {
	out := map[DriftCategory][]DriftFinding{}
	for _, f := range rep.Findings {
		out[f.Category] = append(out[f.Category], f)
	}
	return out
}

func TestReconcileReportsAndFixesEachCategory(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 2"))
	sc := arrangeDrift(t, h)
	ctx := context.Background()

	rep, err := NewReconciler(h.r.sh).Reconcile(ctx, h.cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	want := map[DriftCategory]int{DriftUnknown: 2, DriftInherited: 1, DriftGone: 2, DriftLeftover: 3, DriftHollow: 1}
	if fmt.Sprint(rep.Counts) != fmt.Sprint(want) {
		t.Fatalf("counts without fix = %v, want %v\n%+v", rep.Counts, want, rep.Findings)
	}
	by := findingsBy(rep)
	if f := by[DriftInherited][0]; f.ImageID != sc.inheritedImage {
		t.Errorf("inherited finding is %s, want %s", f.ImageID, sc.inheritedImage)
	}
	if f := by[DriftHollow][0]; f.ImageRow != sc.hollowRow {
		t.Errorf("hollow finding is row %d, want %d", f.ImageRow, sc.hollowRow)
	}
	// Without fix only the leftover of an image recorded deleted is deleted, and rows
	// whose image is gone or hollow are marked (that deletes nothing and stops a
	// phantom backup from counting towards min_keep).
	for _, f := range rep.Findings {
		acts := f.SnapshotID == sc.resurrectedSnap || f.Category == DriftGone || f.Category == DriftHollow
		if (f.Action != "") != acts {
			t.Errorf("without fix: %s %s%s acted %q", f.Category, f.ImageID, f.SnapshotID, f.Action)
		}
	}
	h.clock.Advance(time.Minute) // Cinder finishes the deletion
	if _, ok := h.sim.Snapshot(sc.resurrectedSnap); ok {
		t.Error("leftover of a deleted image still in Cinder")
	}
	if row, _ := h.store.Image(ctx, sc.goneRow); row.State != store.ImageFailed {
		t.Errorf("without fix the gone row is %s, want failed", row.State)
	}
	if row, _ := h.store.Image(ctx, sc.adoptRow); row.ImageID != "" {
		t.Errorf("without fix the intent row adopted %s", row.ImageID)
	}

	rep, err = NewReconciler(h.r.sh).Reconcile(ctx, h.cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	wantFixed := map[DriftCategory]int{DriftUnknown: 1, DriftLeftover: 2}
	if fmt.Sprint(rep.Fixed) != fmt.Sprint(wantFixed) {
		t.Fatalf("fixed = %v, want %v\n%+v", rep.Fixed, wantFixed, rep.Findings)
	}
	if row, _ := h.store.Image(ctx, sc.adoptRow); row.ImageID != sc.adoptImage || !row.Adopted || row.State != store.ImageCreating {
		t.Errorf("adoption: row has %q adopted=%v state %s", row.ImageID, row.Adopted, row.State)
	}
	if _, err := h.store.ImageByID(ctx, sc.orphanImage); err == nil {
		t.Error("the orphan stamped image (no intent row) was adopted")
	}
	if _, err := h.store.ImageByID(ctx, sc.inheritedImage); err == nil {
		t.Error("the inherited image was adopted")
	}
	if row, _ := h.store.Image(ctx, sc.goneRow); row.State != store.ImageFailed {
		t.Errorf("gone row is %s, want failed", row.State)
	}
	if row, _ := h.store.Image(ctx, sc.leftRow); row.State != store.ImageDeleted {
		t.Errorf("leftover row is %s, want deleted", row.State)
	}
	for _, id := range sc.leftSnaps {
		if _, ok := h.sim.Snapshot(id); ok {
			t.Errorf("leftover snapshot %s still in Cinder", id)
		}
	}
	for _, id := range []string{sc.orphanImage, sc.inheritedImage} {
		if _, ok := h.sim.Image(id); !ok {
			t.Errorf("image %s we cannot prove ours was deleted", id)
		}
	}

	// Afterwards only what must stay reported remains.
	rep, err = NewReconciler(h.r.sh).Reconcile(ctx, h.cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	// The hollow row was marked failed (hollow) without fix: it is no longer a
	// good image that needs reporting.
	want = map[DriftCategory]int{DriftUnknown: 1, DriftInherited: 1}
	if fmt.Sprint(rep.Counts) != fmt.Sprint(want) {
		t.Fatalf("counts after fix = %v, want %v\n%+v", rep.Counts, want, rep.Findings)
	}
}

// TestReconcilePreviewChangesNothing checks that a preview finds what a reconcile
// would, changes neither the cloud nor the lineage, and says what would be done.
func TestReconcilePreviewChangesNothing(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 2"))
	sc := arrangeDrift(t, h)
	ctx := context.Background()
	before, err := h.store.Lineage(ctx, store.ImageFilter{})
	if err != nil {
		t.Fatal(err)
	}
	events, err := h.store.Events(ctx, store.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}

	rep, err := NewReconciler(h.r.sh).ReconcilePreview(ctx, h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := map[DriftCategory]int{DriftUnknown: 2, DriftInherited: 1, DriftGone: 2, DriftLeftover: 3, DriftHollow: 1}
	if fmt.Sprint(rep.Counts) != fmt.Sprint(want) || !rep.ReportOnly || len(rep.Fixed) != 0 {
		t.Fatalf("preview counts = %v fixed %v report-only %v, want %v and nothing fixed", rep.Counts, rep.Fixed, rep.ReportOnly, want)
	}
	for _, f := range rep.Findings {
		var action string
		switch {
		case f.SnapshotID == sc.resurrectedSnap:
			action = previewDelete
		case f.Category == DriftGone:
			action = previewMarkGone
		case f.Category == DriftHollow:
			action = previewMarkHollow
		case f.ImageID == sc.adoptImage:
			action = previewAdopt
		case f.Category == DriftLeftover:
			action = previewDeleteFix
		}
		if f.Action != action {
			t.Errorf("%s %s%s: action %q, want %q", f.Category, f.ImageID, f.SnapshotID, f.Action, action)
		}
	}
	h.clock.Advance(time.Minute)
	if _, ok := h.sim.Snapshot(sc.resurrectedSnap); !ok {
		t.Error("the preview deleted a leftover snapshot")
	}
	after, err := h.store.Lineage(ctx, store.ImageFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the preview changed the lineage:\nbefore %+v\nafter  %+v", before, after)
	}
	if events2, _ := h.store.Events(ctx, store.EventFilter{}); len(events2) != len(events) {
		t.Errorf("the preview added %d events", len(events2)-len(events))
	}
}

// TestReconcilePreviewLeakNeedsNoFix checks that the preview of a leaked
// unknown-outcome row (failed after a createImage was sent) does not claim it
// needs --fix: the daemon's periodic reconcile adopts it without.
func TestReconcilePreviewLeakNeedsNoFix(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 2"))
	sc := arrangeDrift(t, h)
	ctx := context.Background()
	if _, err := h.store.BeginAttempt(ctx, sc.adoptRow, "app-lost", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.MarkFailed(ctx, sc.adoptRow, "createImage outcome unknown; image never located"); err != nil {
		t.Fatal(err)
	}
	rep, err := NewReconciler(h.r.sh).ReconcilePreview(ctx, h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range rep.Findings {
		if f.ImageID == sc.adoptImage {
			found = true
			if f.Action != previewAdoptLeak {
				t.Errorf("preview of the leaked row: action %q, want %q", f.Action, previewAdoptLeak)
			}
		}
	}
	if !found {
		t.Fatalf("the preview did not report the leaked image %s: %+v", sc.adoptImage, rep.Findings)
	}
	// And the daemon's reconcile (no --fix) does adopt it, as the preview says.
	if _, err := NewReconciler(h.r.sh).Reconcile(ctx, h.cfg, false); err != nil {
		t.Fatal(err)
	}
	if row, _ := h.store.Image(ctx, sc.adoptRow); row.ImageID != sc.adoptImage {
		t.Errorf("reconcile without --fix did not adopt the leaked row: %+v", row)
	}
}
