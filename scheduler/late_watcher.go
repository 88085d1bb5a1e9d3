package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// MinLateWindow is the shortest late window: an image not good within wait_timeout
// is still watched at least this long after its wait_timeout (and at least until the
// policy's next slot plus one period), because a large volume-backed server's
// snapshot can take hours more than usual and is then its only backup.
const MinLateWindow = 6 * time.Hour

// LateMaxPollInterval bounds the backoff of the late watch's polls.
const LateMaxPollInterval = 10 * time.Minute

// lateUntil is the end of the late window of row under p (nil: a policy no longer
// in the config): the later of wait_timeout plus MinLateWindow after the request,
// and the policy's next slot after the row's plus one period.
func lateUntil(p *policy.Policy, im waitRow, timeout time.Duration) time.Time {
	end := im.RequestedAt.Add(timeout + MinLateWindow)
	if p != nil && p.Schedule != nil {
		next := p.Schedule.Next(im.Slot)
		if !next.IsZero() {
			if after := p.Schedule.Next(next); after.After(end) {
				end = after
			}
		}
	}
	return end
}

// LateWatcher watches the images that failed by wait_timeout until their late
// window closes, and promotes each that completes to good. The daemon runs its
// WatchLate; a backup run and reconcile look at one policy's or slot's late images
// with it too (checkLate, promoteLate), so that a process without the watch still
// promotes them.
type LateWatcher struct {
	sh *Shared
	w  *waiter
}

// NewLateWatcher returns the late watch on the process's shared resources.
func NewLateWatcher(sh *Shared) *LateWatcher { return &LateWatcher{sh: sh, w: &waiter{sh: sh}} }

// WatchLate watches images that failed by wait_timeout until their late window
// closes, and promotes each that completes to good (image_late_good). Polls are
// batched like a wait's, one stamp listing per (policy, slot); the interval backs
// off from PollInterval to LateMaxPollInterval, and starts again from PollInterval
// when a new image times out. It returns when ctx ends.
func (lw *LateWatcher) WatchLate(ctx context.Context) error {
	interval := lw.sh.opts.PollInterval
	for {
		pending, err := lw.checkLate(ctx, "")
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			lw.sh.log.Warn("late watch", LogKeyErr, err)
		}
		wait := LateMaxPollInterval
		if pending > 0 {
			wait = interval
			interval = min(interval*2, LateMaxPollInterval)
		}
		wctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-lw.sh.lateWake:
				cancel()
			case <-wctx.Done():
			}
		}()
		err = lw.sh.sleep(wctx, wait)
		woken := wctx.Err() != nil && ctx.Err() == nil
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if woken || err != nil {
			interval = lw.sh.opts.PollInterval
		}
	}
}

// checkLate makes one round over the rows of policyName ("" for all) in their late
// window, and returns how many are still watched.
func (lw *LateWatcher) checkLate(ctx context.Context, policyName string) (pending int, err error) {
	rows, err := lw.sh.store.LateWatched(ctx, policyName, lw.sh.store.Now())
	if err != nil {
		return 0, err
	}
	rows = lw.sh.claim(rows)
	defer lw.sh.unclaim(rows)
	keys, groups := groupBySlot(rows)
	var errs []error
	for _, k := range keys {
		n, err := lw.promoteLate(ctx, k.policy, k.slot, groups[k], nil)
		pending += n
		if err != nil {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	return pending, errors.Join(errs...)
}

// promoteLate looks once at rows of one (policy, slot) that failed by timeout, and
// promotes each whose image is active with every volume snapshot available. listed
// is what a caller already listed (reconcile); nil lists by stamp. pending counts the
// rows still not settled.
func (lw *LateWatcher) promoteLate(ctx context.Context, policyName string, slot time.Time, rows []store.Image,
	listed []cloud.Image) (pending int, err error) {
	cl := lw.sh.Cloud()
	log := lw.sh.log.With(LogKeyPolicy, policyName, LogKeySlot, StampSlot(slot))
	if listed == nil {
		listed, err = cl.ListImages(ctx, map[string]string{cloud.StampOwner: lw.sh.store.Owner(), cloud.StampPolicy: policyName,
			cloud.StampSlot: StampSlot(slot)})
		if err != nil {
			return len(rows), fmt.Errorf("late watch of %s: list images: %w", policyName, err)
		}
	}
	byID := map[string]cloud.Image{}
	for _, im := range listed {
		byID[im.ID] = im
	}
	bctx := context.WithoutCancel(ctx)
	sc := waitScope{policy: policyName, slot: slot, cloud: cl, log: log}
	var errs []error
	for _, row := range rows {
		img, ok := byID[row.ImageID]
		if !ok {
			got, gerr := cl.GetImage(ctx, row.ImageID)
			switch {
			case errors.Is(gerr, cloud.ErrNotFound):
				_, err := lw.sh.store.EndLateWatch(bctx, row.Row, fmt.Sprintf("%s; image %s is gone (Glance 404): late watch over", row.Reason, row.ImageID))
				errs = append(errs, err)
				continue
			case gerr != nil:
				pending++
				continue
			}
			img = got
		}
		switch img.Status {
		case cloud.ImageKilled, cloud.ImageDeleted, "pending_delete", "deactivated":
			_, err := lw.sh.store.EndLateWatch(bctx, row.Row, fmt.Sprintf("%s; image %s is %s: late watch over", row.Reason, row.ImageID, img.Status))
			errs = append(errs, err)
			continue
		case cloud.ImageActive:
		default:
			pending++
			continue
		}
		it := &waitItem{row: waitRowOf(row)}
		var fresh []store.Snapshot
		for _, ref := range img.Snapshots {
			fresh = append(fresh, store.Snapshot{SnapshotID: ref.SnapshotID, DeviceName: ref.DeviceName, BootIndex: ref.BootIndex})
		}
		if len(fresh) > 0 {
			if err := lw.sh.store.AddSnapshots(bctx, row.Row, fresh); err != nil {
				errs = append(errs, err)
				pending++
				continue
			}
		}
		done, failure, err := lw.w.checkSnapshots(ctx, sc, it, img)
		switch {
		case err != nil:
			errs = append(errs, err)
			pending++
		case failure != "":
			_, err := lw.sh.store.EndLateWatch(bctx, row.Row, row.Reason+"; "+failure+": late watch over")
			errs = append(errs, err)
		case !done:
			pending++
		default:
			good, err := lw.sh.store.MarkLateGood(bctx, row.Row, store.Good{SizeBytes: img.Size,
				Message: fmt.Sprintf("image %s completed after wait_timeout: active, %d volume snapshots available", img.ID, len(img.Snapshots))})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			lw.sh.metrics.ImageCreated(policyName, CreateLateGood, -1)
			log.Info("image good after wait_timeout", LogKeyServerID, good.ServerID, LogKeyServerName, good.ServerName, LogKeyImageID, good.ImageID, LogKeyImageName, good.Name,
				"after", good.ActiveAt.Sub(good.RequestedAt).Round(time.Second).String())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return pending, fmt.Errorf("late watch of %s: %w", policyName, err)
	}
	return pending, nil
}
