package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// DriftCategory is a kind of difference between the cloud and the lineage.
type DriftCategory string

// Drift categories, in the order reports list them.
const (
	// DriftUnknown: an image stamped with our owner that no lineage row names. It is
	// adopted (with fix) only into the intent row of its stamp's (policy, server,
	// slot) that has no image id yet: the stamp alone proves nothing. Without fix
	// too when that row failed after a createImage whose outcome was unknown (the
	// image was never located before wait_timeout): otherwise it leaks, since no
	// prune deletes an image it has no id for.
	DriftUnknown DriftCategory = "stamped_unknown"
	// DriftInherited: an image stamped with our owner whose stamp's slot already has
	// another image, or whose instance_uuid is another server: a snapshot of a server
	// booted from one of our images. Reported, never adopted, never deleted.
	DriftInherited DriftCategory = "stamped_inherited"
	// DriftGone: a good (or kept_protected) row whose image is gone from the cloud
	// (confirmed by a 404). The row always becomes failed, fix or not, so that it no
	// longer counts as a backup.
	DriftGone DriftCategory = "known_gone"
	// DriftLeftover: a volume snapshot of ours whose image is gone. Deleted always
	// when the image row is recorded deleted, otherwise with fix.
	DriftLeftover DriftCategory = "leftover_snapshot"
	// DriftHollow: a good image of ours with a volume snapshot gone or in error: it
	// cannot boot. The row always becomes failed (hollow), fix or not, and its
	// snapshots' lineage states say what Cinder says; retention then deletes it like
	// any failed image after the grace.
	DriftHollow DriftCategory = "hollow_image"
	// DriftLateGood: a row failed by wait_timeout whose image Glance shows active with
	// every volume snapshot available. It is always promoted to good (image_late_good).
	DriftLateGood DriftCategory = "late_good"
	// DriftDuplicate: a second image with our full stamp for one (policy, server,
	// slot), made by that very server (instance_uuid equal): two createImage calls
	// for one slot, one of them with an unknown outcome. With fix the newer is
	// deleted, only when the lineage shows such an attempt for the slot.
	DriftDuplicate DriftCategory = "duplicate"
)

// DriftCategories lists the categories in report order.
var DriftCategories = []DriftCategory{DriftUnknown, DriftInherited, DriftGone, DriftLeftover, DriftHollow, DriftLateGood,
	DriftDuplicate}

// DriftFinding is one difference.
type DriftFinding struct {
	Category   DriftCategory
	Policy     string
	ServerID   string
	ImageID    string
	SnapshotID string
	ImageRow   int64
	// Detail says what was found.
	Detail string
	// Action is what reconcile did about it ("" when nothing).
	Action string
}

// ReconcileReport is what one reconcile found and did.
type ReconcileReport struct {
	Fix bool
	// ReportOnly is set for ReconcilePreview: nothing was changed, and each Action
	// says what would be done ("would ...").
	ReportOnly bool
	Started    time.Time
	Finished   time.Time
	// CloudImages and CloudSnapshots count what the cloud listed (images stamped
	// with our owner; every snapshot of the project).
	CloudImages    int
	CloudSnapshots int
	Findings       []DriftFinding
	// Counts and Fixed count findings and the ones acted on, by category.
	Counts map[DriftCategory]int
	Fixed  map[DriftCategory]int
}

// Reconciler diffs the cloud against the lineage and repairs what it can prove
// (Reconcile), rebuilds a lost lineage from the stamps (Recover), and counts the
// images of other owners (ForeignStamps). Its fixes take the policy's lock from
// Shared, so they never overlap a backup run or a prune of the policy.
type Reconciler struct {
	sh   *Shared
	late *LateWatcher
	w    *waiter
}

// NewReconciler returns the reconciler on the process's shared resources.
func NewReconciler(sh *Shared) *Reconciler {
	return &Reconciler{sh: sh, late: NewLateWatcher(sh), w: &waiter{sh: sh}}
}

// Reconcile diffs the cloud's images stamped with our owner, and the volume
// snapshots behind them, against the lineage, and reports every difference by
// category. With fix it adopts what can be proven ours, marks rows whose image is
// gone, and deletes leftover snapshots; leftovers of images recorded deleted are
// deleted even without fix (the journal meant them gone). Images it cannot prove
// ours are never touched.
func (rc *Reconciler) Reconcile(ctx context.Context, cfg *policy.Config, fix bool) (*ReconcileReport, error) {
	return rc.reconcile(ctx, cfg, fix, false)
}

// ReconcilePreview finds what Reconcile would, changes nothing in the cloud or the
// lineage, and says in each finding's Action what Reconcile would do about it
// (with fix, when it needs fix): what `imagekeeper reconcile` without --fix shows.
func (rc *Reconciler) ReconcilePreview(ctx context.Context, cfg *policy.Config) (*ReconcileReport, error) {
	return rc.reconcile(ctx, cfg, false, true)
}

// Actions of ReconcilePreview.
const (
	previewDelete     = "would delete"
	previewMarkGone   = "would mark failed"
	previewMarkHollow = "would mark failed (hollow)"
	previewPromote    = "would promote to good"
	previewAdopt      = "would adopt (--fix)"
	// previewAdoptLeak is a leak the daemon's periodic reconcile adopts by itself
	// (a failed row whose createImage outcome was unknown): no --fix needed.
	previewAdoptLeak = "would adopt (the daemon's periodic reconcile does too, without --fix)"
	previewDeleteFix = "would delete (--fix)"
	previewDuplicate = "would delete if newer and an attempt's outcome was unknown (--fix)"
)

func (rc *Reconciler) reconcile(ctx context.Context, cfg *policy.Config, fix, reportOnly bool) (*ReconcileReport, error) {
	st := rc.sh.store
	cl := rc.sh.Cloud()
	owner := st.Owner()
	rep := &ReconcileReport{Fix: fix, ReportOnly: reportOnly, Started: st.Now(), Counts: map[DriftCategory]int{}, Fixed: map[DriftCategory]int{}}

	images, err := cl.ListImages(ctx, map[string]string{cloud.StampOwner: owner})
	if err != nil {
		return nil, fmt.Errorf("reconcile: list images: %w", err)
	}
	snaps, err := cl.ListSnapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("reconcile: list snapshots: %w", err)
	}
	// Only the live rows are read whole: deleted rows, most of an old lineage, matter
	// only for what the cloud still holds, and those are looked up by id below.
	// Every read goes through the store's read pool, so none holds up a write.
	rows, err := st.LiveLineage(ctx)
	if err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	rep.CloudImages, rep.CloudSnapshots = len(images), len(snaps)
	snapIDs := make([]string, len(snaps))
	for i, sn := range snaps {
		snapIDs[i] = sn.ID
	}
	lsnaps, err := st.LineageSnapshotsByID(ctx, snapIDs)
	if err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}

	inCloud := make(map[string]cloud.Image, len(images))
	for _, im := range images {
		inCloud[im.ID] = im
	}
	snapInCloud := make(map[string]cloud.Snapshot, len(snaps))
	for _, s := range snaps {
		snapInCloud[s.ID] = s
	}
	byID := make(map[string]store.LineageRow, len(rows))
	// The slot is kept as Unix seconds (stamps are whole seconds in UTC): formatting
	// a stamp for each of 100,000 live rows cost more than the rest of the diff.
	type key struct {
		policy, server string
		slot           int64
	}
	byKey := make(map[key]store.LineageRow, len(rows))
	for _, row := range rows {
		if row.ImageID != "" {
			byID[row.ImageID] = row
		}
		byKey[key{row.Policy, row.ServerID, row.Slot.Unix()}] = row
	}
	// Cloud images no live row knows: a deleted row (an image deleted twice, or
	// recreated) or an intent row found by its stamp.
	var unknown []string
	for _, im := range images {
		if _, ok := byID[im.ID]; !ok {
			unknown = append(unknown, im.ID)
		}
	}
	if len(unknown) > 0 {
		dead, err := st.LineageByImageIDs(ctx, unknown)
		if err != nil {
			return nil, fmt.Errorf("reconcile: %w", err)
		}
		for _, row := range dead {
			byID[row.ImageID] = row
		}
	}
	keyRow := func(k key) (store.LineageRow, bool) {
		if row, ok := byKey[k]; ok {
			return row, true
		}
		rows, err := st.Lineage(ctx, store.ImageFilter{Policy: k.policy, ServerID: k.server, Slot: time.Unix(k.slot, 0), Limit: 1})
		if err != nil || len(rows) == 0 {
			if err != nil {
				rc.sh.log.Warn("reconcile: look up a stamp's intent row", LogKeyPolicy, k.policy, LogKeyServerID, k.server, LogKeyErr, err)
			}
			return store.LineageRow{}, false
		}
		return rows[0], true
	}
	add := func(f DriftFinding) *DriftFinding {
		rep.Findings = append(rep.Findings, f)
		return &rep.Findings[len(rep.Findings)-1]
	}
	var toAdopt []int // indexes into Findings

	// 1. Stamped images the lineage does not know, and hollow images it does.
	sort.Slice(images, func(i, j int) bool { return images[i].ID < images[j].ID })
	hollow := map[int]hollowFix{}  // finding index -> what to record
	late := map[int]cloud.Image{}  // finding index -> the image Glance shows complete
	dupes := map[int]cloud.Image{} // finding index -> a duplicate of a recorded image
	for _, im := range images {
		if row, ok := byID[im.ID]; ok {
			if row.State == store.ImageFailed && row.Failure == store.FailureTimeout && im.Status == cloud.ImageActive {
				complete := true
				for _, ref := range im.Snapshots {
					if cs, ok := snapInCloud[ref.SnapshotID]; !ok || cs.Status != cloud.SnapshotAvailable {
						complete = false
					}
				}
				if complete {
					late[len(rep.Findings)] = im
					add(DriftFinding{Category: DriftLateGood, Policy: row.Policy, ServerID: row.ServerID, ImageID: im.ID, ImageRow: row.Row,
						Detail: fmt.Sprintf("failed by wait_timeout, now active with %d volume snapshots available", len(im.Snapshots))})
				}
				continue
			}
			if row.State != store.ImageGood && row.State != store.ImageKeptProtected {
				continue
			}
			var bad []string
			fx := hollowFix{states: map[string]string{}}
			for _, ref := range im.Snapshots {
				cs, ok := snapInCloud[ref.SnapshotID]
				switch {
				case !ok:
					bad = append(bad, ref.SnapshotID+" gone")
					fx.states[ref.SnapshotID] = ""
				case cs.Status == cloud.SnapshotError || cs.Status == cloud.SnapshotErrorDeleting || cs.Status == cloud.SnapshotDeleting:
					bad = append(bad, ref.SnapshotID+" "+cs.Status)
					fx.states[ref.SnapshotID] = cs.Status
				}
			}
			if len(bad) > 0 {
				fx.detail = fmt.Sprintf("%d of %d volume snapshots not available: %s", len(bad), len(im.Snapshots), strings.Join(bad, ", "))
				if row.State == store.ImageGood {
					hollow[len(rep.Findings)] = fx
				}
				add(DriftFinding{Category: DriftHollow, Policy: row.Policy, ServerID: row.ServerID, ImageID: im.ID, ImageRow: row.Row,
					Detail: fx.detail})
			}
			continue
		}
		stamp, ok := cloud.StampOf(im.Properties)
		if !ok {
			add(DriftFinding{Category: DriftUnknown, ImageID: im.ID, Detail: "incomplete stamp: not adoptable"})
			continue
		}
		f := DriftFinding{Category: DriftUnknown, Policy: stamp.Policy, ServerID: stamp.Server, ImageID: im.ID}
		krow, has := store.LineageRow{}, false
		if slot, err := time.Parse(time.RFC3339, stamp.Slot); err == nil && slot.Truncate(time.Second).Equal(slot) {
			krow, has = keyRow(key{stamp.Policy, stamp.Server, slot.Unix()})
		}
		switch {
		case im.Properties["instance_uuid"] != "" && im.Properties["instance_uuid"] != stamp.Server:
			f.Category = DriftInherited
			f.Detail = fmt.Sprintf("made of server %s, stamp names %s: a snapshot of a server booted from our image", im.Properties["instance_uuid"], stamp.Server)
		case has && krow.ImageID != "" && im.Properties["instance_uuid"] == stamp.Server:
			f.Category, f.ImageRow = DriftDuplicate, krow.Row
			f.Detail = fmt.Sprintf("slot %s of server %s holds image %s; this one was made by the same server", stamp.Slot, stamp.Server, krow.ImageID)
			dupes[len(rep.Findings)] = im
		case has && krow.ImageID != "":
			f.Category, f.ImageRow = DriftInherited, krow.Row
			f.Detail = fmt.Sprintf("slot %s of server %s already holds image %s", stamp.Slot, stamp.Server, krow.ImageID)
		case !has:
			f.Detail = "no intent row for its stamp: not adoptable (the stamp alone proves nothing)"
		case krow.State != store.ImageRequested && krow.State != store.ImageFailed:
			f.ImageRow = krow.Row
			f.Detail = fmt.Sprintf("intent row %d is %s: not adoptable", krow.Row, krow.State)
		default:
			f.ImageRow = krow.Row
			f.Detail = fmt.Sprintf("matches intent row %d (%s, no image id)", krow.Row, krow.State)
			toAdopt = append(toAdopt, len(rep.Findings))
		}
		add(f)
	}

	// 2. Rows whose image is gone. A listing can lag: confirm each with a GET.
	goneRows := map[int64]bool{} // rows whose image is confirmed gone
	for _, row := range rows {
		if row.ImageID == "" || row.State == store.ImageDeleted || row.State == store.ImageDeleting {
			continue
		}
		if _, ok := inCloud[row.ImageID]; ok {
			continue
		}
		if row.State == store.ImageRequested || row.State == store.ImageCreating {
			continue // a wait is on it; a 404 there is its failure to record
		}
		if _, err := cl.GetImage(ctx, row.ImageID); !errors.Is(err, cloud.ErrNotFound) {
			if err != nil {
				rc.sh.log.Warn("reconcile: confirm image gone", LogKeyPolicy, row.Policy, LogKeyImageID, row.ImageID, LogKeyErr, err)
			}
			continue
		}
		goneRows[row.Row] = true
		if row.State == store.ImageGood || row.State == store.ImageKeptProtected {
			add(DriftFinding{Category: DriftGone, Policy: row.Policy, ServerID: row.ServerID, ImageID: row.ImageID, ImageRow: row.Row,
				Detail: fmt.Sprintf("lineage says %s, Glance answers 404", row.State)})
		}
	}

	// 3. Leftover snapshots: ours, in the cloud, and their image gone.
	rowByRow := make(map[int64]store.LineageRow, len(rows))
	for _, row := range rows {
		rowByRow[row.Row] = row
	}
	leftoverRows := map[int64][]int{} // image row -> finding indexes, for fix through the journal
	always := map[int]bool{}          // finding indexes of leftovers the journal meant gone
	for _, ls := range lsnaps {
		cs, ok := snapInCloud[ls.SnapshotID]
		if !ok || cs.Status == cloud.SnapshotDeleting {
			continue
		}
		row := rowByRow[ls.ImageRow]
		switch {
		case ls.ImageState == store.ImageDeleted || ls.State == store.SnapshotDeleted:
			always[len(rep.Findings)] = true
			add(DriftFinding{Category: DriftLeftover, Policy: ls.Policy, ServerID: ls.ServerID, ImageID: ls.ImageID,
				SnapshotID: ls.SnapshotID, ImageRow: ls.ImageRow, Detail: "recorded deleted, still in Cinder (" + cs.Status + ")"})
		case goneRows[ls.ImageRow] && row.State != store.ImageDeleting:
			leftoverRows[ls.ImageRow] = append(leftoverRows[ls.ImageRow], len(rep.Findings))
			add(DriftFinding{Category: DriftLeftover, Policy: ls.Policy, ServerID: ls.ServerID, ImageID: ls.ImageID,
				SnapshotID: ls.SnapshotID, ImageRow: ls.ImageRow, Detail: fmt.Sprintf("image gone from Glance, row %s; snapshot %s", row.State, cs.Status)})
		}
	}

	// Acting. Each fix holds the lock of the row's policy, so that it never races a
	// backup run or a prune of that policy in this process.
	bctx := context.WithoutCancel(ctx)
	if reportOnly {
		// A leak (a failed row whose createImage was sent: its outcome was unknown) is
		// adopted by the daemon's periodic reconcile without --fix; say so.
		leaked := map[int]bool{}
		for _, i := range toAdopt {
			cur, err := st.Image(ctx, rep.Findings[i].ImageRow)
			if err != nil {
				return nil, fmt.Errorf("reconcile: read intent row %d: %w", rep.Findings[i].ImageRow, err)
			}
			leaked[i] = cur.State == store.ImageFailed && cur.Attempts > 0
		}
		preview(rep, always, hollow, toAdopt, leaked, leftoverRows)
	}
	for i := range rep.Findings {
		if reportOnly {
			break // a preview acts on nothing
		}
		f := &rep.Findings[i]
		switch {
		case always[i]:
			f.Action = rc.deleteLeftover(ctx, cl, f)
		case hollow[i].detail != "":
			// Always, like a gone image: a good row that cannot boot would count towards
			// min_keep and the keep rules in place of a real backup.
			err := rc.sh.withPolicyLock(ctx, f.Policy, func() error { return rc.markHollow(bctx, f.ImageRow, hollow[i]) })
			f.Action = actionOf(err, "marked failed (hollow)")
		case f.Category == DriftLateGood:
			var promoted bool
			err := rc.sh.withPolicyLock(ctx, f.Policy, func() error {
				cur, err := st.Image(ctx, f.ImageRow)
				if err != nil {
					return err
				}
				if cur.State != store.ImageFailed || cur.Failure != store.FailureTimeout {
					return nil
				}
				if _, err := rc.late.promoteLate(ctx, cur.Policy, cur.Slot, []store.Image{cur}, []cloud.Image{late[i]}); err != nil {
					return err
				}
				now, err := st.Image(ctx, f.ImageRow)
				promoted = err == nil && now.State == store.ImageGood
				return err
			})
			f.Action = actionOf(err, "promoted to good")
			if err == nil && !promoted {
				f.Action = "not promoted: a volume snapshot is not available yet"
			}
		case f.Category == DriftGone:
			// Marking is always safe (it deletes nothing) and always needed: a row
			// that says good for an image Glance no longer has would count towards
			// min_keep and the keep rules in place of a real backup.
			err := rc.sh.withPolicyLock(ctx, f.Policy, func() error {
				_, err := st.MarkGone(bctx, f.ImageRow, "image gone from the cloud (found by reconcile): no longer a backup")
				return err
			})
			f.Action = actionOf(err, "marked failed")
		case !fix:
		}
	}
	for _, i := range toAdopt {
		if reportOnly {
			break
		}
		// Without fix only the leak is adopted: a row whose createImage was sent with
		// an unknown outcome and failed because its stamped image was never located.
		// No prune may delete it (it has no id) and nothing else would ever find it.
		f := &rep.Findings[i]
		f.Action = rc.adoptIntoRow(ctx, cfg, f, !fix)
	}
	if fix && !reportOnly {
		for i, im := range dupes {
			f := &rep.Findings[i]
			f.Action = rc.fixDuplicate(ctx, f, im, inCloud)
		}
	}
	if fix {
		rowsDone := make([]int64, 0, len(leftoverRows))
		for row := range leftoverRows {
			rowsDone = append(rowsDone, row)
		}
		sort.Slice(rowsDone, func(i, j int) bool { return rowsDone[i] < rowsDone[j] })
		for _, rowID := range rowsDone {
			action := rc.cleanGoneImage(ctx, cfg, rowID)
			for _, i := range leftoverRows[rowID] {
				rep.Findings[i].Action = action
			}
		}
	}
	for _, f := range rep.Findings {
		rep.Counts[f.Category]++
		if !reportOnly && f.Action != "" && !isFailedAction(f.Action) {
			rep.Fixed[f.Category]++
		}
	}
	sort.SliceStable(rep.Findings, func(i, j int) bool {
		return categoryIndex(rep.Findings[i].Category) < categoryIndex(rep.Findings[j].Category)
	})
	rep.Finished = st.Now()
	return rep, nil
}

// fixDuplicate deletes dup, a second image of a row's slot made by the same
// server, when it is newer than the row's image and the lineage shows a
// createImage with an unknown outcome for the row (adopted, called twice, or noted
// unknown): then it is the orphan of that call. Anything else is kept and reported.
func (rc *Reconciler) fixDuplicate(ctx context.Context, f *DriftFinding, dup cloud.Image, inCloud map[string]cloud.Image) string {
	var action string
	err := rc.sh.withPolicyLock(ctx, f.Policy, func() error {
		cur, err := rc.sh.store.Image(ctx, f.ImageRow)
		if err != nil {
			return err
		}
		unknown := cur.Adopted || cur.Attempts > 1
		if !unknown {
			evs, err := rc.sh.store.Events(ctx, store.EventFilter{ImageRow: cur.Row, Kind: store.EventImageNote})
			if err != nil {
				return err
			}
			for _, e := range evs {
				unknown = unknown || strings.Contains(e.Message, "outcome unknown")
			}
		}
		rec, recOK := inCloud[cur.ImageID]
		switch {
		case !unknown:
			action = "kept: the lineage shows no createImage with an unknown outcome for this slot"
			return nil
		case cur.ImageID == "" || !recOK:
			action = "kept: the row's own image is not in the cloud to compare with"
			return nil
		case !dup.CreatedAt.After(rec.CreatedAt):
			action = fmt.Sprintf("kept: older than the row's image %s", cur.ImageID)
			return nil
		case len(dup.Snapshots) > 0 || dup.Protected:
			action = "kept: it has volume snapshots or is protected; delete it by hand"
			return nil
		}
		err = rc.sh.Cloud().DeleteImage(ctx, dup.ID)
		switch {
		case errors.Is(err, cloud.ErrNotFound):
			rc.sh.metrics.ImageDeleted(f.Policy, DeleteAlreadyGone)
		case err != nil:
			rc.sh.metrics.ImageDeleted(f.Policy, DeleteFailed)
			return err
		default:
			rc.sh.metrics.ImageDeleted(f.Policy, DeleteConfirmed)
		}
		action = "deleted: the newer image of a slot whose createImage outcome was unknown"
		_, err = rc.sh.store.AddEvent(context.WithoutCancel(ctx), store.Event{Kind: EventDuplicateDeleted, Policy: cur.Policy,
			ServerID: cur.ServerID, ImageRow: cur.Row, ImageID: dup.ID, Slot: cur.Slot,
			Message: fmt.Sprintf("reconcile --fix: deleted duplicate image %s of this slot (the row keeps %s)", dup.ID, cur.ImageID)})
		return err
	})
	if err != nil {
		return actionOf(err, "")
	}
	return action
}

// EventDuplicateDeleted records reconcile deleting a duplicate image of a slot.
const EventDuplicateDeleted = "duplicate_deleted"

// hollowFix is what reconcile records of a hollow image: each bad snapshot's Cinder
// status ("" when gone) and the finding's detail.
type hollowFix struct {
	states map[string]string
	detail string
}

// markHollow records the real state of each bad snapshot of a good row, so that
// `why` shows it, and marks the row failed (hollow).
func (rc *Reconciler) markHollow(ctx context.Context, row int64, fx hollowFix) error {
	ids := make([]string, 0, len(fx.states))
	for id := range fx.states {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		u := store.SnapshotUpdate{State: store.SnapshotMissing, Reason: "gone from Cinder (found by reconcile)"}
		if st := fx.states[id]; st != "" {
			u = store.SnapshotUpdate{State: store.SnapshotError, Reason: "Cinder says " + st + " (found by reconcile)"}
		}
		if _, err := rc.sh.store.UpdateSnapshot(ctx, id, u); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	_, err := rc.sh.store.MarkHollow(ctx, row, fx.detail)
	return err
}

// preview sets each finding's Action to what a reconcile would do about it.
func preview(rep *ReconcileReport, always map[int]bool, hollow map[int]hollowFix, toAdopt []int, leaked map[int]bool, leftoverRows map[int64][]int) {
	for i := range rep.Findings {
		f := &rep.Findings[i]
		switch {
		case always[i]:
			f.Action = previewDelete
		case hollow[i].detail != "":
			f.Action = previewMarkHollow
		case f.Category == DriftLateGood:
			f.Action = previewPromote
		case f.Category == DriftGone:
			f.Action = previewMarkGone
		}
	}
	for _, i := range toAdopt {
		rep.Findings[i].Action = previewAdopt
		if leaked[i] {
			rep.Findings[i].Action = previewAdoptLeak
		}
	}
	for i := range rep.Findings {
		if rep.Findings[i].Category == DriftDuplicate {
			rep.Findings[i].Action = previewDuplicate
		}
	}
	for _, idx := range leftoverRows {
		for _, i := range idx {
			rep.Findings[i].Action = previewDeleteFix
		}
	}
}

func categoryIndex(c DriftCategory) int {
	for i, x := range DriftCategories {
		if x == c {
			return i
		}
	}
	return len(DriftCategories)
}

// actionFailedPrefix starts the Action of a fix that did not work.
const actionFailedPrefix = "failed: "

func actionOf(err error, done string) string {
	if err != nil {
		return actionFailedPrefix + err.Error()
	}
	return done
}

func isFailedAction(a string) bool {
	return len(a) >= len(actionFailedPrefix) && a[:len(actionFailedPrefix)] == actionFailedPrefix
}

// adoptIntoRow records a stamped image as the image of its intent row. A requested row
// younger than its wait timeout may belong to a run still in flight (in another
// process): it is left alone.
//
// onlyLeaked restricts it to a failed row that had a createImage sent (its outcome
// was unknown): the periodic reconcile adopts those without --fix.
func (rc *Reconciler) adoptIntoRow(ctx context.Context, cfg *policy.Config, f *DriftFinding, onlyLeaked bool) string {
	p := cfg.Policy(f.Policy)
	var action string
	err := rc.sh.withPolicyLock(ctx, f.Policy, func() error {
		cur, err := rc.sh.store.Image(ctx, f.ImageRow)
		if err != nil {
			return err
		}
		if cur.ImageID != "" || (cur.State != store.ImageRequested && cur.State != store.ImageFailed) {
			action = fmt.Sprintf("not adopted: row is now %s with image %q", cur.State, cur.ImageID)
			return nil
		}
		if onlyLeaked && (cur.State != store.ImageFailed || cur.Attempts == 0) {
			return nil // left to reconcile --fix
		}
		if cur.State == store.ImageRequested && rc.sh.store.Now().Sub(cur.RequestedAt) < rc.sh.waitTimeout(p) {
			action = "not adopted: the intent is younger than wait_timeout (a run may still be making it)"
			return nil
		}
		_, err = rc.sh.store.SetImageID(context.WithoutCancel(ctx), f.ImageRow, f.ImageID, true,
			fmt.Sprintf("adopted by reconcile: image %s carries this row's stamp", f.ImageID))
		action = "adopted (creating: the next wait settles it)"
		return err
	})
	if err != nil {
		return actionOf(err, "")
	}
	return action
}

// cleanGoneImage runs the deletion journal for a row whose image is gone from the
// cloud, which deletes the snapshots behind it and marks the row deleted.
func (rc *Reconciler) cleanGoneImage(ctx context.Context, cfg *policy.Config, rowID int64) string {
	cur, err := rc.sh.store.Image(ctx, rowID)
	if err != nil {
		return actionOf(err, "")
	}
	p := cfg.Policy(cur.Policy)
	if p == nil {
		p = &policy.Policy{Name: cur.Policy}
	}
	var action string
	err = rc.sh.withPolicyLockYielding(ctx, cur.Policy, func(wanted <-chan struct{}) error {
		bctx := context.WithoutCancel(ctx)
		cur, err := rc.sh.store.Image(ctx, rowID)
		if err != nil {
			return err
		}
		if cur.State == store.ImageGood || cur.State == store.ImageKeptProtected {
			if cur, err = rc.sh.store.MarkGone(bctx, rowID, "image gone from the cloud (found by reconcile): no longer a backup"); err != nil {
				return err
			}
		}
		if cur.State != store.ImageFailed && cur.State != store.ImageDeleting {
			action = "left: row is " + string(cur.State)
			return nil
		}
		pr := newPruner(rc.sh, p, PruneOptions{yield: wanted})
		it := &PruneItem{Reasons: []string{"reconcile: image gone from the cloud; deleting the snapshots left behind"}}
		row := store.LineageRow{Row: cur.Row, ImageID: cur.ImageID, Policy: cur.Policy, ServerID: cur.ServerID, Slot: cur.Slot,
			Owner: cur.Owner, State: cur.State}
		pr.planAndDelete(ctx, it, row)
		switch it.Action {
		case PruneDeleted:
			action = "deleted (journal)"
		default:
			action = fmt.Sprintf("journal %s: %v", it.Action, it.Reasons[len(it.Reasons)-1])
		}
		return nil
	})
	if err != nil {
		return actionOf(err, "")
	}
	return action
}

// deleteLeftover deletes a snapshot whose image the journal recorded deleted; it
// is not waited for (the next reconcile sees whether it went).
func (rc *Reconciler) deleteLeftover(ctx context.Context, cl cloud.Cloud, f *DriftFinding) string {
	err := cl.DeleteSnapshot(ctx, f.SnapshotID)
	result := DeleteConfirmed
	switch {
	case errors.Is(err, cloud.ErrNotFound):
		result, err = DeleteAlreadyGone, nil
	case errors.Is(err, cloud.ErrInUse):
		rc.sh.metrics.SnapshotDeleted(f.Policy, DeleteInUse)
		return "kept: in use: " + cloud.Reason(err)
	case err != nil:
		rc.sh.metrics.SnapshotDeleted(f.Policy, DeleteFailed)
		return actionOf(err, "")
	}
	rc.sh.metrics.SnapshotDeleted(f.Policy, result)
	_, _ = rc.sh.store.AddEvent(context.WithoutCancel(ctx), store.Event{Kind: store.EventSnapshotDeleteStep, Policy: f.Policy,
		ServerID: f.ServerID, ImageRow: f.ImageRow, ImageID: f.ImageID, SnapshotID: f.SnapshotID,
		Message: "reconcile: leftover of an image recorded deleted; delete requested"})
	return "delete requested"
}
