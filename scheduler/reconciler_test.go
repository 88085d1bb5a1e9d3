package scheduler

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/policy"
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

// TestReconcileAdoptsLeakedUnknownOutcome: createImage's answer is lost (500 after
// the image was made) and the image listing fails until wait_timeout, so the row
// fails with no image id. The periodic reconcile (no --fix) adopts the stamped
// image into it, and the next wait settles it good, instead of leaking it.
func TestReconcileAdoptsLeakedUnknownOutcome(t *testing.T) {
	h := newHarness(t, withWaitTimeout("400ms"))
	id := h.sim.AddServer(simcloud.ServerSpec{Name: "w", Tags: []string{"backup=daily"}})
	h.sim.SetFault(simcloud.Fault{Op: "compute.createImage", ErrorStatus: 500, After: true, Count: 1})
	h.sim.SetFault(simcloud.Fault{Op: "image.list", ErrorStatus: 403})
	ctx := context.Background()
	r := h.runner(nil)
	if _, err := r.RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerScheduled); err != nil {
		t.Fatal(err)
	}
	row, err := h.store.ImageByKey(ctx, "web", id, h.slot)
	if err != nil || row.State != store.ImageFailed || row.ImageID != "" {
		t.Fatalf("after the lost answer: %+v (%v), want failed without an image id", row, err)
	}
	h.sim.ClearFaults()
	if _, err := NewReconciler(r.sh).Reconcile(ctx, h.cfg, false); err != nil {
		t.Fatal(err)
	}
	row, _ = h.store.ImageByKey(ctx, "web", id, h.slot)
	stamped := h.stampedImages()[id]
	if len(stamped) != 1 || row.ImageID != stamped[0].ID || !row.Adopted {
		t.Fatalf("periodic reconcile left the leak: row %s image %q adopted=%v; stamped images %d",
			row.State, row.ImageID, row.Adopted, len(stamped))
	}
	if err := r.ResumeWaits(ctx, policy.NewCoordinator(h.cfg)); err != nil {
		t.Fatal(err)
	}
	if row, _ = h.store.ImageByKey(ctx, "web", id, h.slot); row.State != store.ImageGood {
		t.Errorf("adopted row is %s (%s), want good", row.State, row.Reason)
	}
}

// TestReconcileDuplicate: two images with our full stamp for one slot, made by the
// same server, are reported duplicate (not stamped_inherited). --fix deletes the
// newer one only where the lineage shows a createImage with an unknown outcome for
// that slot; an older one, or one beside a row with a known outcome, is kept.
func TestReconcileDuplicate(t *testing.T) {
	h := newHarness(t)
	lost := h.sim.AddServer(simcloud.ServerSpec{Name: "lost", Tags: []string{"backup=daily"}})
	plain := h.sim.AddServer(simcloud.ServerSpec{Name: "plain", Tags: []string{"backup=daily"}})
	// The first createImage (server order: by id) answers 500 after making the image.
	h.sim.SetFault(simcloud.Fault{Op: "compute.createImage", ErrorStatus: 500, After: true, Count: 1})
	ctx := context.Background()
	r := h.runner(func(o *runnerOptions) { o.Limits.Concurrency = 1 })
	if rep, err := r.RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerManual); err != nil || rep.Counts.Good != 2 {
		t.Fatalf("slot: %+v %v", rep, err)
	}
	rows := map[string]store.Image{}
	for _, id := range []string{lost, plain} {
		row, err := h.store.ImageByKey(ctx, "web", id, h.slot)
		if err != nil {
			t.Fatal(err)
		}
		rows[id] = row
	}
	if rows[lost].Adopted == rows[plain].Adopted {
		// The fault hit the other server: swap the names so that "lost" is the adopted one.
		lost, plain = plain, lost
	}
	dup := func(server string, d time.Duration) string {
		orig, ok := h.sim.Image(rows[server].ImageID)
		if !ok || orig.Properties["instance_uuid"] != server {
			t.Fatalf("image of %s: %+v", server, orig)
		}
		return h.sim.PutImage(simcloud.ImageState{Name: orig.Name, Status: "active", Size: orig.Size,
			Properties: orig.Properties, CreatedAt: orig.CreatedAt.Add(d)})
	}
	newer, older, plainDup := dup(lost, time.Minute), dup(lost, -time.Minute), dup(plain, time.Minute)

	rep, err := NewReconciler(r.sh).Reconcile(ctx, h.cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts[DriftCategory("duplicate")] != 3 || rep.Counts[DriftInherited] != 0 {
		t.Fatalf("counts %v, want duplicate 3 and no stamped_inherited", rep.Counts)
	}
	if _, err := NewReconciler(r.sh).Reconcile(ctx, h.cfg, true); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.sim.Image(newer); ok {
		t.Errorf("newer duplicate of an unknown-outcome slot not deleted by --fix")
	}
	for name, id := range map[string]string{"older duplicate": older, "duplicate beside a known outcome": plainDup,
		"lost's own image": rows[lost].ImageID, "plain's own image": rows[plain].ImageID} {
		if _, ok := h.sim.Image(id); !ok {
			t.Errorf("%s %s was deleted", name, id)
		}
	}
}

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
