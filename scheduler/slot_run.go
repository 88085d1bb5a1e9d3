package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// slotRun is one slot run in progress: the state of one call of RunSlot.
type slotRun struct {
	sh *Shared
	// opts are the Runner's options (progress, busy retries, test hooks); w its
	// waiter.
	opts RunnerOptions
	w    *waiter
	// cfgVersion and p are all a run keeps of the config it started under: the lineage
	// records the version, and the policy says what to image. Nothing after the run
	// (retention) may act on them.
	cfgVersion string
	p          *policy.Policy
	slot       time.Time // UTC, whole seconds
	trigger    Trigger
	call       RunSlotOptions
	slotID     int64
	runID      string
	cloud      limitedCloud
	calls      *callCounter
	log        *slog.Logger
	timeout    time.Duration

	mu       sync.Mutex
	results  map[string]*ServerResult
	existing map[string]bool
	claimed  []int64 // row ids
	done     int
	total    int
	// left lists the servers with good images that left the selection in this slot.
	left []string
}

// execute selects the servers, makes the images and waits for them. It reads the
// slot instant's inventory and the slot's existing rows once, then starts each
// server's imageServer: in spread-offset order on at most Concurrency goroutines
// that sleep until each server is due, or, without a spread, one goroutine per
// server once the run holds a worker slot for it. A busy server is retried on a
// goroutine of its own that holds no worker slot while it backs off. The rows that
// need waiting are waited for in one batch (one stamp listing per poll round);
// when the run stops early they are reported waiting. The error is the first
// that stopped a server's work, test crash points aside.
func (sr *slotRun) execute(ctx context.Context) error {
	sh, p := sr.sh, sr.p
	sel := CloudSelector(p.Select)
	// One listing of every server serves every run of this slot instant (see
	// inventory); it takes a worker slot like any other call.
	servers, err := sh.inventory.servers(ctx, sr.slot, sh.now(), sh.listAll(sr.cloud, p.Name))
	var selected []cloud.Server
	if err == nil {
		selected, err = selectServers(servers, sel)
	}
	if err != nil {
		sr.recordEvent(ctx, store.Event{Kind: "list_failed", Message: "list servers: " + cloud.Reason(err)})
		return err // the cloud's error names the call: "list servers: ..."
	}
	if len(sr.call.Servers) > 0 {
		only := selected[:0:0]
		for _, s := range selected {
			if slices.Contains(sr.call.Servers, s.ID) {
				only = append(only, s)
			}
		}
		selected = only
	}
	sort.Slice(selected, func(i, j int) bool { return selected[i].ID < selected[j].ID })
	sr.total = len(selected)
	sh.metrics.ServersSelected(p.Name, len(selected))
	sh.metrics.SelectionEmpty(p.Name, sr.slot, len(selected) == 0)
	if len(selected) == 0 {
		sr.log.Warn("the policy selected no server: this slot protects nothing; check its select: and the servers' tags",
			"select", DescribeSelector(sel))
	}
	sr.noteLeavers(ctx, selected)
	sr.reportStart(ServerResult{})

	existing, err := sh.store.Images(ctx, store.ImageFilter{Policy: p.Name, Slot: sr.slot})
	if err != nil {
		return err
	}
	rows := map[string]store.Image{}
	for _, im := range existing {
		rows[im.ServerID] = im
	}

	defer func() {
		sr.mu.Lock()
		claimed := sr.claimed
		sr.mu.Unlock()
		sh.unclaimRows(claimed)
	}()
	// Servers in the order they may start: by their offset in the spread window
	// (none without a spread), then by id.
	order := selected
	if sr.trigger != TriggerManual && p.Schedule != nil && p.Schedule.Spread > 0 {
		order = slices.Clone(selected)
		slices.SortStableFunc(order, func(a, b cloud.Server) int {
			return cmp.Compare(spreadOffset(p.Name, a.ID, p.Schedule.Spread), spreadOffset(p.Name, b.ID, p.Schedule.Spread))
		})
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var toWait []waitRow
	var firstErr error
	record := func(im store.Image, wait bool, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil && firstErr == nil && !errors.Is(err, errAbandoned) {
			firstErr = err
		}
		if wait {
			// Only what the wait reads: a full store.Image per image in flight (its
			// decoded metadata was a third of the live heap at 10,000 servers) grew
			// the heap with every image.
			toWait = append(toWait, waitRowOf(im))
		}
	}
	do := func(s cloud.Server, held bool) {
		row, has := rows[s.ID]
		im, wait, err := sr.imageServer(ctx, s, row, has, held)
		if busy := (busyError{}); errors.As(err, &busy) {
			// Looked at again later, on a goroutine of its own: its backoff must
			// not hold a worker slot (the retry takes one when it calls again).
			wg.Add(1)
			go func() {
				defer wg.Done()
				record(sr.retryBusy(ctx, s, busy))
			}()
			return
		}
		record(im, wait, err)
	}
	if sr.trigger != TriggerManual && p.Schedule != nil && p.Schedule.Spread > 0 {
		// Servers start at their offsets: at most Concurrency goroutines take them
		// in offset order, each sleeping until its server is due.
		var next atomic.Int64
		for range min(sh.workers.capacity(), len(order)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < len(order); i = int(next.Add(1)) - 1 {
					do(order[i], false)
				}
			}()
		}
	} else {
		// The run takes a worker slot (fairly, between the policies due) before it
		// starts a server's goroutine: a run waiting for slots is one goroutine, not
		// one per server (10,086 goroutines, 85 MB of stacks, at 10,000 servers) nor
		// Concurrency per run (1,600 idle goroutines with grown stacks at 100
		// policies).
		for _, s := range order {
			release, err := sh.workers.acquire(ctx, p.Name)
			if err != nil {
				mu.Lock()
				firstErr = cmp.Or(firstErr, err)
				mu.Unlock()
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer release()
				do(s, true)
			}()
		}
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		sr.markWaiting(toWait)
		return err
	}
	if len(toWait) > 0 {
		if err := sr.w.wait(ctx, sr.waitScope(), toWait); err != nil {
			sr.markWaiting(toWait)
			return err
		}
	}
	return firstErr
}

// noteLeavers reports, once, every server that has good images of the policy, was
// selected by the policy's previous slot and is not selected now: a retagged or
// moved server silently stops being backed up otherwise. The next slot compares
// with this one, where the server is no longer live, so it is not said again.
func (sr *slotRun) noteLeavers(ctx context.Context, selected []cloud.Server) {
	sh, p := sr.sh, sr.p
	recent, err := sh.store.Slots(ctx, store.SlotFilter{Policy: p.Name, Limit: 20})
	if err != nil {
		sr.log.Warn("look for servers that left the selection", LogKeyErr, err)
		return
	}
	prevEmpty := true
	for _, sl := range recent {
		if sl.Slot.Equal(sr.slot) {
			continue
		}
		if sl.Outcome == store.OutcomeRan || sl.Outcome == store.OutcomeCaughtUp || sl.Outcome == store.OutcomeEmpty ||
			(sl.Outcome == store.OutcomeFailed && sl.Counts.Selected > 0) {
			prevEmpty = sl.Outcome == store.OutcomeEmpty
			break
		}
	}
	if prevEmpty {
		return // no previous selection, or it was empty and said so
	}
	live, err := sh.store.NewestGoodPerServer(ctx, p.Name)
	if err != nil {
		sr.log.Warn("look for servers that left the selection", LogKeyErr, err)
		return
	}
	now := make(map[string]bool, len(selected))
	for _, s := range selected {
		now[s.ID] = true
	}
	for _, rp := range live {
		if rp.NewestGood.IsZero() || now[rp.ServerID] {
			continue
		}
		sr.left = append(sr.left, rp.ServerID)
		msg := "server " + rp.ServerID + " has good images but is no longer selected (select: " +
			DescribeSelector(CloudSelector(p.Select)) + "); it gets no new images; newest good image requested " +
			rp.NewestGood.UTC().Format(time.RFC3339)
		sr.log.Warn("a server with good images left the policy's selection", LogKeyServerID, rp.ServerID,
			"newest_good", rp.NewestGood.UTC().Format(time.RFC3339), "select", DescribeSelector(CloudSelector(p.Select)))
		sr.recordEvent(ctx, store.Event{Kind: store.EventServerLeft, ServerID: rp.ServerID, Message: msg})
	}
}

// render makes the image name and metadata of server s, stamp included.
func (sr *slotRun) render(s cloud.Server) (string, map[string]string, error) {
	p := sr.p
	loc := p.Location()
	name, meta, err := p.Image.Render(policy.TemplateData{
		Server: policy.ServerInfo{ID: s.ID, Name: s.Name, AZ: s.AvailabilityZone, Tags: s.Tags, Metadata: s.Metadata},
		Policy: policy.PolicyInfo{Name: p.Name},
		Slot:   sr.slot.In(loc),
		Now:    sr.sh.now().In(loc),
		RunID:  sr.runID,
	})
	if err != nil {
		return "", nil, fmt.Errorf("render image name and metadata: %w", err)
	}
	if meta == nil {
		meta = map[string]string{}
	}
	stamp := cloud.Stamp{Owner: sr.sh.store.Owner(), Policy: p.Name, Server: s.ID, Slot: StampSlot(sr.slot)}
	for k, v := range stamp.Properties() {
		meta[k] = v
	}
	return name, meta, nil
}

// skip records a server that is not imaged, with its reason.
func (sr *slotRun) skip(ctx context.Context, s cloud.Server, res ServerResult, reason, detail string) error {
	sr.recordEvent(ctx, store.Event{Kind: store.EventServerSkipped, ServerID: s.ID, Message: reason + ": " + detail})
	sr.sh.metrics.ServerSkipped(sr.p.Name, reason)
	sr.log.Info("server skipped", LogKeyServerID, s.ID, LogKeyServerName, s.Name, LogKeyReason, reason, LogKeyDetail, detail)
	res.Outcome, res.Reason = ServerSkipped, reason
	sr.finish(res)
	return nil
}

// failRow marks a row failed and reports the server failed.
func (sr *slotRun) failRow(ctx context.Context, row store.Image, res ServerResult, reason string) error {
	im, err := sr.sh.store.MarkFailed(ctx, row.Row, reason)
	if err != nil {
		return err
	}
	sr.sh.metrics.ImageCreated(sr.p.Name, CreateFailed, 0)
	sr.log.Warn("image failed", LogKeyServerID, row.ServerID, LogKeyServerName, row.ServerName, LogKeyImageID, row.ImageID, LogKeyImageName, row.Name, LogKeyReason, reason)
	res.Outcome, res.Reason, res.ImageRow, res.ImageID = ServerFailed, reason, im.Row, im.ImageID
	sr.finish(res)
	return nil
}

// recordEvent appends an audit event about this run's slot.
func (sr *slotRun) recordEvent(ctx context.Context, e store.Event) {
	e.Policy, e.Slot, e.SlotID = sr.p.Name, sr.slot, sr.slotID
	if _, err := sr.sh.store.AddEvent(context.WithoutCancel(ctx), e); err != nil {
		sr.log.Error("record event", "kind", e.Kind, LogKeyErr, err)
	}
}

// claim takes a row for this run, so that a resumed wait of the same process
// leaves it alone; false if that wait has it.
func (sr *slotRun) claim(row store.Image) bool {
	sr.mu.Lock()
	for _, c := range sr.claimed {
		if c == row.Row {
			// Ours already: a busy server's intent dropped and written again may get
			// the same row id back.
			sr.mu.Unlock()
			return true
		}
	}
	sr.mu.Unlock()
	if len(sr.sh.claim([]store.Image{row})) == 0 {
		return false
	}
	sr.mu.Lock()
	// The row id is all unclaim needs: not a copy of every field and of the decoded
	// metadata per server for the whole run (3.7-4.8 MB of live heap at 10,000 servers).
	sr.claimed = append(sr.claimed, row.Row)
	sr.mu.Unlock()
	return true
}

// finish records a server's final result and reports progress.
func (sr *slotRun) finish(res ServerResult) {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	if _, dup := sr.results[res.ServerID]; dup {
		return
	}
	if sr.existing[res.ServerID] {
		res.Existing = true
	}
	cp := res
	sr.results[res.ServerID] = &cp
	sr.done++
	sr.report(res)
}

// report calls the progress callbacks; sr.mu is held.
func (sr *slotRun) report(res ServerResult) {
	e := ProgressEvent{Policy: sr.p.Name, Slot: sr.slot, Done: sr.done, Total: sr.total, Server: res}
	if sr.opts.Progress != nil {
		sr.opts.Progress(e)
	}
	if sr.call.Progress != nil {
		sr.call.Progress(e)
	}
}

// reportStart reports the start of the run (selection done).
func (sr *slotRun) reportStart(res ServerResult) {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	sr.report(res)
}

// markWaiting reports the servers still being waited on when the run stops early.
func (sr *slotRun) markWaiting(rows []waitRow) {
	for _, im := range rows {
		sr.mu.Lock()
		_, done := sr.results[im.ServerID]
		sr.mu.Unlock()
		if !done {
			sr.finish(ServerResult{ServerID: im.ServerID, ServerName: im.ServerName, Outcome: ServerWaiting,
				ImageID: im.ImageID, ImageRow: im.Row, Adopted: im.Adopted, Reason: "run stopped while waiting"})
		}
	}
}

func (sr *slotRun) sortedResults() []ServerResult {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	out := make([]ServerResult, 0, len(sr.results))
	for _, r := range sr.results {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ServerID < out[j].ServerID })
	return out
}

// waitScope is the run's part of a wait: its slot, cloud, timeout and result sink.
func (sr *slotRun) waitScope() waitScope {
	return waitScope{
		policy: sr.p.Name, slot: sr.slot, timeout: sr.timeout, p: sr.p, cloud: sr.cloud, log: sr.log,
		done: func(im store.Image, outcome ServerOutcome, reason string, d time.Duration) {
			sr.finish(ServerResult{ServerID: im.ServerID, ServerName: im.ServerName, Outcome: outcome, Reason: reason,
				ImageID: im.ImageID, ImageRow: im.Row, Adopted: im.Adopted, Duration: d})
		},
	}
}
