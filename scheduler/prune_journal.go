package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// The image journal of a prune: carry out the plan, one image at a time, from
// wherever an earlier attempt left it.

// execute is the prune loop: it carries out the plan, candidate by candidate in
// the plan's order (oldest first), each through deleteThroughJournal on a
// goroutine of its own holding one of the Shared worker slots. It stops starting
// new deletions when ctx ends (what is not started stays as it is, and a started
// journal resumes next time), or when the config the plan was decided by is no
// longer in force (InForce, asked after each wait for a worker: the report is then
// Superseded). Deletions already started run to their end.
func (pr *pruner) execute(ctx context.Context, rep *PruneReport, cands []candidate) {
	var wg sync.WaitGroup
	for _, c := range cands {
		release, err := pr.sh.AcquireWorker(ctx, pr.p.Name)
		if err != nil {
			break // ctx ended: the rest stays as it is and resumes next time
		}
		// Waiting for a worker can take a while: a reload in the meantime may keep
		// what this plan would delete (a raised keep_last, a removed policy).
		if pr.opts.InForce != nil && !pr.opts.InForce() {
			release()
			rep.Superseded = true
			break
		}
		wg.Add(1)
		go func(c candidate) {
			defer wg.Done()
			defer release()
			// Each goroutine writes only its own item.
			pr.deleteThroughJournal(ctx, &rep.Items[c.idx], c)
		}(c)
	}
	wg.Wait()
}

// recheckProtected looks again at a kept_protected image whose recheck is due.
func (pr *pruner) recheckProtected(ctx context.Context, row store.LineageRow) store.LineageRow {
	log := pr.log.With(LogKeyServerID, row.ServerID, LogKeyServerName, row.ServerName, LogKeyImageID, row.ImageID, LogKeyImageName, row.Name)
	img, err := pr.cl.GetImage(ctx, row.ImageID)
	var msg string
	switch {
	case errors.Is(err, cloud.ErrNotFound):
		// Gone: never good again (it would count towards min_keep and the keep rules
		// in place of a real backup). Failed, the journal cleans its snapshots.
		im, err := pr.st.MarkGone(context.WithoutCancel(ctx), row.Row,
			"protected image is gone from Glance (found at its recheck): no longer a backup")
		if err != nil {
			log.Warn("record protected image gone", LogKeyErr, err)
			return row
		}
		log.Info("protected image gone from Glance")
		row.State, row.Reason, row.FailedAt, row.NextAttemptAt = im.State, im.Reason, im.FailedAt, time.Time{}
		return row
	case err != nil:
		log.Warn("recheck protected image", LogKeyErr, err)
		return row
	case img.Protected:
		im, err := pr.st.Image(ctx, row.Row)
		if err != nil {
			log.Warn("recheck protected image", LogKeyErr, err)
			return row
		}
		next := pr.now.Add(backoff(ProtectedRecheck, ProtectedRecheckMax, im.DeleteAttempts+1))
		if _, err := pr.st.KeepProtected(context.WithoutCancel(ctx), row.Row, "image is still protected", next); err != nil {
			log.Warn("record protected image", LogKeyErr, err)
			return row
		}
		row.NextAttemptAt = next
		return row
	default:
		msg = "image is no longer protected; retention decides about it again"
	}
	im, err := pr.st.ReleaseProtected(context.WithoutCancel(ctx), row.Row, msg)
	if err != nil {
		log.Warn("release protected image", LogKeyErr, err)
		return row
	}
	log.Info("protected image released", LogKeyReason, msg)
	row.State, row.NextAttemptAt = im.State, time.Time{}
	return row
}

// backoff is base doubled per attempt after the first, capped at most.
func backoff(base, most time.Duration, attempt int) time.Duration {
	d := base
	for i := 1; i < attempt && d < most; i++ {
		d *= 2
	}
	return min(d, most)
}

// planAndDelete plans and carries out the deletion of one row outside a prune
// (reconcile cleaning up after an image gone from the cloud).
func (pr *pruner) planAndDelete(ctx context.Context, it *PruneItem, row store.LineageRow) {
	c := candidate{row: row, it: *it, insp: pr.inspect(ctx, row)}
	pr.planAction(it, c, row.State == store.ImageDeleting)
	pr.deleteThroughJournal(ctx, it, c)
}

// deleteThroughJournal deletes one image through the journal, from wherever a previous attempt
// left it, and records the outcome in it.
func (pr *pruner) deleteThroughJournal(ctx context.Context, it *PruneItem, c candidate) {
	row := c.row
	log := pr.log.With(LogKeyServerID, row.ServerID, LogKeyServerName, row.ServerName, LogKeyImageID, row.ImageID, LogKeyImageName, row.Name)
	err := pr.deleteImage(ctx, it, row, c.insp, strings.Join(c.it.Reasons, "; "), log)
	switch {
	case err == nil:
	case errors.Is(err, errPruneAbandoned):
		log.Debug("prune abandoned at a crash point")
	case ctx.Err() != nil:
		// Stopped (shutdown): the row keeps its journal state and resumes next time.
		if it.Action == "" || it.Action == PruneKeep {
			it.Action = PrunePending
		}
	default:
		log.Warn("delete image", LogKeyErr, err)
		it.Action = PrunePending
		it.Reasons = append(it.Reasons, "error: "+err.Error())
	}
}

// deleteImage is the image journal: it carries out the plan for one image from
// wherever a previous attempt left it; reason is retention's, recorded when the
// journal opens. Each step is recorded before the next starts, so that a crash
// anywhere resumes at that step:
//  1. a refusal or a wait the plan found is recorded, and nothing more;
//  2. the row becomes deleting (BeginDeletion), unless it already is;
//  3. the snapshots the image names are recorded, then the image is deleted and
//     confirmed gone (a protected image is kept_protected; a failed or unconfirmed
//     delete is retried after a backoff);
//  4. the volume snapshots behind it are deleted (prune_snapshots.go); any not yet
//     gone defer the row to a later prune;
//  5. only then is the row marked deleted.
func (pr *pruner) deleteImage(ctx context.Context, it *PruneItem, row store.LineageRow, insp inspection, reason string,
	log *slog.Logger) error {
	bctx := context.WithoutCancel(ctx)
	st := pr.st
	policyName := pr.p.Name
	// The plan already put the refusal or the wait in the item: record it. A refused
	// image is never marked deleting, since it was read before the journal opens.
	switch {
	case insp.refuse != "":
		return pr.recordRefusal(ctx, it, row, insp.refuse, log)
	case insp.retry != "":
		return pr.recordRetry(ctx, it, row, insp.retry)
	}
	img, imageGone := insp.img, insp.gone

	if row.State != store.ImageDeleting {
		if _, err := st.BeginDeletion(bctx, row.Row, reason); err != nil {
			return err
		}
		row.State = store.ImageDeleting
		log.Info("deleting image", LogKeyReason, reason)
		if h := pr.opts.hooks.afterBegin; h != nil && h(row.Row) != nil {
			return errPruneAbandoned
		}
	}

	if !imageGone {
		// Record snapshots the mapping names that the lineage lacks (a wait cut
		// short), before the image and with it the mapping are gone.
		if err := pr.recordSnapshots(bctx, row, img); err != nil {
			return err
		}
		if insp.protected {
			return pr.recordProtected(ctx, it, row, reasonProtected, log)
		}
		err := pr.cl.DeleteImage(ctx, row.ImageID)
		switch {
		case errors.Is(err, cloud.ErrNotFound):
			pr.sh.metrics.ImageDeleted(policyName, DeleteAlreadyGone)
		case errors.Is(err, cloud.ErrProtected):
			return pr.keepProtected(ctx, it, row, "Glance refused: "+cloud.Reason(err), log)
		case err != nil:
			pr.sh.metrics.ImageDeleted(policyName, DeleteFailed)
			return pr.retryLater(ctx, it, row, "delete image: "+cloud.Reason(err))
		default:
			pr.sh.metrics.ImageDeleted(policyName, DeleteConfirmed)
		}
		if h := pr.opts.hooks.afterImageDelete; h != nil && h(row.Row) != nil {
			return errPruneAbandoned
		}
		// Confirm: only an image Glance no longer knows lets the snapshots go.
		if _, err := pr.cl.GetImage(ctx, row.ImageID); !errors.Is(err, cloud.ErrNotFound) {
			why := "image still present after delete"
			if err != nil {
				why = "confirm image gone: " + cloud.Reason(err)
			}
			return pr.retryLater(ctx, it, row, why)
		}
		log.Info("image gone")
	}

	snaps, err := st.Snapshots(ctx, row.Row)
	if err != nil {
		return err
	}
	pending, next, err := pr.deleteSnapshots(ctx, it, row, snaps)
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if pending > 0 {
		it.Action, it.NextAttempt = PrunePending, next
		_, err := st.DeferDeletion(bctx, row.Row, fmt.Sprintf("%d of %d volume snapshots not gone yet", pending, len(snaps)), next)
		return err
	}
	if h := pr.opts.hooks.beforeMarkDeleted; h != nil && h(row.Row) != nil {
		return errPruneAbandoned
	}
	msg := fmt.Sprintf("image and %d volume snapshots gone", len(snaps))
	if row.ImageID == "" {
		msg = "no image was ever made for this row; nothing left in the cloud"
	}
	if _, err := st.MarkDeleted(bctx, row.Row, msg); err != nil {
		return err
	}
	it.Action, it.NextAttempt = PruneDeleted, time.Time{}
	log.Info("image deleted", "snapshots", len(snaps))
	return nil
}

func (pr *pruner) recordSnapshots(ctx context.Context, row store.LineageRow, img cloud.Image) error {
	if len(img.Snapshots) == 0 {
		return nil
	}
	have, err := pr.st.Snapshots(ctx, row.Row)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, s := range have {
		known[s.SnapshotID] = true
	}
	var add []store.Snapshot
	for _, ref := range img.Snapshots {
		if !known[ref.SnapshotID] {
			add = append(add, store.Snapshot{SnapshotID: ref.SnapshotID, DeviceName: ref.DeviceName, BootIndex: ref.BootIndex})
		}
	}
	if len(add) == 0 {
		return nil
	}
	return pr.st.AddSnapshots(ctx, row.Row, add)
}

// recordRefusal records a refusal the item already shows. A row already deleting is
// deferred with a long wait (someone must look at it); any other row is left as it
// is.
func (pr *pruner) recordRefusal(ctx context.Context, it *PruneItem, row store.LineageRow, why string, log *slog.Logger) error {
	bctx := context.WithoutCancel(ctx)
	log.Warn("deletion refused", LogKeyReason, why)
	if row.State == store.ImageDeleting {
		next := pr.now.Add(RetryBackoffMax)
		it.NextAttempt = next
		_, err := pr.st.DeferDeletion(bctx, row.Row, "refused: "+why, next)
		return err
	}
	_, err := pr.st.AddEvent(bctx, store.Event{Kind: store.EventRetentionRefused, Policy: row.Policy, ServerID: row.ServerID,
		ImageRow: row.Row, ImageID: row.ImageID, Slot: row.Slot, Message: why})
	return err
}

// keepProtected records an image Glance refused to delete (found while deleting).
func (pr *pruner) keepProtected(ctx context.Context, it *PruneItem, row store.LineageRow, why string, log *slog.Logger) error {
	it.Keep, it.Action = true, PruneProtected
	it.Reasons = append(it.Reasons, "kept: "+why)
	return pr.recordProtected(ctx, it, row, why, log)
}

// recordProtected keeps a protected image, which the item already shows, and
// schedules its recheck.
func (pr *pruner) recordProtected(ctx context.Context, it *PruneItem, row store.LineageRow, why string, log *slog.Logger) error {
	pr.sh.metrics.ImageDeleted(pr.p.Name, DeleteProtected)
	next := pr.now.Add(ProtectedRecheck)
	if _, err := pr.st.KeepProtected(context.WithoutCancel(ctx), row.Row, why, next); err != nil {
		return err
	}
	log.Info("image kept: protected", LogKeyReason, why)
	it.Keep, it.Action, it.NextAttempt = true, PruneProtected, next
	return nil
}

// retryLater records a step that did not complete; the journal resumes after a backoff.
func (pr *pruner) retryLater(ctx context.Context, it *PruneItem, row store.LineageRow, why string) error {
	if row.State != store.ImageDeleting {
		// Nothing was started: the next prune decides again.
		it.Action = PrunePending
		it.Reasons = append(it.Reasons, "not started: "+why)
		return nil
	}
	it.Reasons = append(it.Reasons, why)
	return pr.recordRetry(ctx, it, row, why)
}

// recordRetry records a wait the item already shows: an open journal resumes after
// a backoff; a deletion not started is decided again by the next prune.
func (pr *pruner) recordRetry(ctx context.Context, it *PruneItem, row store.LineageRow, why string) error {
	it.Action = PrunePending
	if row.State != store.ImageDeleting {
		return nil
	}
	im, err := pr.st.Image(ctx, row.Row)
	if err != nil {
		return err
	}
	next := pr.now.Add(backoff(RetryBackoffBase, RetryBackoffMax, im.DeleteAttempts+1))
	it.NextAttempt = next
	_, err = pr.st.DeferDeletion(context.WithoutCancel(ctx), row.Row, why, next)
	return err
}
