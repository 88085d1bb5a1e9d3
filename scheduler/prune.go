package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

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
	// SnapshotWait overrides DefaultSnapshotWait.
	SnapshotWait time.Duration

	// hooks lets tests stop a deletion at its crash points.
	hooks pruneHooks
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
	Policy   string
	DryRun   bool
	Started  time.Time
	Finished time.Time
	// Servers counts the servers with images under the policy; ServersGone those of
	// them that no longer exist or no longer match the selector.
	Servers     int
	ServersGone int
	// Items has one entry per image row not yet deleted, by server and newest first.
	Items []PruneItem
	// Counts by action.
	Counts map[PruneAction]int
	// SnapshotsDeleted counts volume snapshots confirmed gone by this prune.
	SnapshotsDeleted int
}

// Prune applies policy p's retention to the images the lineage holds for it: it
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
// p must be one of cfg's policies: a policy removed from the file deletes nothing.
// Prune takes the policy's lock, so it never runs alongside a backup run of p. The
// error is non-nil only when the prune could not decide (the lineage or the server
// list could not be read); per-image failures are in the report and retried later.
func (r *Runner) Prune(ctx context.Context, cfg *policy.Config, p *policy.Policy, opts PruneOptions) (*PruneReport, error) {
	if p == nil {
		return nil, errors.New("prune: nil policy")
	}
	if cfg != nil && !inConfig(cfg, p.Name) {
		return nil, fmt.Errorf("prune %s: policy is not in the config: a removed policy's images are never deleted", p.Name)
	}
	unlock, err := r.LockPolicy(ctx, p.Name)
	if err != nil {
		return nil, fmt.Errorf("prune %s: %w", p.Name, err)
	}
	defer unlock()
	pr := &pruner{r: r, p: p, opts: opts, cl: r.Cloud(), st: r.store,
		log: r.log.With("policy", p.Name), now: r.store.Now()}
	if pr.opts.SnapshotWait <= 0 {
		pr.opts.SnapshotWait = DefaultSnapshotWait
	}
	rep, err := pr.run(ctx)
	if err != nil {
		return nil, fmt.Errorf("prune %s: %w", p.Name, err)
	}
	return rep, nil
}

func inConfig(cfg *policy.Config, name string) bool {
	for _, q := range cfg.Policies {
		if q != nil && q.Name == name {
			return true
		}
	}
	return false
}

// pruner is one prune in progress.
type pruner struct {
	r    *Runner
	p    *policy.Policy
	opts PruneOptions
	cl   cloud.Cloud
	st   *store.Store
	log  *slog.Logger
	now  time.Time
}

// candidate is an image retention wants deleted.
type candidate struct {
	item int // index into the report's items
	row  store.LineageRow
}

func (pr *pruner) run(ctx context.Context) (*PruneReport, error) {
	rep := &PruneReport{Policy: pr.p.Name, DryRun: pr.opts.DryRun, Started: pr.now, Counts: map[PruneAction]int{}}
	rows, err := pr.st.Lineage(ctx, store.ImageFilter{Policy: pr.p.Name, States: []store.ImageState{
		store.ImageRequested, store.ImageCreating, store.ImageGood, store.ImageFailed, store.ImageDeleting, store.ImageKeptProtected}})
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	if len(rows) > 0 {
		servers, err := pr.cl.ListServers(ctx, CloudSelector(pr.p.Select))
		if err != nil {
			return nil, fmt.Errorf("list servers: %w", err)
		}
		for _, s := range servers {
			live[s.ID] = true
		}
	}

	// Protected images whose recheck is due: if someone unprotected them (or deleted
	// them), they go back to what they were and retention decides afresh below.
	if !pr.opts.DryRun {
		for i := range rows {
			if rows[i].State == store.ImageKeptProtected && !rows[i].NextAttemptAt.After(pr.now) {
				rows[i] = pr.recheckProtected(ctx, rows[i])
			}
		}
	}

	byServer := map[string][]store.LineageRow{}
	var serverIDs []string
	for _, row := range rows {
		if _, ok := byServer[row.ServerID]; !ok {
			serverIDs = append(serverIDs, row.ServerID)
		}
		byServer[row.ServerID] = append(byServer[row.ServerID], row)
	}
	sort.Strings(serverIDs)
	rep.Servers = len(serverIDs)

	var resume []candidate // open journals
	var fresh []candidate  // new deletions, subject to the cap
	for _, sid := range serverIDs {
		srows := byServer[sid]
		gone := !live[sid]
		if gone {
			rep.ServersGone++
		}
		items, cands, open := pr.decideServer(srows, gone)
		base := len(rep.Items)
		rep.Items = append(rep.Items, items...)
		for _, c := range cands {
			c.item += base
			fresh = append(fresh, c)
		}
		for _, c := range open {
			c.item += base
			resume = append(resume, c)
		}
	}

	// The cap: oldest first, so that what waits is the youngest.
	sort.SliceStable(fresh, func(i, j int) bool {
		a, b := fresh[i].row, fresh[j].row
		if !a.Slot.Equal(b.Slot) {
			return a.Slot.Before(b.Slot)
		}
		return a.Row < b.Row
	})
	limit := pr.p.Retention.MaxDeletionsPerRun
	if limit <= 0 {
		limit = policy.DefaultMaxDeletionsPerRun
	}
	if len(fresh) > limit {
		for _, c := range fresh[limit:] {
			it := &rep.Items[c.item]
			it.Action = PruneDeferred
			it.Reasons = append(it.Reasons, ReasonDeferredLimit)
		}
		pr.log.Info("deletions deferred by max_deletions_per_run", "limit", limit, "deferred", len(fresh)-limit)
		fresh = fresh[:limit]
	}

	if pr.opts.DryRun {
		for _, c := range fresh {
			rep.Items[c.item].Action = PruneDelete
		}
		for _, c := range resume {
			rep.Items[c.item].Action = PrunePending
		}
	} else {
		pr.execute(ctx, rep, append(resume, fresh...))
	}
	for _, it := range rep.Items {
		rep.Counts[it.Action]++
		for _, sn := range it.Snapshots {
			if sn.State == store.SnapshotDeleted {
				rep.SnapshotsDeleted++
			}
		}
	}
	rep.Finished = pr.r.store.Now()
	return rep, ctx.Err()
}

// decideServer applies retention to one server's rows. It returns the report items
// (newest first), the new deletions and the open journals to resume.
func (pr *pruner) decideServer(rows []store.LineageRow, gone bool) (items []PruneItem, fresh, open []candidate) {
	ret := pr.p.Retention
	loc := time.UTC
	if pr.p.Schedule != nil && pr.p.Schedule.Location != nil {
		loc = pr.p.Schedule.Location
	}
	wait := pr.r.waitTimeout(pr.p)
	var input []policy.RetentionImage
	byKey := map[string]store.LineageRow{}
	for _, row := range rows {
		st := policy.RetentionInProgress
		switch row.State {
		case store.ImageGood:
			st = policy.RetentionGood
		case store.ImageFailed:
			st = policy.RetentionFailed
		case store.ImageDeleting, store.ImageKeptProtected:
			continue // decided already; reported below
		}
		key := retentionKey(row)
		byKey[key] = row
		input = append(input, policy.RetentionImage{ID: key, Time: row.Slot, Status: st, FailReason: row.Reason,
			RequestedAt: row.RequestedAt, FailedAt: row.FailedAt, WaitTimeout: wait})
	}
	decisions := policy.Retain(input, ret, loc, pr.now)

	goodLeft := 0
	for _, in := range input {
		if in.Status == policy.RetentionGood {
			goodLeft++
		}
	}
	minKeep := max(ret.MinKeep, 1)
	for _, d := range decisions {
		row := byKey[d.ImageID]
		it := pr.item(row)
		it.Keep, it.Reasons = d.Keep, append([]string(nil), d.Reasons...)
		switch {
		case d.Keep:
			it.Action = PruneKeep
		case gone && ret.WhenServerGone != policy.ServerGoneApply:
			it.Keep, it.Action = true, PruneKeep
			it.Reasons = append(it.Reasons, ReasonServerGone)
		case row.Owner != pr.st.Owner():
			// A row written by another installation sharing this database file.
			it.Action = PruneRefused
			it.Reasons = append(it.Reasons, fmt.Sprintf("refused: lineage row of installation %s, not %s", row.Owner, pr.st.Owner()))
		case row.State == store.ImageGood && goodLeft-1 < minKeep:
			// Retain never asks for this; the guard rail stands on its own anyway.
			it.Action = PruneRefused
			it.Reasons = append(it.Reasons, fmt.Sprintf("refused: would leave fewer than min_keep %d good images", minKeep))
		default:
			if row.State == store.ImageGood {
				goodLeft--
			}
			fresh = append(fresh, candidate{item: len(items), row: row})
		}
		items = append(items, it)
	}
	for _, row := range rows {
		switch row.State {
		case store.ImageDeleting:
			it := pr.item(row)
			it.Reasons = []string{row.DeleteReason}
			it.Action, it.NextAttempt = PrunePending, row.NextAttemptAt
			if !row.NextAttemptAt.After(pr.now) {
				open = append(open, candidate{item: len(items), row: row})
			}
			items = append(items, it)
		case store.ImageKeptProtected:
			it := pr.item(row)
			it.Keep, it.Action, it.NextAttempt = true, PruneProtected, row.NextAttemptAt
			it.Reasons = []string{"protected in Glance"}
			items = append(items, it)
		}
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].Slot.After(items[j].Slot) })
	// The candidates point into items by index: re-point them after the sort.
	pos := make(map[int64]int, len(items))
	for i, it := range items {
		pos[it.ImageRow] = i
	}
	for i := range fresh {
		fresh[i].item = pos[fresh[i].row.Row]
	}
	for i := range open {
		open[i].item = pos[open[i].row.Row]
	}
	return items, fresh, open
}

// retentionKey identifies a row to Retain: the image id once known, the row id
// before (an intent without an id has nothing else).
func retentionKey(row store.LineageRow) string {
	return fmt.Sprintf("row-%d", row.Row)
}

func (pr *pruner) item(row store.LineageRow) PruneItem {
	return PruneItem{ImageRow: row.Row, ImageID: row.ImageID, Name: row.Name, ServerID: row.ServerID,
		ServerName: row.ServerName, Slot: row.Slot, Age: pr.now.Sub(row.Slot), State: row.State}
}

// execute runs the journal of each candidate, bounded by the Runner's worker slots.
func (pr *pruner) execute(ctx context.Context, rep *PruneReport, cands []candidate) {
	var wg sync.WaitGroup
	for _, c := range cands {
		release, err := pr.r.AcquireWorker(ctx)
		if err != nil {
			break // ctx ended: the rest stays as it is and resumes next time
		}
		wg.Add(1)
		go func(c candidate) {
			defer wg.Done()
			defer release()
			// Each goroutine writes only its own item.
			pr.journal(ctx, &rep.Items[c.item], c.row)
		}(c)
	}
	wg.Wait()
}

// recheckProtected looks again at a kept_protected image whose recheck is due.
func (pr *pruner) recheckProtected(ctx context.Context, row store.LineageRow) store.LineageRow {
	log := pr.log.With("server_id", row.ServerID, "image_id", row.ImageID)
	img, err := pr.cl.GetImage(ctx, row.ImageID)
	var msg string
	switch {
	case errors.Is(err, cloud.ErrNotFound):
		msg = "protected image is gone from Glance; retention decides about its snapshots again"
	case err != nil:
		log.Warn("recheck protected image", "err", err)
		return row
	case img.Protected:
		im, err := pr.st.Image(ctx, row.Row)
		if err != nil {
			log.Warn("recheck protected image", "err", err)
			return row
		}
		next := pr.now.Add(backoff(ProtectedRecheck, ProtectedRecheckMax, im.DeleteAttempts+1))
		if _, err := pr.st.KeepProtected(context.WithoutCancel(ctx), row.Row, "image is still protected", next); err != nil {
			log.Warn("record protected image", "err", err)
			return row
		}
		row.NextAttemptAt = next
		return row
	default:
		msg = "image is no longer protected; retention decides about it again"
	}
	im, err := pr.st.ReleaseProtected(context.WithoutCancel(ctx), row.Row, msg)
	if err != nil {
		log.Warn("release protected image", "err", err)
		return row
	}
	log.Info("protected image released", "reason", msg)
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

// journal deletes one image through the journal, from wherever a previous attempt
// left it, and records the outcome in it.
func (pr *pruner) journal(ctx context.Context, it *PruneItem, row store.LineageRow) {
	log := pr.log.With("server_id", row.ServerID, "image_id", row.ImageID)
	err := pr.deleteImage(ctx, it, row, log)
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
		log.Warn("delete image", "err", err)
		it.Action = PrunePending
		it.Reasons = append(it.Reasons, "error: "+err.Error())
	}
}

// errRefused marks a deletion a guard rail refused.
var errRefused = errors.New("refused")

func (pr *pruner) deleteImage(ctx context.Context, it *PruneItem, row store.LineageRow, log *slog.Logger) error {
	bctx := context.WithoutCancel(ctx)
	st := pr.st
	policyName := pr.p.Name
	// Guard rail: the image in Glance must carry our stamp for this very row. Read it
	// before the journal opens, so that a refused image is never marked deleting.
	var img cloud.Image
	imageGone := row.ImageID == ""
	if row.ImageID != "" {
		got, err := pr.cl.GetImage(ctx, row.ImageID)
		switch {
		case errors.Is(err, cloud.ErrNotFound):
			imageGone = true
		case err != nil:
			return pr.defer_(ctx, it, row, "read image: "+cloud.Reason(err))
		default:
			img = got
			if why := pr.stampMismatch(row, img); why != "" {
				return pr.refuse(ctx, it, row, why, log)
			}
		}
	} else if row.State == store.ImageFailed {
		// An intent whose outcome was never learned: an image with our stamp may
		// exist. Leave the row to reconcile's adoption rather than lose track of it.
		found, err := pr.cl.ListImages(ctx, cloud.Stamp{Owner: st.Owner(), Policy: row.Policy, Server: row.ServerID,
			Slot: StampSlot(row.Slot)}.Properties())
		if err != nil {
			return pr.defer_(ctx, it, row, "look for a stamped image: "+cloud.Reason(err))
		}
		if len(found) > 0 {
			return pr.refuse(ctx, it, row, fmt.Sprintf("image %s carries this row's stamp but the row has no id: adopt it with reconcile --fix", found[0].ID), log)
		}
	}

	if row.State != store.ImageDeleting {
		reason := strings.Join(it.Reasons, "; ")
		if _, err := st.BeginDeletion(bctx, row.Row, reason); err != nil {
			return err
		}
		row.State = store.ImageDeleting
		log.Info("deleting image", "reason", reason)
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
		if img.Protected {
			return pr.protected(ctx, it, row, "image is protected in Glance", log)
		}
		err := pr.cl.DeleteImage(ctx, row.ImageID)
		switch {
		case errors.Is(err, cloud.ErrNotFound):
			pr.r.metrics.ImageDeleted(policyName, DeleteAlreadyGone)
		case errors.Is(err, cloud.ErrProtected):
			return pr.protected(ctx, it, row, "Glance refused: "+cloud.Reason(err), log)
		case err != nil:
			pr.r.metrics.ImageDeleted(policyName, DeleteFailed)
			return pr.defer_(ctx, it, row, "delete image: "+cloud.Reason(err))
		default:
			pr.r.metrics.ImageDeleted(policyName, DeleteDeleted)
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
			return pr.defer_(ctx, it, row, why)
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

// stampMismatch says why img's stamp does not prove it is this row's image, or "".
func (pr *pruner) stampMismatch(row store.LineageRow, img cloud.Image) string {
	stamp, ok := cloud.StampOf(img.Properties)
	switch {
	case !ok:
		return fmt.Sprintf("image %s carries no complete imagekeeper stamp", img.ID)
	case stamp.Owner != pr.st.Owner():
		return fmt.Sprintf("image %s is stamped by installation %s, not %s", img.ID, stamp.Owner, pr.st.Owner())
	case stamp.Policy != row.Policy || stamp.Server != row.ServerID || stamp.Slot != StampSlot(row.Slot):
		return fmt.Sprintf("image %s is stamped for %s/%s/%s, the row is %s/%s/%s", img.ID, stamp.Policy, stamp.Server,
			stamp.Slot, row.Policy, row.ServerID, StampSlot(row.Slot))
	}
	return ""
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

// refuse records a guard rail's refusal. A row already deleting is deferred with a
// long wait (someone must look at it); any other row is left as it is.
func (pr *pruner) refuse(ctx context.Context, it *PruneItem, row store.LineageRow, why string, log *slog.Logger) error {
	bctx := context.WithoutCancel(ctx)
	log.Warn("deletion refused", "reason", why)
	it.Action = PruneRefused
	it.Reasons = append(it.Reasons, "refused: "+why)
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

func (pr *pruner) protected(ctx context.Context, it *PruneItem, row store.LineageRow, why string, log *slog.Logger) error {
	pr.r.metrics.ImageDeleted(pr.p.Name, DeleteProtected)
	next := pr.now.Add(ProtectedRecheck)
	if _, err := pr.st.KeepProtected(context.WithoutCancel(ctx), row.Row, why, next); err != nil {
		return err
	}
	log.Info("image kept: protected", "reason", why)
	it.Keep, it.Action, it.NextAttempt = true, PruneProtected, next
	it.Reasons = append(it.Reasons, "kept: "+why)
	return nil
}

// defer_ records a step that did not complete; the journal resumes after a backoff.
func (pr *pruner) defer_(ctx context.Context, it *PruneItem, row store.LineageRow, why string) error {
	if row.State != store.ImageDeleting {
		// Nothing was started: the next prune decides again.
		it.Action = PrunePending
		it.Reasons = append(it.Reasons, "not started: "+why)
		return nil
	}
	im, err := pr.st.Image(ctx, row.Row)
	if err != nil {
		return err
	}
	next := pr.now.Add(backoff(RetryBackoffBase, RetryBackoffMax, im.DeleteAttempts+1))
	it.Action, it.NextAttempt = PrunePending, next
	it.Reasons = append(it.Reasons, why)
	_, err = pr.st.DeferDeletion(context.WithoutCancel(ctx), row.Row, why, next)
	return err
}

// deleteSnapshots deletes every snapshot of an image whose Glance image is gone and
// waits (up to SnapshotWait) for each to be gone. It returns how many are not gone
// yet and the earliest moment to look at them again.
func (pr *pruner) deleteSnapshots(ctx context.Context, it *PruneItem, row store.LineageRow, snaps []store.Snapshot) (pending int, next time.Time, err error) {
	bctx := context.WithoutCancel(ctx)
	log := pr.log.With("server_id", row.ServerID, "image_id", row.ImageID)
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
			log.Warn("record snapshot step", "snapshot_id", sn.SnapshotID, "err", err)
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
			pr.r.metrics.SnapshotDeleted(policyName, alreadyGoneOr(sn))
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
			pr.r.metrics.SnapshotDeleted(policyName, DeleteFailed)
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
			pr.r.metrics.SnapshotDeleted(policyName, DeleteAlreadyGone)
			record(sn, store.SnapshotStep{State: store.SnapshotDeleted, Reason: "gone (Cinder 404)", Attempt: true})
			continue
		case errors.Is(derr, cloud.ErrInUse):
			pr.r.metrics.SnapshotDeleted(policyName, DeleteInUse)
			at := retryAt(sn.DeleteAttempts + 1)
			record(sn, store.SnapshotStep{State: store.SnapshotKeptInUse, Attempt: true,
				Reason: "Cinder refused: " + cloud.Reason(derr), NextAttempt: at})
			log.Info("snapshot kept: in use", "snapshot_id", sn.SnapshotID, "reason", cloud.Reason(derr))
			later(at)
			continue
		case derr != nil:
			pr.r.metrics.SnapshotDeleted(policyName, DeleteFailed)
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
	interval := pr.r.opts.PollInterval
	var waited time.Duration
	for len(watching) > 0 && waited < pr.opts.SnapshotWait {
		if err := pr.r.sleep(ctx, interval); err != nil {
			break
		}
		waited += interval
		interval = min(interval*2, pr.r.opts.MaxPollInterval)
		var still []*watch
		for _, w := range watching {
			cur, err := pr.cl.GetSnapshot(ctx, w.sn.SnapshotID)
			switch {
			case errors.Is(err, cloud.ErrNotFound):
				pr.r.metrics.SnapshotDeleted(policyName, DeleteDeleted)
				record(w.sn, store.SnapshotStep{State: store.SnapshotDeleted, Reason: "gone (Cinder 404)"})
			case err != nil:
				still = append(still, w)
			case cur.Status == cloud.SnapshotAvailable:
				pr.r.metrics.SnapshotDeleted(policyName, DeleteInUse)
				// The request was counted when it was made.
				at := retryAt(w.sn.DeleteAttempts)
				record(w.sn, store.SnapshotStep{State: store.SnapshotKeptInUse,
					Reason: "back to available after delete: a volume depends on it", NextAttempt: at})
				log.Info("snapshot kept: in use", "snapshot_id", w.sn.SnapshotID)
				later(at)
			case cur.Status == cloud.SnapshotErrorDeleting:
				pr.r.metrics.SnapshotDeleted(policyName, DeleteFailed)
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
		return DeleteDeleted
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
