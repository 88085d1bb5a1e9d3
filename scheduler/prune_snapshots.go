package scheduler

import (
	"context"
	"errors"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// The snapshot journal of a prune: once an image is gone from Glance, delete the
// volume snapshots behind it and wait for each to be gone.

// deleteSnapshots deletes every snapshot of an image whose Glance image is gone and
// waits (up to SnapshotWait) for each to be gone. It returns how many are not gone
// yet and the earliest moment to look at them again.
func (pr *pruner) deleteSnapshots(ctx context.Context, it *PruneItem, row store.LineageRow, snaps []store.Snapshot) (pending int, next time.Time, err error) {
	bctx := context.WithoutCancel(ctx)
	log := pr.log.With(LogKeyServerID, row.ServerID, LogKeyServerName, row.ServerName, LogKeyImageID, row.ImageID, LogKeyImageName, row.Name)
	policyName := pr.p.Name
	type watch struct {
		sn        store.Snapshot
		requested bool // we asked Cinder to delete it in this prune
	}
	var watching []*watch
	// later counts a snapshot left for a later prune, due at.
	later := func(at time.Time) {
		pending++
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	record := func(sn store.Snapshot, step store.SnapshotStep) store.Snapshot {
		got, err := pr.st.RecordSnapshotStep(bctx, sn.SnapshotID, step)
		if err != nil {
			log.Warn("record snapshot step", LogKeySnapshotID, sn.SnapshotID, LogKeyErr, err)
			return sn
		}
		return got
	}
	// retryAt is when to try again after the n-th unsuccessful attempt.
	retryAt := func(n int) time.Time {
		return pr.now.Add(backoff(RetryBackoffBase, RetryBackoffMax, max(n, 1)))
	}
	for _, sn := range snaps {
		if sn.State == store.SnapshotDeleted {
			continue
		}
		if sn.NextAttemptAt.After(pr.now) {
			later(sn.NextAttemptAt)
			continue
		}
		cur, err := pr.cl.GetSnapshot(ctx, sn.SnapshotID)
		switch {
		case errors.Is(err, cloud.ErrNotFound):
			pr.sh.metrics.SnapshotDeleted(policyName, alreadyGoneOr(sn))
			record(sn, store.SnapshotStep{State: store.SnapshotDeleted, Reason: "gone (Cinder 404)"})
			continue
		case err != nil:
			at := retryAt(sn.DeleteAttempts + 1)
			record(sn, store.SnapshotStep{Reason: "read snapshot: " + cloud.Reason(err), NextAttempt: at})
			later(at)
			continue
		}
		switch cur.Status {
		case cloud.SnapshotDeleting:
			// Ours from a previous attempt (or a crash right after the request).
			watching = append(watching, &watch{sn: sn, requested: true})
			continue
		case cloud.SnapshotErrorDeleting:
			pr.sh.metrics.SnapshotDeleted(policyName, DeleteFailed)
			at := retryAt(sn.DeleteAttempts + 1)
			record(sn, store.SnapshotStep{State: store.SnapshotErrorDeleting, Reason: "Cinder error_deleting: needs an operator (os-reset_status)",
				NextAttempt: at})
			later(at)
			continue
		case cloud.SnapshotAvailable, cloud.SnapshotError:
		default:
			// creating, backing-up, restoring...: Cinder would refuse; try later.
			at := pr.now.Add(RetryBackoffBase)
			record(sn, store.SnapshotStep{Reason: "snapshot is " + cur.Status, NextAttempt: at})
			later(at)
			continue
		}
		derr := pr.cl.DeleteSnapshot(ctx, sn.SnapshotID)
		switch {
		case errors.Is(derr, cloud.ErrNotFound):
			pr.sh.metrics.SnapshotDeleted(policyName, DeleteAlreadyGone)
			record(sn, store.SnapshotStep{State: store.SnapshotDeleted, Reason: "gone (Cinder 404)", Attempt: true})
			continue
		case errors.Is(derr, cloud.ErrInUse):
			pr.sh.metrics.SnapshotDeleted(policyName, DeleteInUse)
			at := retryAt(sn.DeleteAttempts + 1)
			record(sn, store.SnapshotStep{State: store.SnapshotKeptInUse, Attempt: true,
				Reason: "Cinder refused: " + cloud.Reason(derr), NextAttempt: at})
			log.Info("snapshot kept: in use", LogKeySnapshotID, sn.SnapshotID, LogKeyReason, cloud.Reason(derr))
			later(at)
			continue
		case derr != nil:
			pr.sh.metrics.SnapshotDeleted(policyName, DeleteFailed)
			at := retryAt(sn.DeleteAttempts + 1)
			record(sn, store.SnapshotStep{Attempt: true, Reason: "delete snapshot: " + cloud.Reason(derr), NextAttempt: at})
			later(at)
			continue
		}
		sn = record(sn, store.SnapshotStep{State: store.SnapshotDeleting, Attempt: true})
		if h := pr.opts.hooks.afterSnapshotDelete; h != nil && h(row.Row, sn.SnapshotID) != nil {
			return 0, time.Time{}, errPruneAbandoned
		}
		watching = append(watching, &watch{sn: sn, requested: true})
	}

	// Wait for the deletions Cinder accepted: gone (404), back to available (a volume
	// depends on it: Cinder's SnapshotIsBusy), or error_deleting.
	// The wait is bounded by the time slept, not by the clock, so that it ends even
	// when a test's clock does not move.
	interval := pr.sh.opts.PollInterval
	var waited time.Duration
	// A backup run waiting for the policy lock ends the wait, in-flight reads
	// included: the snapshots stay deleting in the journal for the next prune.
	wctx, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	if pr.opts.yield != nil {
		go func() {
			select {
			case <-pr.opts.yield:
				stopWaiting()
			case <-wctx.Done():
			}
		}()
	}
	ctx = wctx
	for len(watching) > 0 && waited < pr.opts.SnapshotWait {
		if err := pr.sh.sleep(ctx, interval); err != nil {
			break
		}
		waited += interval
		interval = nextPoll(interval, pr.sh.opts.MaxPollInterval)
		var still []*watch
		for _, w := range watching {
			cur, err := pr.cl.GetSnapshot(ctx, w.sn.SnapshotID)
			switch {
			case errors.Is(err, cloud.ErrNotFound):
				pr.sh.metrics.SnapshotDeleted(policyName, DeleteConfirmed)
				record(w.sn, store.SnapshotStep{State: store.SnapshotDeleted, Reason: "gone (Cinder 404)"})
			case err != nil:
				still = append(still, w)
			case cur.Status == cloud.SnapshotAvailable:
				pr.sh.metrics.SnapshotDeleted(policyName, DeleteInUse)
				// The request was counted when it was made.
				at := retryAt(w.sn.DeleteAttempts)
				record(w.sn, store.SnapshotStep{State: store.SnapshotKeptInUse,
					Reason: "back to available after delete: a volume depends on it", NextAttempt: at})
				log.Info("snapshot kept: in use", LogKeySnapshotID, w.sn.SnapshotID)
				later(at)
			case cur.Status == cloud.SnapshotErrorDeleting:
				pr.sh.metrics.SnapshotDeleted(policyName, DeleteFailed)
				at := retryAt(w.sn.DeleteAttempts)
				record(w.sn, store.SnapshotStep{State: store.SnapshotErrorDeleting,
					Reason: "Cinder error_deleting: needs an operator (os-reset_status)", NextAttempt: at})
				later(at)
			default:
				still = append(still, w)
			}
		}
		watching = still
	}
	for range watching {
		// Still deleting after SnapshotWait (or the prune was stopped): the next prune
		// looks again; the snapshot row stays deleting.
		later(pr.now)
	}
	it.Snapshots = pr.snapshotStates(ctx, row.Row)
	return pending, next, nil
}

// alreadyGoneOr is the metric result of a snapshot found gone: deleted when this
// journal had asked for its deletion before, already_gone otherwise.
func alreadyGoneOr(sn store.Snapshot) string {
	if sn.DeleteAttempts > 0 || sn.State == store.SnapshotDeleting {
		return DeleteConfirmed
	}
	return DeleteAlreadyGone
}

func (pr *pruner) snapshotStates(ctx context.Context, row int64) []PruneSnapshot {
	snaps, err := pr.st.Snapshots(context.WithoutCancel(ctx), row)
	if err != nil {
		return nil
	}
	out := make([]PruneSnapshot, 0, len(snaps))
	for _, s := range snaps {
		reason := s.Reason
		if s.State != store.SnapshotDeleted && s.LastError != "" {
			reason = s.LastError
		}
		out = append(out, PruneSnapshot{SnapshotID: s.SnapshotID, State: s.State, Reason: reason})
	}
	return out
}
