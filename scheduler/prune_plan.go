package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// The plan stage of a prune: read the lineage and the servers, decide per server
// with the policy's rules, cap the deletions, and ask Glance about each image to
// delete. Nothing here deletes anything.

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
// bounded by it (each of the pruneReaders holds two batches: 128 servers of 100
// rows is 4 MB of rows).
const pruneBatch = 128

var pruneStates = []store.ImageState{store.ImageRequested, store.ImageCreating, store.ImageGood, store.ImageFailed,
	store.ImageDeleting, store.ImageKeptProtected}

// prunePlan is what one prune decided for one policy before anything changes: the
// report with each image's planned action (retention's rules, when_server_gone, the
// guard rails, the max_deletions_per_run cap, and what Glance says of each image to
// delete: protected, foreign, still being made), and the candidates that the real
// run carries out. The dry run prints it; the real run executes it; so the two
// cannot disagree.
type prunePlan struct {
	rep *PruneReport
	// cands are the images to delete or to resume deleting, in the order the
	// journal takes them; each points at its item in rep.
	cands []candidate
	// counted holds the actions of images not listed in rep.Items (a report that is
	// not Full lists only the images something happens to).
	counted map[PruneAction]int
}

// plan decides, for every image of the policy, what the prune does with it. Its
// only writes are the recheck of protected images that are due (real run only):
// the plan then decides about them as they are now.
func (pr *pruner) plan(ctx context.Context) (*prunePlan, error) {
	rep := &PruneReport{Policy: pr.p.Name, DryRun: pr.opts.DryRun, Started: pr.now, Counts: map[PruneAction]int{}}
	serverIDs, err := pr.st.LineageServers(ctx, pr.p.Name)
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	if len(serverIDs) > 0 {
		// Inside a worker slot, like a backup run's listing.
		release, err := pr.sh.AcquireWorker(ctx, pr.p.Name)
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
	limit := deletionLimit(pr.p.Retention)
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
	batches, stop := pr.readBatches(ctx, serverIDs)
	defer stop()
	for rb := range batches {
		if rb.err != nil {
			return nil, rb.err
		}
		rows := rb.rows
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
			var count map[PruneAction]int
			if !pr.opts.Full {
				count = counted
			}
			items, cands := pr.decideServer(srows, gone, count)
			base := len(rep.Items)
			for _, it := range items {
				if pr.opts.Full || it.Action != "" {
					rep.Items = append(rep.Items, it)
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
				c := candidate{row: *row, idx: idx}
				if ref.item >= 0 {
					c.it = items[ref.item]
				} else {
					// ref.reasons is the retainer's, valid for this server only.
					c.it = pr.candidateItem(*row, slices.Clone(ref.reasons))
				}
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
		rb.done()
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

	cands := append(resume, fresh...)
	if !pr.opts.Full {
		if err := pr.completeShown(ctx, rep.Items, cands); err != nil {
			return nil, err
		}
	}
	// The plan's last input is what Glance says about each image to delete: a
	// protected image is kept and a foreign stamp refused, in the dry run exactly as
	// in the real one, which then carries out this very plan.
	pr.inspectAll(ctx, cands)
	for i := range cands {
		pr.planAction(&rep.Items[cands[i].idx], cands[i], i < len(resume))
	}
	return &prunePlan{rep: rep, cands: cands, counted: counted}, nil
}

// rowBatch is the lineage rows of a batch of servers, grouped by server, or the
// error reading them. done hands the rows back for reuse.
type rowBatch struct {
	rows []store.LineageRow
	err  error
	done func()
}

// pruneReaders is how many lineage queries a plan runs at once, each on its own
// connection of the store's read pool. SQLite's walk of the index is most of a
// plan's CPU and runs on one core per query: two readers and the deciding goroutine
// keep two cores busy.
const pruneReaders = 2

// readBatches reads the policy's rows pruneBatch servers at a time on pruneReaders
// connections (batch i on reader i mod pruneReaders), ahead of the caller: the
// store walks the next batches while the plan decides this one. The caller gets
// the batches in server order, as one reader would give them. Each reader has two
// row buffers that go round; memory stays bounded by them. The channel closes after
// the last batch or the first error; stop ends the reading early and returns once
// every reader has.
func (pr *pruner) readBatches(ctx context.Context, serverIDs []string) (<-chan rowBatch, func()) {
	ctx, cancel := context.WithCancel(ctx)
	n := (len(serverIDs) + pruneBatch - 1) / pruneBatch
	// A buffer's first batch sizes it for the next: rows per server so far times a
	// batch (growing 4 MB buffers by appending copied them over and over).
	var rowsRead, serversRead atomic.Int64
	// A pooled buffer from an earlier plan is replaced likewise when it is smaller.
	sized := func(rows []store.LineageRow) []store.LineageRow {
		if s := serversRead.Load(); s > 0 {
			if want := rowsRead.Load()*pruneBatch/s + pruneBatch; int64(cap(rows)) < want {
				return make([]store.LineageRow, 0, want+want/8)
			}
		}
		return rows[:0]
	}
	lanes := make([]chan rowBatch, pruneReaders)
	frees := make([]chan []store.LineageRow, pruneReaders)
	var wg sync.WaitGroup
	for k := range lanes {
		lane := make(chan rowBatch, 1)
		lanes[k] = lane
		free := make(chan []store.LineageRow, 2)
		free <- pooledRows()
		free <- pooledRows()
		frees[k] = free
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(lane)
			for i := k; i < n; i += pruneReaders {
				batch := serverIDs[i*pruneBatch : min((i+1)*pruneBatch, len(serverIDs))]
				var rows []store.LineageRow
				select {
				case rows = <-free:
				case <-ctx.Done():
					return
				}
				var err error
				if pr.opts.Full {
					rows, err = pr.st.AppendLineage(ctx, sized(rows), pr.p.Name, batch, pruneStates)
				} else {
					// Only the rows something happens to are shown: read what retention
					// needs, packed, and the names of the shown rows afterwards.
					rows, err = pr.st.AppendRetentionRows(ctx, sized(rows), pr.p.Name, batch)
				}
				rowsRead.Add(int64(len(rows)))
				serversRead.Add(int64(len(batch)))
				select {
				case lane <- rowBatch{rows: rows, err: err, done: func() { free <- rows }}:
				case <-ctx.Done():
					return
				}
				if err != nil {
					return
				}
			}
		}()
	}
	out := make(chan rowBatch)
	go func() {
		defer close(out)
		for i := range n {
			var rb rowBatch
			var ok bool
			select {
			case rb, ok = <-lanes[i%pruneReaders]:
			case <-ctx.Done():
				return
			}
			if !ok {
				return // the lane's reader stopped
			}
			select {
			case out <- rb:
			case <-ctx.Done():
				return
			}
			if rb.err != nil {
				return
			}
		}
	}()
	return out, func() {
		cancel()
		for range out { // wait for the merge
		}
		wg.Wait() // and for the readers: they may be in a query
		// The buffers handed back go to the next plan; one still held by the caller
		// (an error cut the loop short) is left to the collector.
		for _, free := range frees {
			for len(free) > 0 {
				putRows(<-free)
			}
		}
	}
}

// rowBuffers holds row buffers (*[]store.LineageRow) from one plan to the next: a
// plan over a million rows would otherwise allocate and grow four 4 MB buffers
// every time.
var rowBuffers sync.Pool

// pooledRows returns an empty row buffer from rowBuffers, or nil.
func pooledRows() []store.LineageRow {
	if p, ok := rowBuffers.Get().(*[]store.LineageRow); ok {
		return (*p)[:0]
	}
	return nil
}

// putRows gives rows to rowBuffers, cleared so that the pool keeps no row's
// strings (and the query results they are cut from) alive.
func putRows(rows []store.LineageRow) {
	if cap(rows) == 0 {
		return
	}
	rows = rows[:cap(rows)]
	clear(rows)
	rows = rows[:0]
	rowBuffers.Put(&rows)
}

// deletionLimit is the max_deletions_per_run cap of a retention: new deletions
// beyond it, the youngest first, wait for a later prune. The prune and the
// simulation both cap with it.
func deletionLimit(ret policy.Retention) int {
	if ret.MaxDeletionsPerRun <= 0 {
		return policy.DefaultMaxDeletionsPerRun
	}
	return ret.MaxDeletionsPerRun
}

// retainServer is a policy's verdict on one server's images: Retain, then the
// when_server_gone rule (keep: every image of a server that is gone or no longer
// selected stays). The prune and the simulation both decide with it.
//
// rt is the scratch Retain decides with (nil: fresh memory); the decisions are
// valid until its next use.
func retainServer(rt *policy.Retainer, images []policy.RetentionImage, ret policy.Retention, loc *time.Location,
	now time.Time, gone bool) []policy.Decision {
	ds := rt.Retain(images, ret, loc, now)
	if gone && ret.WhenServerGone != policy.ServerGoneApply {
		for i := range ds {
			if !ds[i].Keep {
				ds[i].Keep = true
				ds[i].Reasons = append(ds[i].Reasons[:len(ds[i].Reasons):len(ds[i].Reasons)], ReasonServerGone)
			}
		}
	}
	return ds
}

// completeShown fills in what the packed rows (AppendRetentionRows) leave out, for
// the rows shown only: one lookup for them. Every item gets its image and server
// names, and its image id when the packed row had none (a plain good row); every
// candidate (each is shown) gets its row in full, which the inspection and the
// journal read (the image id, the names for the log).
func (pr *pruner) completeShown(ctx context.Context, items []PruneItem, cands []candidate) error {
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
			if items[i].ImageID == "" {
				items[i].ImageID = row.ImageID
			}
		}
	}
	for i := range cands {
		full := byRow[cands[i].row.Row]
		switch {
		case full == nil:
		case cands[i].row.State == store.ImageGood && cands[i].row.ImageID == "":
			// A plain good row: the packed form was its slot and state.
			cands[i].row = *full
		default:
			cands[i].row.Name, cands[i].row.ServerName = full.Name, full.ServerName
			cands[i].row.VolumeBacked, cands[i].row.ActiveAt = full.VolumeBacked, full.ActiveAt
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

// candRef points at a candidate in decideServer's input rows and output items;
// item is -1 when decideServer made no item for it (a report that lists only what
// happens: the caller makes one, with candidateItem, for a candidate it keeps).
type candRef struct {
	row, item int
	// reasons are retention's reasons to delete a new deletion.
	reasons []string
}

// candidateItem is the report item of a candidate: a new deletion with retention's
// reasons, or an open journal with its delete reason. Its action is set once the
// plan is complete.
func (pr *pruner) candidateItem(row store.LineageRow, reasons []string) PruneItem {
	it := pr.item(row)
	if row.State == store.ImageDeleting {
		it.Reasons = []string{row.DeleteReason}
		it.NextAttempt = row.NextAttemptAt
		return it
	}
	it.Reasons = reasons
	return it
}

// decideServer applies retention to one server's rows (newest first). It returns
// the report items (newest first; candidates have no Action yet) and the candidates:
// new deletions and open journals whose next attempt is due. With count (a report
// that lists only what happens), a kept or protected image gets no item (its action
// is counted there instead) and neither does a candidate (the caller makes one for
// a candidate that is not deferred): a million rows cost items only for the few
// shown. The candidates returned are valid until the next call.
func (pr *pruner) decideServer(rows []store.LineageRow, gone bool, count map[PruneAction]int) (items []PruneItem, cands []candRef) {
	ret := pr.p.Retention
	wait := pr.sh.waitTimeout(pr.p)
	input := pr.retainIn[:0]
	defer func() { pr.retainIn = input[:0] }()
	cands = pr.candBuf[:0]
	defer func() { pr.candBuf = cands[:0] }()
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
		input = append(input, policy.RetentionImage{ID: retentionKey(i), Time: row.Slot, Status: st, FailReason: row.Reason,
			RequestedAt: row.RequestedAt, FailedAt: row.FailedAt, LateUntil: row.LateUntil, WaitTimeout: wait})
	}
	decisions := retainServer(&pr.retainer, input, ret, pr.p.Location(), pr.now, gone)
	minKeep := max(ret.MinKeep, 1)
	if count == nil {
		items = make([]PruneItem, 0, len(rows))
	}
	for _, d := range decisions {
		ri, err := strconv.Atoi(d.ImageID)
		if err != nil || ri < 0 || ri >= len(rows) {
			panic(fmt.Sprintf("retention decided on an image it was not given: %q", d.ImageID))
		}
		if d.Keep && count != nil {
			count[PruneKeep]++
			continue
		}
		row := &rows[ri]
		var refused string
		switch {
		case d.Keep:
		case row.Owner != pr.st.Owner():
			// A row written by another installation sharing this database file.
			refused = fmt.Sprintf("refused: lineage row of installation %s, not %s", row.Owner, pr.st.Owner())
		case row.State == store.ImageGood && goodLeft-1 < minKeep:
			// Retain never asks for this; the guard rail stands on its own anyway.
			refused = fmt.Sprintf("refused: would leave fewer than min_keep %d good images", minKeep)
		default:
			if row.State == store.ImageGood {
				goodLeft--
			}
			ref := candRef{row: ri, item: -1, reasons: d.Reasons}
			if count == nil {
				ref.item = len(items)
				items = append(items, pr.candidateItem(*row, slices.Clone(d.Reasons)))
			}
			cands = append(cands, ref)
			continue
		}
		it := pr.item(*row)
		it.Keep, it.Reasons, it.Action = d.Keep, slices.Clone(d.Reasons), PruneKeep
		if refused != "" {
			it.Action = PruneRefused
			it.Reasons = append(it.Reasons[:len(it.Reasons):len(it.Reasons)], refused)
		}
		items = append(items, it)
	}
	for ri, row := range rows {
		switch row.State {
		case store.ImageDeleting:
			due := !row.NextAttemptAt.After(pr.now)
			if due && count != nil {
				cands = append(cands, candRef{row: ri, item: -1})
				continue
			}
			it := pr.candidateItem(row, nil)
			if due {
				cands = append(cands, candRef{row: ri, item: len(items)})
			} else {
				it.Action = PrunePending
			}
			items = append(items, it)
		case store.ImageKeptProtected:
			if count != nil {
				count[PruneProtected]++
				continue
			}
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

// retentionKey identifies a row to Retain: its index among the server's rows (an
// intent without an image id has nothing else), which maps Retain's decisions back
// without a map. Slots are unique per server, so Retain, which orders by time and
// then by ID, never compares two keys.
func retentionKey(i int) string {
	return strconv.Itoa(i)
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

// inspectAll inspects the candidates, as many at once as Shared has workers.
func (pr *pruner) inspectAll(ctx context.Context, cands []candidate) {
	var wg sync.WaitGroup
	for i := range cands {
		release, err := pr.sh.AcquireWorker(ctx, pr.p.Name)
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
