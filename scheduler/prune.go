package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// The prune in stages: this file is its API (options, report, entry point);
// prune_plan.go decides (the plan both the dry run and the real run use),
// prune_journal.go carries the plan out image by image, and prune_snapshots.go
// deletes the volume snapshots an image leaves behind.

// Defaults of the deletion journal.
const (
	// DefaultSnapshotWait bounds how long one prune waits for a deleted volume
	// snapshot to be gone before it leaves the rest to a later cycle.
	DefaultSnapshotWait = 5 * time.Minute
	// RetryBackoffBase and RetryBackoffMax shape the retries of a deletion step that
	// did not complete (a snapshot in use, a cloud error): the wait doubles from the
	// base with each attempt, up to the max.
	RetryBackoffBase = 15 * time.Minute
	RetryBackoffMax  = 24 * time.Hour
	// ProtectedRecheck is how long a protected image is left alone before prune
	// looks again whether someone unprotected it. It doubles per look, up to a week.
	ProtectedRecheck    = 24 * time.Hour
	ProtectedRecheckMax = 7 * 24 * time.Hour
)

// Reasons a prune keeps or refuses an image besides what retention says.
const (
	ReasonServerGone    = "server gone or no longer selected (when_server_gone: keep)"
	ReasonDeferredLimit = "deferred: max_deletions_per_run reached"
)

// PruneAction is what a prune did (or, in a dry run, would do) with one image.
type PruneAction string

// Prune actions.
const (
	// PruneKeep: retention keeps it.
	PruneKeep PruneAction = "keep"
	// PruneDelete: a dry run would delete it.
	PruneDelete PruneAction = "delete"
	// PruneDeleted: the image and every snapshot behind it are gone; the row is deleted.
	PruneDeleted PruneAction = "deleted"
	// PrunePending: the journal is open (a snapshot in use, still deleting, a cloud
	// error) and resumes on a later cycle, at NextAttempt.
	PrunePending PruneAction = "pending"
	// PruneDeferred: retention would delete it, but max_deletions_per_run was reached.
	PruneDeferred PruneAction = "deferred"
	// PruneProtected: Glance refuses to delete it (protected); kept.
	PruneProtected PruneAction = "protected"
	// PruneRefused: a guard rail refused the deletion (stamp, owner, min_keep).
	PruneRefused PruneAction = "refused"
)

// PruneOptions tunes one prune.
type PruneOptions struct {
	// DryRun decides and reports without changing the cloud or the store.
	DryRun bool
	// Full lists every image in the report's Items; otherwise Items lists only the
	// images something happens to (deleted, to delete, pending, refused), and kept,
	// protected and deferred images are only counted. The CLI wants the full table;
	// the daemon, pruning a large fleet after every run, does not.
	Full bool
	// SnapshotWait overrides DefaultSnapshotWait.
	SnapshotWait time.Duration

	// InForce, when set, is asked before each deletion starts: false means the
	// config the prune decided by was replaced (a reload), and the prune stops
	// there; what it had not started is left as it is, for a prune that decides by
	// the config now in force. Deletions already started finish.
	InForce func() bool

	// hooks lets tests stop a deletion at its crash points.
	hooks pruneHooks
	// yield, when set, is closed once a backup run of the policy waits for the
	// policy lock this prune holds: the prune then stops waiting for Cinder (the
	// journal leaves the snapshots to the next prune), so retention never delays a
	// backup.
	yield <-chan struct{}
}

// pruneHooks are the crash points of the deletion journal, for tests. A hook that
// returns an error abandons that image right there, as a killed process would.
type pruneHooks struct {
	afterBegin          func(row int64) error
	afterImageDelete    func(row int64) error
	afterSnapshotDelete func(row int64, snapshotID string) error
	beforeMarkDeleted   func(row int64) error
}

var errPruneAbandoned = errors.New("abandoned at a crash point")

// PruneSnapshot is what became of one volume snapshot of an image being deleted.
type PruneSnapshot struct {
	SnapshotID string
	State      store.SnapshotState
	Reason     string
}

// PruneItem is one image a prune considered.
type PruneItem struct {
	ImageRow   int64
	ImageID    string
	Name       string
	ServerID   string
	ServerName string
	Slot       time.Time
	// Age is how long before the prune the slot was.
	Age time.Duration
	// State is the lineage state when the prune looked.
	State store.ImageState
	// Keep is retention's verdict (with the server-gone rule applied).
	Keep bool
	// Action is what happened.
	Action PruneAction
	// Reasons are retention's reasons, then anything the journal or a guard rail
	// added.
	Reasons   []string
	Snapshots []PruneSnapshot
	// NextAttempt is when a pending or protected image is looked at again.
	NextAttempt time.Time
}

// PruneReport is what one prune of one policy decided and did.
type PruneReport struct {
	Policy string
	DryRun bool
	// Inactive says why nothing was decided: the policy is absent from, or disabled
	// in, the config in force when retention ran. Empty for a prune that decided.
	Inactive string
	// Superseded is set when a reload replaced the config this prune decided by
	// before it had started every deletion (see PruneOptions.InForce).
	Superseded bool
	Started    time.Time
	Finished   time.Time
	// Servers counts the servers with images under the policy; ServersGone those of
	// them that no longer exist or no longer match the selector.
	Servers     int
	ServersGone int
	// Items has one entry per image row not yet deleted (by server, newest first)
	// when PruneOptions.Full; otherwise only the images something happens to.
	Items []PruneItem
	// Counts by action.
	Counts map[PruneAction]int
	// SnapshotsDeleted counts volume snapshots confirmed gone by this prune.
	SnapshotsDeleted int
}

// prune applies policy p's retention to the images the lineage holds for it: it
// decides with policy.Retain per server, resumes deletions a previous prune left
// open, and deletes through the journal what no rule keeps, within the guard rails:
//   - only rows of this installation, of images whose Glance stamp names this
//     installation, the row's policy, server and slot (a snapshot of a server booted
//     from one of our images inherits our stamp but has no row: never a candidate);
//   - never below min_keep good images of a server (checked again here, apart from
//     Retain);
//   - at most max_deletions_per_run new deletions per run (oldest first; the rest is
//     reported as deferred);
//   - when_server_gone: keep keeps every image of a server that no longer exists or
//     no longer matches the selector.
//
// Only Retention calls it, holding the policy's lock, with p as the config owner
// had it once the lock was taken. The error is non-nil only when the prune could
// not decide (the lineage or the server list could not be read); per-image
// failures are in the report and retried later.
func prune(ctx context.Context, sh *Shared, p *policy.Policy, opts PruneOptions) (*PruneReport, error) {
	rep, err := newPruner(sh, p, opts).run(ctx)
	if err != nil {
		return nil, fmt.Errorf("prune %s: %w", p.Name, err)
	}
	return rep, nil
}

// newPruner returns a prune of p with opts on the shared resources; Retention and
// the Reconciler (for the snapshots of an image gone from the cloud) make theirs
// with it.
func newPruner(sh *Shared, p *policy.Policy, opts PruneOptions) *pruner {
	if opts.SnapshotWait <= 0 {
		opts.SnapshotWait = DefaultSnapshotWait
	}
	return &pruner{sh: sh, p: p, opts: opts, cl: sh.Cloud(), st: sh.store,
		log: sh.log.With(LogKeyPolicy, p.Name), now: sh.store.Now()}
}

// pruner is one prune in progress.
type pruner struct {
	sh   *Shared
	p    *policy.Policy
	opts PruneOptions
	cl   cloud.Cloud
	st   *store.Store
	log  *slog.Logger
	now  time.Time
	// retainIn and candBuf are decideServer's scratch, reused from server to
	// server (a plan decides one server at a time).
	retainIn []policy.RetentionImage
	candBuf  []candRef
	// retainer is Retain's scratch, reused likewise: its decisions' Reasons are
	// only valid until the next server, so whatever keeps them clones them.
	retainer policy.Retainer
}

// run plans, then (unless a dry run) executes the plan, and counts the outcome.
func (pr *pruner) run(ctx context.Context) (*PruneReport, error) {
	plan, err := pr.plan(ctx)
	if err != nil {
		return nil, err
	}
	if !pr.opts.DryRun {
		pr.execute(ctx, plan.rep, plan.cands)
	}
	rep := plan.rep
	for a, n := range plan.counted {
		rep.Counts[a] += n
	}
	for _, it := range rep.Items {
		rep.Counts[it.Action]++
		for _, sn := range it.Snapshots {
			if sn.State == store.SnapshotDeleted {
				rep.SnapshotsDeleted++
			}
		}
	}
	rep.Finished = pr.sh.store.Now()
	return rep, ctx.Err()
}
