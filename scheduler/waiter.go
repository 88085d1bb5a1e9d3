package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// waitScope is one batch of images to wait for: all of one policy and one slot, so
// that one Glance list filtered by the stamp (owner, policy, slot) sees them all.
type waitScope struct {
	policy  string
	slot    time.Time
	timeout time.Duration
	// p is the policy, for the late window of an image that times out; nil for a
	// policy no longer in the config (MinLateWindow applies).
	p     *policy.Policy
	cloud cloud.Cloud
	log   *slog.Logger
	// done receives each image's final outcome (good or failed).
	done func(im store.Image, outcome ServerOutcome, reason string, d time.Duration)
	// pollFirst polls before the first sleep (a resumed wait: the images may be long
	// done); a fresh run sleeps first, since nothing it just asked for is ready yet.
	pollFirst bool
}

// waitRow is what a wait reads of a lineage row. Every image in flight has one,
// twice (the run's list and the wait's item): a full store.Image (~560 bytes and a
// dozen strings of its own) per image was most of what grew with the images in
// flight at 10,000 servers.
type waitRow struct {
	Row         int64
	ImageID     string
	Name        string
	Policy      string
	ServerID    string
	ServerName  string
	Adopted     bool
	Slot        time.Time
	RequestedAt time.Time
}

// waitRowOf is the part of im a wait reads.
func waitRowOf(im store.Image) waitRow {
	return waitRow{Row: im.Row, ImageID: im.ImageID, Name: im.Name, Policy: im.Policy, ServerID: im.ServerID,
		ServerName: im.ServerName, Adopted: im.Adopted, Slot: im.Slot, RequestedAt: im.RequestedAt}
}

// waitRows is waitRowOf of each of rows.
func waitRows(rows []store.Image) []waitRow {
	out := make([]waitRow, len(rows))
	for i, im := range rows {
		out[i] = waitRowOf(im)
	}
	return out
}

// waitItem is one image being waited for.
type waitItem struct {
	row waitRow
	// available remembers snapshots already seen available, so that each is fetched
	// until it is, and no longer; recorded, the snapshots already in the lineage.
	// Both are made on first use: most images have no volume snapshot.
	available map[string]bool
	recorded  map[string]bool
}

// waiter waits for images to become good or failed, and records what it learns.
// The backup Runner waits for the images of its slots with it, resumes the waits
// a previous process left, and settles rows left in progress; the LateWatcher
// checks snapshots with it; Recover settles recovered rows with it.
type waiter struct {
	sh *Shared
	// beforePoll, when set, is called before each poll round: a test's crash
	// point (RunnerOptions' hooks).
	beforePoll func(round int) error
}

// wait polls until every row is good or failed, or ctx ends (the rows then stay
// creating, and ResumeWaits picks them up after a restart). Polls are batched: one
// ListImages by stamp per round covers every image of the scope, then GetSnapshot
// for each volume snapshot not yet seen available; the interval grows from
// PollInterval up to MaxPollInterval (nextPoll).
func (w *waiter) wait(ctx context.Context, sc waitScope, rows []waitRow) error {
	items := make([]*waitItem, 0, len(rows))
	for _, row := range rows {
		items = append(items, &waitItem{row: row})
	}
	sort.Slice(items, func(i, j int) bool { return items[i].row.ServerID < items[j].row.ServerID })
	interval := w.sh.opts.PollInterval
	for round := 0; len(items) > 0; round++ {
		if round > 0 || !sc.pollFirst {
			if err := w.sh.sleep(ctx, min(interval, w.untilFirstDeadline(sc, items))); err != nil {
				return err
			}
			interval = nextPoll(interval, w.sh.opts.MaxPollInterval)
		}
		if h := w.beforePoll; h != nil {
			if err := h(round); err != nil {
				return errAbandoned
			}
		}
		var err error
		items, err = w.poll(ctx, sc, items)
		if err != nil {
			return err
		}
	}
	return nil
}

// nextPoll is the wait after one of d: half as long again, at most most. Gentler
// than doubling, so that an image active at 7 s is seen at 9.5 s (2, 5, 9.5) rather
// than at 14 s (2, 6, 14), while a long wait still backs off to the maximum.
func nextPoll(d, most time.Duration) time.Duration {
	return min(d+d/2, most)
}

// untilFirstDeadline is how long until the first pending item passes its
// wait_timeout, plus a little so that the next poll finds it late. The backed-off
// interval may be minutes: without this bound a timed-out image would be noticed
// that much later, and a shutdown or a resumed slot would wait for nothing.
func (w *waiter) untilFirstDeadline(sc waitScope, items []*waitItem) time.Duration {
	first := time.Duration(math.MaxInt64)
	now := w.sh.now()
	for _, it := range items {
		if d := it.row.RequestedAt.Add(sc.timeout).Sub(now); d < first {
			first = d
		}
	}
	return max(first, 0) + 50*time.Millisecond
}

// poll makes one round over the items and returns those still pending.
func (w *waiter) poll(ctx context.Context, sc waitScope, items []*waitItem) ([]*waitItem, error) {
	owner := w.sh.store.Owner()
	slotStamp := StampSlot(sc.slot)
	listed, listErr := sc.cloud.ListImages(ctx, map[string]string{
		cloud.StampOwner: owner, cloud.StampPolicy: sc.policy, cloud.StampSlot: slotStamp,
	})
	if err := ctx.Err(); err != nil {
		return items, err
	}
	if listErr != nil {
		sc.log.Warn("list images while waiting", LogKeyErr, listErr)
	}
	sc.log.Debug("wait: polled", "pending", len(items), "listed", len(listed))
	byID := map[string]cloud.Image{}
	for _, im := range listed {
		byID[im.ID] = im
	}
	var pending []*waitItem
	for _, it := range items {
		settled, err := w.check(ctx, sc, it, listed, byID, listErr)
		if err != nil {
			if ctx.Err() != nil {
				return append(pending, it), ctx.Err()
			}
			// A store error on one row must not stop the others; the row stays as it is
			// in the store and a later resume retries it.
			sc.log.Error("wait: record image state", LogKeyServerID, it.row.ServerID, LogKeyServerName, it.row.ServerName, LogKeyImageID, it.row.ImageID, LogKeyImageName, it.row.Name, LogKeyErr, err)
			continue
		}
		if !settled {
			pending = append(pending, it)
		}
	}
	sc.log.Debug("wait: poll done", "pending", len(pending))
	return pending, nil
}

// check looks at one image and records what it learned. settled is true when the
// row reached good or failed.
func (w *waiter) check(ctx context.Context, sc waitScope, it *waitItem, listed []cloud.Image, byID map[string]cloud.Image,
	listErr error) (settled bool, err error) {
	st := w.sh.store
	bctx := context.WithoutCancel(ctx)
	// RequestedAt comes from the store's clock, so the deadline is judged by it too.
	now := st.Now()
	deadline := it.row.RequestedAt.Add(sc.timeout)
	late := now.After(deadline)

	if it.row.ImageID == "" {
		stamp := cloud.Stamp{Owner: st.Owner(), Policy: it.row.Policy, Server: it.row.ServerID, Slot: StampSlot(it.row.Slot)}
		img, ok := pickStamped(listed, stamp)
		if !ok {
			if !late {
				return false, nil
			}
			return true, w.fail(bctx, sc, it, "createImage outcome unknown and no image with our stamp appeared within wait_timeout "+sc.timeout.String())
		}
		row, err := st.SetImageID(bctx, it.row.Row, img.ID, true,
			fmt.Sprintf("adopted image %s found by its stamp while waiting (the createImage outcome was unknown)", img.ID))
		if err != nil {
			return false, err
		}
		it.row = waitRowOf(row)
	}

	img, ok := byID[it.row.ImageID]
	if !ok {
		// Absent from the list (or the list failed): ask for the image itself before
		// concluding anything; a listing can lag or fail.
		got, err := sc.cloud.GetImage(ctx, it.row.ImageID)
		switch {
		case errors.Is(err, cloud.ErrNotFound):
			return true, w.fail(bctx, sc, it, fmt.Sprintf("image %s vanished while waiting (Glance 404): Nova deletes the image when the snapshot fails", it.row.ImageID))
		case err != nil:
			if late {
				return true, w.failTimedOut(bctx, sc, it, fmt.Sprintf("not confirmed good within wait_timeout %s: %s", sc.timeout, cloud.Reason(err)))
			}
			return false, nil
		}
		img = got
	}

	// Record the volume snapshots as soon as the image names them, so that a crash
	// mid-wait leaves them in the lineage for retention to clean up.
	var fresh []store.Snapshot
	for _, ref := range img.Snapshots {
		if !it.recorded[ref.SnapshotID] {
			fresh = append(fresh, store.Snapshot{SnapshotID: ref.SnapshotID, DeviceName: ref.DeviceName, BootIndex: ref.BootIndex})
		}
	}
	if len(fresh) > 0 {
		if err := st.AddSnapshots(bctx, it.row.Row, fresh); err != nil {
			return false, err
		}
		if it.recorded == nil {
			it.recorded = map[string]bool{}
		}
		for _, sn := range fresh {
			it.recorded[sn.SnapshotID] = true
		}
	}

	switch img.Status {
	case cloud.ImageKilled:
		return true, w.fail(bctx, sc, it, fmt.Sprintf("image %s is killed (Glance: error during upload)", img.ID))
	case cloud.ImageDeleted, "pending_delete", "deactivated":
		return true, w.fail(bctx, sc, it, fmt.Sprintf("image %s is %s while waiting", img.ID, img.Status))
	case cloud.ImageActive:
		done, failure, err := w.checkSnapshots(ctx, sc, it, img)
		if err != nil {
			return false, err
		}
		if failure != "" {
			return true, w.fail(bctx, sc, it, failure)
		}
		if done {
			row, err := st.MarkGood(bctx, it.row.Row, store.Good{SizeBytes: img.Size,
				Message: fmt.Sprintf("image %s active, %d volume snapshots available", img.ID, len(img.Snapshots))})
			if err != nil {
				return false, err
			}
			d := row.ActiveAt.Sub(row.RequestedAt)
			w.sh.metrics.ImageCreated(sc.policy, CreateGood, d)
			sc.log.Info("image good", LogKeyServerID, row.ServerID, LogKeyServerName, row.ServerName, LogKeyImageID, row.ImageID, LogKeyImageName, row.Name, LogKeyDuration, d.Round(time.Millisecond).String())
			if sc.done != nil {
				sc.done(row, ServerGood, "", d)
			}
			return true, nil
		}
	}
	if late {
		avail := 0
		for _, ref := range img.Snapshots {
			if it.available[ref.SnapshotID] {
				avail++
			}
		}
		msg := fmt.Sprintf("not good within wait_timeout %s: image %s is %s", sc.timeout, img.ID, img.Status)
		if len(img.Snapshots) > 0 {
			msg += fmt.Sprintf(", %d of %d volume snapshots available", avail, len(img.Snapshots))
		}
		return true, w.failTimedOut(bctx, sc, it, msg)
	}
	return false, nil
}

// checkSnapshots fetches each of an active image's volume snapshots not yet seen
// available. done is true when all are available; failure is set when one failed.
func (w *waiter) checkSnapshots(ctx context.Context, sc waitScope, it *waitItem, img cloud.Image) (done bool, failure string, err error) {
	st := w.sh.store
	bctx := context.WithoutCancel(ctx)
	done = true
	for _, ref := range img.Snapshots {
		if it.available[ref.SnapshotID] {
			continue
		}
		sn, gerr := sc.cloud.GetSnapshot(ctx, ref.SnapshotID)
		if errors.Is(gerr, cloud.ErrNotFound) {
			if _, err := st.UpdateSnapshot(bctx, ref.SnapshotID, store.SnapshotUpdate{State: store.SnapshotMissing,
				Reason: "Cinder answered 404 while we waited for it"}); err != nil {
				return false, "", err
			}
			if failure == "" {
				failure = fmt.Sprintf("volume snapshot %s of image %s vanished (Cinder 404)", ref.SnapshotID, img.ID)
			}
			done = false
			continue
		}
		if gerr != nil {
			done = false
			continue
		}
		u := store.SnapshotUpdate{VolumeID: sn.VolumeID, SizeGB: sn.Size}
		switch sn.Status {
		case cloud.SnapshotAvailable:
			u.State = store.SnapshotAvailable
		case cloud.SnapshotError:
			u.State, u.Reason = store.SnapshotError, "Cinder put the snapshot in error while creating it"
		case cloud.SnapshotDeleting, cloud.SnapshotErrorDeleting, "deleted":
			u.State, u.Reason = store.SnapshotMissing, "snapshot is "+sn.Status+" before it was ever available"
		default:
			u.State = store.SnapshotCreating
		}
		if _, err := st.UpdateSnapshot(bctx, ref.SnapshotID, u); err != nil {
			return false, "", err
		}
		switch u.State {
		case store.SnapshotAvailable:
			if it.available == nil {
				it.available = map[string]bool{}
			}
			it.available[ref.SnapshotID] = true
		case store.SnapshotError, store.SnapshotMissing:
			// Keep going: the lineage should know every snapshot's state, not just the
			// first bad one.
			if failure == "" {
				failure = fmt.Sprintf("volume snapshot %s%s is %s", ref.SnapshotID, ofVolume(sn.VolumeID), sn.Status)
			}
			done = false
		default:
			done = false
		}
	}
	return done, failure, nil
}

// fail marks a waited-for row failed.
func (w *waiter) fail(ctx context.Context, sc waitScope, it *waitItem, reason string) error {
	row, err := w.sh.store.MarkFailed(ctx, it.row.Row, reason)
	if err != nil {
		return err
	}
	w.sh.metrics.ImageCreated(sc.policy, CreateFailed, 0)
	sc.log.Warn("image failed", LogKeyServerID, row.ServerID, LogKeyServerName, row.ServerName, LogKeyImageID, row.ImageID, LogKeyImageName, row.Name, LogKeyReason, reason)
	if sc.done != nil {
		sc.done(row, ServerFailed, reason, w.sh.store.Now().Sub(row.RequestedAt))
	}
	return nil
}

// failTimedOut marks a waited-for row failed by wait_timeout: the slot reports it failed
// (alerts fire), and the late watch keeps looking at the image until its late window
// closes, promoting it to good if it completes.
func (w *waiter) failTimedOut(ctx context.Context, sc waitScope, it *waitItem, reason string) error {
	until := lateUntil(sc.p, it.row, sc.timeout)
	row, err := w.sh.store.MarkTimedOut(ctx, it.row.Row, reason, until)
	if err != nil {
		return err
	}
	w.sh.metrics.ImageCreated(sc.policy, CreateFailed, 0)
	sc.log.Warn("image failed: not good within wait_timeout; watched until its late window closes", LogKeyServerID, row.ServerID,
		LogKeyServerName, row.ServerName, LogKeyImageID, row.ImageID, LogKeyImageName, row.Name, LogKeyReason, reason, "late_until", until.Format(time.RFC3339))
	if sc.done != nil {
		sc.done(row, ServerFailed, reason, w.sh.store.Now().Sub(row.RequestedAt))
	}
	w.sh.wakeLate()
	return nil
}

// resume picks up the images a previous process left creating (or requested,
// with an unknown outcome) and waits for them, in batches by (policy, slot). Each
// batch takes its policy's wait_timeout from the config in force when it starts; a
// policy no longer there is waited for with DefaultWaitTimeout. It returns when
// every such image is good or failed, or ctx ends.
func (w *waiter) resume(ctx context.Context, cfgs *policy.Coordinator) error {
	rows, err := w.sh.store.Images(ctx, store.ImageFilter{States: []store.ImageState{store.ImageCreating, store.ImageRequested}})
	if err != nil {
		return fmt.Errorf("resume waits: %w", err)
	}
	rows = w.sh.claim(rows)
	defer w.sh.unclaim(rows)
	keys, groups := groupBySlot(rows)
	var wg sync.WaitGroup
	errs := make([]error, len(keys))
	for i, k := range keys {
		p := cfgs.Current().Policy(k.policy)
		sc := waitScope{
			policy: k.policy, slot: k.slot, timeout: w.sh.waitTimeout(p), p: p, cloud: w.sh.Cloud(), pollFirst: true,
			log: w.sh.log.With(LogKeyPolicy, k.policy, LogKeySlot, StampSlot(k.slot)),
		}
		sc.log.Info("resuming wait", "images", len(groups[k]))
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.wait(ctx, sc, waitRows(groups[k]))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("resume waits: %w", err)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ofVolume is " of volume ID" for a message about a snapshot, or nothing while the
// volume is not known: never "of volume -".
func ofVolume(id string) string {
	if id == "" {
		return ""
	}
	return " of volume " + id
}

// plural counts n things in words: "1 image", "2 images".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// slotKey names the batch of one policy's slot: the images a single Glance listing
// by stamp serves while they are waited for.
type slotKey struct {
	policy string
	slot   time.Time
}

// groupBySlot groups rows into batches by (policy, slot), in policy then slot order.
func groupBySlot(rows []store.Image) ([]slotKey, map[slotKey][]store.Image) {
	groups := map[slotKey][]store.Image{}
	var keys []slotKey
	for _, im := range rows {
		k := slotKey{im.Policy, im.Slot}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], im)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].policy != keys[j].policy {
			return keys[i].policy < keys[j].policy
		}
		return keys[i].slot.Before(keys[j].slot)
	})
	return keys, groups
}
