package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// Trigger says why a slot runs.
type Trigger string

// Triggers of a slot run; the store records them with the slot.
const (
	TriggerScheduled Trigger = store.TriggerScheduled
	TriggerCatchUp   Trigger = store.TriggerCatchUp
	TriggerManual    Trigger = store.TriggerManual
)

// ServerOutcome is what became of one selected server in a slot run.
type ServerOutcome string

// Server outcomes.
const (
	// ServerGood: the server has a good image for the slot.
	ServerGood ServerOutcome = "good"
	// ServerFailed: its image failed (Reason says why).
	ServerFailed ServerOutcome = "failed"
	// ServerSkipped: it was not imaged for a recorded reason (error_state, busy).
	ServerSkipped ServerOutcome = "skipped"
	// ServerWaiting: the run stopped (context cancelled) while the image was still
	// being made; ResumeWaits finishes it.
	ServerWaiting ServerOutcome = "waiting"
)

// ServerResult is the outcome of one server in a slot run.
type ServerResult struct {
	ServerID   string
	ServerName string
	Outcome    ServerOutcome
	// Reason is the skip reason code (error_state, busy) for a skip, the failure
	// reason for a failure.
	Reason string
	// ImageID is the Glance image, when known.
	ImageID string
	// ImageRow is the lineage row id, 0 when no row was written.
	ImageRow int64
	// Adopted is true when the image was found by its stamp, not returned by the call.
	Adopted bool
	// Existing is true when the slot already had a row for the server before this
	// run (a re-run).
	Existing bool
	// Duration is from the request to the final outcome (0 for skips).
	Duration time.Duration
}

// SlotReport is what a slot run did.
type SlotReport struct {
	Policy   string
	Slot     time.Time
	SlotID   int64
	Trigger  Trigger
	Outcome  store.SlotOutcome // ran, caught_up, empty or failed
	Reason   string
	Started  time.Time
	Finished time.Time
	// Servers holds one result per selected server, ordered by server id.
	Servers []ServerResult
	Counts  store.SlotCounts
	// CloudCalls counts the cloud calls the run made.
	CloudCalls int64
}

// OK reports whether every selected server got a good image or was skipped for a
// recorded reason. A slot that selected nothing is not OK: it protected nothing.
func (r *SlotReport) OK() bool {
	if r == nil || r.Outcome == store.OutcomeFailed || r.Outcome == store.OutcomeEmpty {
		return false
	}
	for _, s := range r.Servers {
		if s.Outcome != ServerGood && s.Outcome != ServerSkipped {
			return false
		}
	}
	return true
}

// ProgressEvent reports one server reaching its outcome during a slot run. The first
// event of a run has Server zero and Done 0: the servers are selected.
type ProgressEvent struct {
	Policy string
	Slot   time.Time
	Done   int
	Total  int
	Server ServerResult
}

// RunnerOptions configures a Runner beyond the resources it shares.
type RunnerOptions struct {
	// BusyRetryInterval is the first wait before a busy server is looked at again
	// (DefaultBusyRetryInterval when zero); it doubles up to BusyRetryMaxInterval.
	BusyRetryInterval time.Duration
	// Progress, when set, is called as servers reach their outcome (the CLI prints it).
	// It is called from the run's goroutines, one call at a time.
	Progress func(ProgressEvent)
	// Settled, when set, is called with the policy's name after a slot's images are
	// settled (not after a run that failed to start). The daemon requests retention
	// for that policy with it; retention then decides by the config in force when it
	// runs, never by the one this run started with. It must not block.
	Settled func(policy string)

	// hooks lets tests stop a run at its crash points.
	hooks runHooks
}

// runHooks are the crash points of a backup run, for tests. A hook that returns an
// error abandons that server's work right there, as a process killed at that point
// would: nothing after it is recorded.
type runHooks struct {
	afterIntent func(serverID string) error
	afterCreate func(serverID, imageID string) error
	beforePoll  func(round int) error
}

// Runner is the backup runner: it makes the images of slots. One Runner serves
// every policy of a process, on the process's Shared resources: a run holds its
// policy's lock while it makes and waits for images, takes worker slots and the
// request rate for its calls, and the per-server lock around each createImage.
type Runner struct {
	sh   *Shared
	opts RunnerOptions
	// w waits for the images of slots; late looks at a policy's late images after
	// a run, for a process without a LateWatcher of its own (the CLI).
	w    *waiter
	late *LateWatcher
}

// NewRunner returns the backup runner on the process's shared resources.
func NewRunner(sh *Shared, opts RunnerOptions) *Runner {
	if opts.BusyRetryInterval <= 0 {
		opts.BusyRetryInterval = DefaultBusyRetryInterval
	}
	return &Runner{sh: sh, opts: opts, w: &waiter{sh: sh, beforePoll: opts.hooks.beforePoll}, late: NewLateWatcher(sh)}
}

// CloudSelector converts a policy's selector to the cloud's.
func CloudSelector(s policy.Selector) cloud.Selector {
	return cloud.Selector{
		Tags:              append([]string(nil), s.Tags...),
		TagsAny:           append([]string(nil), s.TagsAny...),
		ExcludeTags:       append([]string(nil), s.ExcludeTags...),
		AvailabilityZones: append([]string(nil), s.AvailabilityZones...),
	}
}

// StampSlot is the imagekeeper_slot stamp value of a slot: RFC 3339 in UTC.
func StampSlot(slot time.Time) string { return slot.UTC().Format(time.RFC3339) }

// DescribeSelector words a selector for logs and reasons, e.g.
// "tags=[backup=daily] exclude_tags=[nobackup]"; "every server" when it filters nothing.
func DescribeSelector(s cloud.Selector) string {
	var parts []string
	for _, f := range []struct {
		name string
		vals []string
	}{{"tags", s.Tags}, {"tags_any", s.TagsAny}, {"exclude_tags", s.ExcludeTags}, {"availability_zones", s.AvailabilityZones}} {
		if len(f.vals) > 0 {
			parts = append(parts, f.name+"=["+strings.Join(f.vals, ", ")+"]")
		}
	}
	if len(parts) == 0 {
		return "every server"
	}
	return strings.Join(parts, " ")
}

// RunSlot runs one slot of policy p, taken from the config of version cfgVersion:
// it records the slot, selects the servers, asks for one image per eligible server
// (idempotently: a server that already has a row for the slot gets no second
// image), waits until each image is good or failed, records the slot's outcome, and
// then calls Settled with the policy's name. The error
// is non-nil only when the run could not do its work (listing servers failed, the
// store failed, ctx was cancelled); failed images are in the report, not the error.
func (r *Runner) RunSlot(ctx context.Context, cfgVersion string, p *policy.Policy, slot time.Time, trigger Trigger) (*SlotReport, error) {
	return r.RunSlotWith(ctx, cfgVersion, p, slot, trigger, RunSlotOptions{})
}

// RunSlotOptions are what one call of RunSlotWith asks beyond RunSlot: a manual run
// of some servers, with its own progress, and without retention.
type RunSlotOptions struct {
	// Servers, when not empty, limits the run to these server ids among the ones
	// the policy selects (`run --server`): an image before maintenance. Ids the
	// policy does not select are ignored; the caller checks them first.
	Servers []string
	// Progress, when set, is called as Progress of RunnerOptions is, for this run
	// only: the run of a control-socket client in the daemon.
	Progress func(ProgressEvent)
	// SkipRetention leaves out the retention request of Settled (`run --no-prune`).
	SkipRetention bool
}

// RunSlotWith is RunSlot with per-call options.
func (r *Runner) RunSlotWith(ctx context.Context, cfgVersion string, p *policy.Policy, slot time.Time, trigger Trigger,
	o RunSlotOptions) (*SlotReport, error) {
	if p == nil || p.Image == nil {
		return nil, errors.New("run slot: policy without image spec")
	}
	if trigger == "" {
		trigger = TriggerScheduled
	}
	slot = slot.UTC().Truncate(time.Second)
	started := r.sh.now()
	// The slot is recorded before waiting for the policy lock: a process killed
	// while it waits (behind a resumed slot, say) must leave a running row for the
	// next start to resume, not a slot with no row at all.
	sl, err := r.sh.store.StartSlot(ctx, store.Slot{Policy: p.Name, Slot: slot, Trigger: string(trigger),
		PolicyVersion: p.Version, ConfigVersion: cfgVersion})
	if err != nil {
		return nil, fmt.Errorf("run slot: %w", err)
	}
	unlock, err := r.sh.LockPolicy(ctx, p.Name)
	if err != nil {
		return nil, fmt.Errorf("run slot of %s: %w", p.Name, err)
	}
	rep, err := r.runSlotLocked(ctx, cfgVersion, p, slot, trigger, sl, started, o)
	unlock()
	if err != nil || r.opts.Settled == nil || o.SkipRetention || rep == nil || rep.Outcome == store.OutcomeFailed {
		return rep, err
	}
	// Only the name leaves the run: retention looks the policy up itself.
	r.opts.Settled(p.Name)
	return rep, nil
}

// runSlotLocked is the slot run proper, under the policy's lock and on the slot
// row sl that RunSlotWith recorded. It makes a slotRun and executes it (select,
// image each server, wait), then settles rows earlier runs left in progress, and
// records the outcome:
//   - the report counts every selected server once, by its final result;
//   - a run that selected nothing is empty, not ran: it protected nothing;
//   - a run stopped by a shutdown (ctx done, not manual) leaves the slot running,
//     so that the next start resumes it, rather than failed while its images
//     usually turn good;
//   - otherwise the outcome is written even when ctx was cancelled (on a detached
//     context with its own timeout), with the metrics and the last success.
//
// The error is the run's (listing, store, cancellation), or the store's failure to
// record the outcome; failed images are in the report only.
func (r *Runner) runSlotLocked(ctx context.Context, cfgVersion string, p *policy.Policy, slot time.Time, trigger Trigger,
	sl store.Slot, started time.Time, o RunSlotOptions) (*SlotReport, error) {
	sr := &slotRun{
		sh: r.sh, opts: r.opts, w: r.w, cfgVersion: cfgVersion, p: p, slot: slot, trigger: trigger, slotID: sl.ID, runID: newRunID(), call: o,
		calls:    &callCounter{},
		log:      r.sh.log.With(LogKeyPolicy, p.Name, LogKeySlot, StampSlot(slot)),
		timeout:  r.sh.waitTimeout(p),
		results:  map[string]*ServerResult{},
		existing: map[string]bool{},
	}
	sr.cloud = r.sh.countedCloud(sr.calls)
	rep := &SlotReport{Policy: p.Name, Slot: slot, SlotID: sl.ID, Trigger: trigger, Started: started}
	sr.log.Info("slot run starting", LogKeyTrigger, string(trigger), LogKeyRunID, sr.runID)

	runErr := sr.execute(ctx)
	if runErr == nil {
		r.settleStale(ctx, p, slot)
	}

	// Record the outcome even when ctx was cancelled: the bookkeeping must land.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	rep.Servers = sr.sortedResults()
	for _, s := range rep.Servers {
		switch s.Outcome {
		case ServerGood:
			rep.Counts.Good++
		case ServerFailed:
			rep.Counts.Failed++
		case ServerSkipped:
			rep.Counts.Skipped++
		}
		if s.Existing {
			rep.Counts.Existing++
		}
	}
	rep.Counts.Selected = len(rep.Servers)
	rep.Outcome = store.OutcomeRan
	if trigger == TriggerCatchUp {
		rep.Outcome = store.OutcomeCaughtUp
	}
	switch {
	case runErr != nil:
		rep.Outcome, rep.Reason = store.OutcomeFailed, runErr.Error()
	case rep.Counts.Selected == 0:
		// Not a success: nothing failed, but nothing is protected either.
		rep.Outcome = store.OutcomeEmpty
		rep.Reason = "selected no server (select: " + DescribeSelector(CloudSelector(p.Select)) + ")"
	case rep.Counts.Failed > 0:
		rep.Reason = fmt.Sprintf("%d of %s failed", rep.Counts.Failed, plural(rep.Counts.Selected, "image", "images"))
	}
	if len(sr.left) > 0 && runErr == nil {
		note := fmt.Sprintf("%d server(s) with good images left the selection: %s", len(sr.left), strings.Join(sr.left, ", "))
		rep.Reason = strings.TrimPrefix(rep.Reason+"; "+note, "; ")
	}
	rep.CloudCalls = sr.calls.total.Load()
	rep.Finished = r.sh.now()
	if runErr != nil && ctx.Err() != nil && trigger != TriggerManual {
		// The process is shutting down: the slot stays running, and the next start
		// resumes it (ResumeInterruptedSlots). Failed would be wrong once the images
		// it asked for turn good, as they usually do.
		rep.Outcome, rep.Reason = store.OutcomeRunning, "interrupted by shutdown; resumed at the next start"
		sr.log.Info("slot run interrupted by shutdown; the next start resumes it")
		return rep, fmt.Errorf("run slot %s of %s: %w", StampSlot(slot), p.Name, runErr)
	}
	if err := r.sh.store.FinishSlot(bctx, sl.ID, rep.Outcome, rep.Reason, rep.Counts); err != nil {
		sr.log.Error("record slot outcome", LogKeyErr, err)
		if runErr == nil {
			runErr = err
		}
	}
	r.sh.metrics.SlotOutcome(p.Name, rep.Outcome)
	if rep.OK() {
		r.sh.metrics.SetLastSuccess(p.Name, rep.Finished)
	}
	sr.log.Info("slot run finished", LogKeyOutcome, rep.Outcome, "selected", rep.Counts.Selected, "good", rep.Counts.Good,
		"failed", rep.Counts.Failed, "skipped", rep.Counts.Skipped, "cloud_calls", rep.CloudCalls,
		LogKeyDuration, rep.Finished.Sub(started).Round(time.Millisecond).String())
	if runErr != nil {
		return rep, fmt.Errorf("run slot %s of %s: %w", StampSlot(slot), p.Name, runErr)
	}
	return rep, nil
}

// settleStale decides the rows of p that earlier runs left requested or creating
// (a run stopped mid-wait, a wait that dropped a row on a store error, an adoption by
// reconcile) once their wait_timeout has passed and no wait of this process watches
// them. Without it such rows stay in progress until a daemon restarts, or forever
// where no daemon runs: retention counts them neither as backups nor as garbage.
// Every such row is past its deadline, so one poll per slot settles it.
func (r *Runner) settleStale(ctx context.Context, p *policy.Policy, current time.Time) {
	// Images of this policy in their late window get one look too, so that they are
	// promoted where no daemon runs WatchLate (runs from the CLI).
	if _, err := r.late.checkLate(ctx, p.Name); err != nil {
		r.sh.log.Warn("look at images in their late window", LogKeyPolicy, p.Name, LogKeyErr, err)
	}
	rows, err := r.sh.store.Images(ctx, store.ImageFilter{Policy: p.Name,
		States: []store.ImageState{store.ImageRequested, store.ImageCreating}})
	if err != nil {
		r.sh.log.Warn("look for images left in progress", LogKeyPolicy, p.Name, LogKeyErr, err)
		return
	}
	timeout := r.sh.waitTimeout(p)
	now := r.sh.store.Now()
	var stale []store.Image
	for _, im := range rows {
		if !im.Slot.Equal(current) && now.After(im.RequestedAt.Add(timeout)) {
			stale = append(stale, im)
		}
	}
	stale = r.sh.claim(stale)
	defer r.sh.unclaim(stale)
	bySlot := map[time.Time][]store.Image{}
	var slots []time.Time
	for _, im := range stale {
		if _, ok := bySlot[im.Slot]; !ok {
			slots = append(slots, im.Slot)
		}
		bySlot[im.Slot] = append(bySlot[im.Slot], im)
	}
	for _, sl := range slots {
		sc := waitScope{policy: p.Name, slot: sl, timeout: timeout, p: p, cloud: r.sh.Cloud(), pollFirst: true,
			log: r.sh.log.With(LogKeyPolicy, p.Name, LogKeySlot, StampSlot(sl))}
		sc.log.Info("settling images left in progress by an earlier run", "images", len(bySlot[sl]))
		if err := r.w.wait(ctx, sc, waitRows(bySlot[sl])); err != nil {
			sc.log.Warn("settle images left in progress", LogKeyErr, err)
			return
		}
	}
}

func newRunID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// PrepareSlot starts, in the background, the listing of every server that the runs
// of slot select from (see inventory), unless it is made or in flight: the
// Scheduler calls it PrepareLead before the slot, so that at 10,000 servers the
// runs do not all wait for eleven pages of it at the slot instant. A failed listing
// is not kept: the runs list again. Retention never uses this listing.
func (r *Runner) PrepareSlot(p *policy.Policy, slot time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), inventoryTTL)
	started := r.sh.inventory.prefetch(ctx, slot, r.sh.now(), func(ctx context.Context) ([]cloud.Server, error) {
		defer cancel()
		return r.sh.listAll(r.sh.Cloud(), p.Name)(ctx)
	})
	if !started {
		cancel()
	}
}
