package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
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
	// Full lists every image in the report's Items; otherwise Items lists only the
	// images something happens to (deleted, to delete, pending, refused), and kept,
	// protected and deferred images are only counted. The CLI wants the full table;
	// the daemon, pruning a large fleet after every run, does not.
	Full bool
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
	Policy string
	DryRun bool
	// Inactive says why nothing was decided: the policy is absent from, or disabled
	// in, the config in force when retention ran. Empty for a prune that decided.
	Inactive string
	Started  time.Time
	Finished time.Time
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
func (r *Runner) prune(ctx context.Context, p *policy.Policy, opts PruneOptions) (*PruneReport, error) {
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

// candidate is an image to delete: a new deletion retention asks for, or an open
// journal to resume.
type candidate struct {
	row store.LineageRow
	it  PruneItem
	// insp is what Glance said about the image when the plan was made.
	insp inspection
	// idx is the candidate's index in the report's Items in a full report, -1 until
	// it is placed otherwise.
	idx int
}

// pruneBatch is how many servers' rows one lineage query reads: memory stays
// bounded by it, and the store's one connection is free between batches.
const pruneBatch = 256

var pruneStates = []store.ImageState{store.ImageRequested, store.ImageCreating, store.ImageGood, store.ImageFailed,
	store.ImageDeleting, store.ImageKeptProtected}

func (pr *pruner) run(ctx context.Context) (*PruneReport, error) {
	rep := &PruneReport{Policy: pr.p.Name, DryRun: pr.opts.DryRun, Started: pr.now, Counts: map[PruneAction]int{}}
	serverIDs, err := pr.st.LineageServers(ctx, pr.p.Name)
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	if len(serverIDs) > 0 {
		// Inside a worker slot, like a backup run's listing.
		release, err := pr.r.AcquireWorker(ctx, pr.p.Name)
		if err != nil {
			return nil, err
		}
		servers, err := pr.cl.ListServers(ctx, CloudSelector(pr.p.Select))
		release()
		if err != nil {
			return nil, err // the cloud's error names the call: "list servers: ..."
		}
		for _, s := range servers {
			live[s.ID] = true
		}
	}
	limit := pr.p.Retention.MaxDeletionsPerRun
	if limit <= 0 {
		limit = policy.DefaultMaxDeletionsPerRun
	}
	// counted holds the actions of images not listed in Items (a report that is not
	// Full lists only the images something happens to).
	counted := map[PruneAction]int{}
	var resume []candidate // open journals: not subject to the cap
	var fresh []candidate  // new deletions: the limit oldest survive
	deferred := func(c candidate) {
		if c.idx >= 0 {
			it := &rep.Items[c.idx]
			it.Action = PruneDeferred
			it.Reasons = append(it.Reasons, ReasonDeferredLimit)
		} else {
			counted[PruneDeferred]++
		}
	}
	trim := func(keep int) {
		sortCandidates(fresh)
		for _, c := range fresh[keep:] {
			deferred(c)
		}
		fresh = fresh[:keep]
	}

	// youngest is the youngest of the limit oldest new deletions once that many
	// are known: anything younger is deferred without being kept around.
	var youngest *store.LineageRow
	var rows []store.LineageRow
	for b := 0; b < len(serverIDs); b += pruneBatch {
		batch := serverIDs[b:min(b+pruneBatch, len(serverIDs))]
		if pr.opts.Full {
			rows, err = pr.st.AppendLineage(ctx, rows[:0], pr.p.Name, batch, pruneStates)
		} else {
			// Only the rows something happens to are shown: read what retention
			// needs, packed, and the names of the shown rows afterwards.
			rows, err = pr.st.AppendRetentionRows(ctx, rows[:0], pr.p.Name, batch, pruneStates)
		}
		if err != nil {
			return nil, err
		}
		for lo := 0; lo < len(rows); {
			hi := lo + 1
			for hi < len(rows) && rows[hi].ServerID == rows[lo].ServerID {
				hi++
			}
			srows := rows[lo:hi]
			lo = hi
			rep.Servers++
			gone := !live[srows[0].ServerID]
			if gone {
				rep.ServersGone++
			}
			// Protected images whose recheck is due: if someone unprotected them (or
			// deleted them), they go back to what they were and retention decides
			// afresh below.
			if !pr.opts.DryRun {
				for i := range srows {
					if srows[i].State == store.ImageKeptProtected && !srows[i].NextAttemptAt.After(pr.now) {
						srows[i] = pr.recheckProtected(ctx, srows[i])
					}
				}
			}
			items, cands := pr.decideServer(srows, gone)
			base := len(rep.Items)
			for _, it := range items {
				if pr.opts.Full {
					rep.Items = append(rep.Items, it)
				} else if it.Action != PruneKeep && it.Action != PruneProtected && it.Action != "" {
					rep.Items = append(rep.Items, it)
				} else if it.Action != "" {
					counted[it.Action]++
				}
			}
			for _, ref := range cands {
				row := &srows[ref.row]
				idx := -1
				if pr.opts.Full {
					idx = base + ref.item
				}
				if row.State != store.ImageDeleting && youngest != nil && !olderThan(row, youngest) {
					deferred(candidate{idx: idx})
					continue
				}
				c := candidate{row: *row, it: items[ref.item], idx: idx}
				if c.row.State == store.ImageDeleting {
					if !pr.opts.Full {
						rep.Items = append(rep.Items, c.it)
						c.idx = len(rep.Items) - 1
					}
					resume = append(resume, c)
					continue
				}
				fresh = append(fresh, c)
			}
			if len(fresh) > 2*limit {
				trim(limit)
				y := fresh[limit-1].row
				youngest = &y
			}
		}
	}
	if len(fresh) > limit {
		pr.log.Info("deletions deferred by max_deletions_per_run", "limit", limit, "deferred", len(fresh)-limit)
		trim(limit)
	}
	sortCandidates(fresh)
	if !pr.opts.Full {
		for i := range fresh {
			rep.Items = append(rep.Items, fresh[i].it)
			fresh[i].idx = len(rep.Items) - 1
		}
	}

	if !pr.opts.Full {
		if err := pr.nameItems(ctx, rep.Items); err != nil {
			return nil, err
		}
	}
	// The plan's last input is what Glance says about each image to delete: a
	// protected image is kept and a foreign stamp refused, in the dry run exactly as
	// in the real one, which then carries out this very plan.
	cands := append(resume, fresh...)
	pr.inspectAll(ctx, cands)
	for i := range cands {
		pr.planAction(&rep.Items[cands[i].idx], cands[i], i < len(resume))
	}
	if !pr.opts.DryRun {
		pr.execute(ctx, rep, cands)
	}
	for a, n := range counted {
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
	rep.Finished = pr.r.store.Now()
	return rep, ctx.Err()
}

// nameItems fills the image and server names of items planned from packed rows
// (AppendRetentionRows leaves them out): one lookup for the rows shown.
func (pr *pruner) nameItems(ctx context.Context, items []PruneItem) error {
	if len(items) == 0 {
		return nil
	}
	ids := make([]int64, len(items))
	for i, it := range items {
		ids[i] = it.ImageRow
	}
	rows, err := pr.st.LineageRows(ctx, ids)
	if err != nil {
		return err
	}
	byRow := make(map[int64]*store.LineageRow, len(rows))
	for i := range rows {
		byRow[rows[i].Row] = &rows[i]
	}
	for i := range items {
		if row := byRow[items[i].ImageRow]; row != nil {
			items[i].Name, items[i].ServerName = row.Name, row.ServerName
		}
	}
	return nil
}

// sortCandidates orders new deletions oldest first, so that the cap defers the
// youngest.
func sortCandidates(cs []candidate) {
	slices.SortFunc(cs, func(a, b candidate) int {
		if c := a.row.Slot.Compare(b.row.Slot); c != 0 {
			return c
		}
		return cmp.Compare(a.row.Row, b.row.Row)
	})
}

// olderThan reports whether a sorts before b in sortCandidates' order.
func olderThan(a, b *store.LineageRow) bool {
	if c := a.Slot.Compare(b.Slot); c != 0 {
		return c < 0
	}
	return a.Row < b.Row
}

// candRef points at a candidate in decideServer's input rows and output items.
type candRef struct{ row, item int }

// decideServer applies retention to one server's rows (newest first). It returns
// the report items (newest first; candidates have no Action yet) and the candidates:
// new deletions and open journals whose next attempt is due.
func (pr *pruner) decideServer(rows []store.LineageRow, gone bool) (items []PruneItem, cands []candRef) {
	ret := pr.p.Retention
	loc := time.UTC
	if pr.p.Schedule != nil && pr.p.Schedule.Location != nil {
		loc = pr.p.Schedule.Location
	}
	wait := pr.r.waitTimeout(pr.p)
	input := make([]policy.RetentionImage, 0, len(rows))
	byKey := make(map[string]int, len(rows))
	goodLeft := 0
	for i, row := range rows {
		st := policy.RetentionInProgress
		switch row.State {
		case store.ImageGood:
			st = policy.RetentionGood
			goodLeft++
		case store.ImageFailed:
			st = policy.RetentionFailed
		case store.ImageDeleting, store.ImageKeptProtected:
			continue // decided already; reported below
		}
		key := retentionKey(row)
		byKey[key] = i
		input = append(input, policy.RetentionImage{ID: key, Time: row.Slot, Status: st, FailReason: row.Reason,
			RequestedAt: row.RequestedAt, FailedAt: row.FailedAt, LateUntil: row.LateUntil, WaitTimeout: wait})
	}
	decisions := policy.Retain(input, ret, loc, pr.now)
	minKeep := max(ret.MinKeep, 1)
	items = make([]PruneItem, 0, len(rows))
	for _, d := range decisions {
		ri := byKey[d.ImageID]
		row := rows[ri]
		it := pr.item(row)
		it.Keep, it.Reasons = d.Keep, d.Reasons
		switch {
		case d.Keep:
			it.Action = PruneKeep
		case gone && ret.WhenServerGone != policy.ServerGoneApply:
			it.Keep, it.Action = true, PruneKeep
			it.Reasons = append(it.Reasons[:len(it.Reasons):len(it.Reasons)], ReasonServerGone)
		case row.Owner != pr.st.Owner():
			// A row written by another installation sharing this database file.
			it.Action = PruneRefused
			it.Reasons = append(it.Reasons[:len(it.Reasons):len(it.Reasons)],
				fmt.Sprintf("refused: lineage row of installation %s, not %s", row.Owner, pr.st.Owner()))
		case row.State == store.ImageGood && goodLeft-1 < minKeep:
			// Retain never asks for this; the guard rail stands on its own anyway.
			it.Action = PruneRefused
			it.Reasons = append(it.Reasons[:len(it.Reasons):len(it.Reasons)],
				fmt.Sprintf("refused: would leave fewer than min_keep %d good images", minKeep))
		default:
			if row.State == store.ImageGood {
				goodLeft--
			}
			cands = append(cands, candRef{row: ri, item: len(items)})
		}
		items = append(items, it)
	}
	for ri, row := range rows {
		switch row.State {
		case store.ImageDeleting:
			it := pr.item(row)
			it.Reasons = []string{row.DeleteReason}
			it.NextAttempt = row.NextAttemptAt
			if !row.NextAttemptAt.After(pr.now) {
				cands = append(cands, candRef{row: ri, item: len(items)})
			} else {
				it.Action = PrunePending
			}
			items = append(items, it)
		case store.ImageKeptProtected:
			it := pr.item(row)
			it.Keep, it.Action, it.NextAttempt = true, PruneProtected, row.NextAttemptAt
			it.Reasons = []string{"protected in Glance"}
			items = append(items, it)
		}
	}
	// rows come newest first and so do the decisions; only the journal's rows
	// (deleting, kept_protected), listed last, may need to move. Sorting would
	// invalidate the candidates' item indexes: re-point them.
	if pr.opts.Full && !slices.IsSortedFunc(items, func(a, b PruneItem) int { return b.Slot.Compare(a.Slot) }) {
		perm := make([]int, len(items))
		for i := range perm {
			perm[i] = i
		}
		slices.SortStableFunc(perm, func(a, b int) int { return items[b].Slot.Compare(items[a].Slot) })
		sorted := make([]PruneItem, len(items))
		where := make([]int, len(items))
		for to, from := range perm {
			sorted[to] = items[from]
			where[from] = to
		}
		for i := range cands {
			cands[i].item = where[cands[i].item]
		}
		items = sorted
	}
	return items, cands
}

// retentionKey identifies a row to Retain: its row id (an intent without an image
// id has nothing else).
func retentionKey(row store.LineageRow) string {
	return strconv.FormatInt(row.Row, 10)
}

func (pr *pruner) item(row store.LineageRow) PruneItem {
	return PruneItem{ImageRow: row.Row, ImageID: row.ImageID, Name: row.Name, ServerID: row.ServerID,
		ServerName: row.ServerName, Slot: row.Slot, Age: pr.now.Sub(row.Slot), State: row.State}
}

// inspection is what Glance says about an image to delete before anything changes.
type inspection struct {
	img cloud.Image
	// gone: Glance no longer has the image, or none was ever made.
	gone bool
	// protected: Glance would refuse the delete; the image is kept.
	protected bool
	// refuse says why a guard rail refuses the deletion ("" when none does).
	refuse string
	// retry says why Glance could not be asked; the deletion waits for a later prune.
	retry string
}

// reasonProtected is the reason of an image kept because Glance protects it.
const reasonProtected = "image is protected in Glance"

// inspect reads what the plan needs to know of a candidate's image: whether it is
// there, protected, and stamped for this very row. It changes nothing.
func (pr *pruner) inspect(ctx context.Context, row store.LineageRow) inspection {
	if row.ImageID == "" {
		if row.State != store.ImageFailed {
			return inspection{gone: true}
		}
		// An intent whose outcome was never learned: an image with our stamp may
		// exist. Leave the row to reconcile's adoption rather than lose track of it.
		found, err := pr.cl.ListImages(ctx, cloud.Stamp{Owner: pr.st.Owner(), Policy: row.Policy, Server: row.ServerID,
			Slot: StampSlot(row.Slot)}.Properties())
		switch {
		case err != nil:
			return inspection{retry: "look for a stamped image: " + cloud.Reason(err)}
		case len(found) > 0:
			return inspection{refuse: fmt.Sprintf("image %s carries this row's stamp but the row has no id: adopt it with reconcile --fix", found[0].ID)}
		}
		return inspection{gone: true}
	}
	img, err := pr.cl.GetImage(ctx, row.ImageID)
	switch {
	case errors.Is(err, cloud.ErrNotFound):
		return inspection{gone: true}
	case err != nil:
		return inspection{retry: "read image: " + cloud.Reason(err)}
	}
	// Guard rail: the image in Glance must carry our stamp for this very row.
	if why := pr.stampMismatch(row, img); why != "" {
		return inspection{img: img, refuse: why}
	}
	if stillMaking(row, img) {
		return inspection{img: img, retry: fmt.Sprintf("Glance still shows the image %s: it may yet complete", img.Status)}
	}
	return inspection{img: img, protected: img.Protected}
}

// inspectAll inspects the candidates, as many at once as the Runner has workers.
func (pr *pruner) inspectAll(ctx context.Context, cands []candidate) {
	var wg sync.WaitGroup
	for i := range cands {
		release, err := pr.r.AcquireWorker(ctx, pr.p.Name)
		if err != nil {
			// ctx ended: nothing is deleted, the rest waits for a later prune.
			for j := i; j < len(cands); j++ {
				cands[j].insp = inspection{retry: "stopped: " + err.Error()}
			}
			break
		}
		wg.Add(1)
		go func(c *candidate) {
			defer wg.Done()
			defer release()
			c.insp = pr.inspect(ctx, c.row)
		}(&cands[i])
	}
	wg.Wait()
}

// planAction sets the planned action of a candidate's item from its inspection:
// what the dry run shows and the real run starts from.
func (pr *pruner) planAction(it *PruneItem, c candidate, resumed bool) {
	switch {
	case c.insp.refuse != "":
		it.Action = PruneRefused
		it.Reasons = append(it.Reasons, "refused: "+c.insp.refuse)
	case c.insp.protected:
		it.Keep, it.Action = true, PruneProtected
		it.Reasons = append(it.Reasons, "kept: "+reasonProtected)
	case c.insp.retry != "":
		it.Action = PrunePending
		if resumed {
			it.Reasons = append(it.Reasons, c.insp.retry)
		} else {
			// Nothing was started: the next prune decides again.
			it.Reasons = append(it.Reasons, "not started: "+c.insp.retry)
		}
	case resumed || !pr.opts.DryRun:
		// An open journal resumes; a new deletion is pending until the journal says
		// otherwise (a prune stopped before it got there).
		it.Action = PrunePending
	default:
		it.Action = PruneDelete
	}
}

// execute carries out the plan: the journal of each candidate, bounded by the
// Runner's worker slots.
func (pr *pruner) execute(ctx context.Context, rep *PruneReport, cands []candidate) {
	var wg sync.WaitGroup
	for _, c := range cands {
		release, err := pr.r.AcquireWorker(ctx, pr.p.Name)
		if err != nil {
			break // ctx ended: the rest stays as it is and resumes next time
		}
		wg.Add(1)
		go func(c candidate) {
			defer wg.Done()
			defer release()
			// Each goroutine writes only its own item.
			pr.journal(ctx, &rep.Items[c.idx], c)
		}(c)
	}
	wg.Wait()
}

// recheckProtected looks again at a kept_protected image whose recheck is due.
func (pr *pruner) recheckProtected(ctx context.Context, row store.LineageRow) store.LineageRow {
	log := pr.log.With("server_id", row.ServerID, "server_name", row.ServerName, "image_id", row.ImageID, "image_name", row.Name)
	img, err := pr.cl.GetImage(ctx, row.ImageID)
	var msg string
	switch {
	case errors.Is(err, cloud.ErrNotFound):
		// Gone: never good again (it would count towards min_keep and the keep rules
		// in place of a real backup). Failed, the journal cleans its snapshots.
		im, err := pr.st.MarkGone(context.WithoutCancel(ctx), row.Row,
			"protected image is gone from Glance (found at its recheck): no longer a backup")
		if err != nil {
			log.Warn("record protected image gone", "err", err)
			return row
		}
		log.Info("protected image gone from Glance")
		row.State, row.Reason, row.FailedAt, row.NextAttemptAt = im.State, im.Reason, im.FailedAt, time.Time{}
		return row
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

// planAndJournal plans and carries out the deletion of one row outside a prune
// (reconcile cleaning up after an image gone from the cloud).
func (pr *pruner) planAndJournal(ctx context.Context, it *PruneItem, row store.LineageRow) {
	c := candidate{row: row, it: *it, insp: pr.inspect(ctx, row)}
	pr.planAction(it, c, row.State == store.ImageDeleting)
	pr.journal(ctx, it, c)
}

// journal deletes one image through the journal, from wherever a previous attempt
// left it, and records the outcome in it.
func (pr *pruner) journal(ctx context.Context, it *PruneItem, c candidate) {
	row := c.row
	log := pr.log.With("server_id", row.ServerID, "server_name", row.ServerName, "image_id", row.ImageID, "image_name", row.Name)
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
		log.Warn("delete image", "err", err)
		it.Action = PrunePending
		it.Reasons = append(it.Reasons, "error: "+err.Error())
	}
}

// deleteImage carries out the plan for one image from wherever a previous attempt
// left it; reason is retention's, recorded when the journal opens.
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
		if insp.protected {
			return pr.recordProtected(ctx, it, row, reasonProtected, log)
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

// stillMaking reports an image of a failed row that Glance still shows being
// made: the failure was a verdict of our clock, not of the cloud, and the image may
// yet become a complete backup. Retention never deletes it then.
func stillMaking(row store.LineageRow, img cloud.Image) bool {
	return row.State == store.ImageFailed && (img.Status == cloud.ImageQueued || img.Status == cloud.ImageSaving)
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

// recordRefusal records a refusal the item already shows. A row already deleting is
// deferred with a long wait (someone must look at it); any other row is left as it
// is.
func (pr *pruner) recordRefusal(ctx context.Context, it *PruneItem, row store.LineageRow, why string, log *slog.Logger) error {
	bctx := context.WithoutCancel(ctx)
	log.Warn("deletion refused", "reason", why)
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

// protected records an image Glance refused to delete (found while deleting).
func (pr *pruner) protected(ctx context.Context, it *PruneItem, row store.LineageRow, why string, log *slog.Logger) error {
	it.Keep, it.Action = true, PruneProtected
	it.Reasons = append(it.Reasons, "kept: "+why)
	return pr.recordProtected(ctx, it, row, why, log)
}

// recordProtected keeps a protected image, which the item already shows, and
// schedules its recheck.
func (pr *pruner) recordProtected(ctx context.Context, it *PruneItem, row store.LineageRow, why string, log *slog.Logger) error {
	pr.r.metrics.ImageDeleted(pr.p.Name, DeleteProtected)
	next := pr.now.Add(ProtectedRecheck)
	if _, err := pr.st.KeepProtected(context.WithoutCancel(ctx), row.Row, why, next); err != nil {
		return err
	}
	log.Info("image kept: protected", "reason", why)
	it.Keep, it.Action, it.NextAttempt = true, PruneProtected, next
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

// deleteSnapshots deletes every snapshot of an image whose Glance image is gone and
// waits (up to SnapshotWait) for each to be gone. It returns how many are not gone
// yet and the earliest moment to look at them again.
func (pr *pruner) deleteSnapshots(ctx context.Context, it *PruneItem, row store.LineageRow, snaps []store.Snapshot) (pending int, next time.Time, err error) {
	bctx := context.WithoutCancel(ctx)
	log := pr.log.With("server_id", row.ServerID, "server_name", row.ServerName, "image_id", row.ImageID, "image_name", row.Name)
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
		interval = nextPoll(interval, pr.r.opts.MaxPollInterval)
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
