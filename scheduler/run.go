package scheduler

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
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

// Defaults of RunnerOptions fields left zero.
const (
	// DefaultPollInterval is the first wait before an image (or a snapshot
	// deletion) is polled: a real cloud makes a small image active in about 7 s and
	// Cinder deletes a snapshot in about 2 s, and a first poll at a fixed 10 s made a
	// run take 11-12 s. A poll round is one batched listing per slot, so polling
	// early costs little; the wait grows by half each round (2, 3, 4.5, 6.75 s...)
	// up to DefaultMaxPollInterval.
	DefaultPollInterval    = 2 * time.Second
	DefaultMaxPollInterval = 2 * time.Minute
	DefaultWaitTimeout     = 2 * time.Hour
	DefaultConcurrency     = 4
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

// RunnerOptions configures a Runner.
type RunnerOptions struct {
	// Cloud is the cloud to image in; required.
	Cloud cloud.Cloud
	// Store is the lineage; required.
	Store *store.Store
	// Limits bound concurrency and the request rate across every run of this Runner.
	Limits policy.Limits
	// Logger receives the run's logs; discarded when nil.
	Logger *slog.Logger
	// Metrics is fed slot outcomes, skips and image results; nil for none.
	Metrics *Metrics
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Sleep waits for a duration or until ctx is done; tests inject it so that the
	// spread, rate limit and poll backoff do not wait for real.
	Sleep func(ctx context.Context, d time.Duration) error
	// PollInterval is the first wait between polls; it grows by half each round up
	// to MaxPollInterval (nextPoll).
	PollInterval    time.Duration
	MaxPollInterval time.Duration
	// DefaultWaitTimeout applies when a policy has none (and to resumed waits of a
	// policy no longer in the config).
	DefaultWaitTimeout time.Duration
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

// Runner makes the images of slots. One Runner serves every policy of a process: it
// owns the limits they share (concurrency, request rate) and the per-server lock
// that keeps two createImage calls off one server.
type Runner struct {
	opts    RunnerOptions
	store   *store.Store
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time
	sleep   func(context.Context, time.Duration) error
	bucket  *tokenBucket
	workers *semaphore
	servers keyedLocks
	pols    keyedLocks
	// inventory shares one server listing between the runs of a slot instant.
	inventory inventory

	mu      sync.Mutex
	waiting map[int64]bool // image rows a wait of this Runner is watching
	// lateWake wakes WatchLate when an image enters its late window.
	lateWake chan struct{}

	// drillsActive holds the journal rows of the drills this Runner is running, which
	// CleanupDrills leaves alone.
	drillMu      sync.Mutex
	drillsActive map[int64]bool
	drillHooks   drillHooks
}

// NewRunner returns a Runner.
func NewRunner(opts RunnerOptions) *Runner {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Sleep == nil {
		opts.Sleep = sleepCtx
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.MaxPollInterval <= 0 {
		opts.MaxPollInterval = DefaultMaxPollInterval
	}
	if opts.MaxPollInterval < opts.PollInterval {
		opts.MaxPollInterval = opts.PollInterval
	}
	if opts.DefaultWaitTimeout <= 0 {
		opts.DefaultWaitTimeout = DefaultWaitTimeout
	}
	if opts.BusyRetryInterval <= 0 {
		opts.BusyRetryInterval = DefaultBusyRetryInterval
	}
	r := &Runner{
		opts:     opts,
		store:    opts.Store,
		log:      opts.Logger,
		metrics:  opts.Metrics,
		now:      opts.Now,
		sleep:    opts.Sleep,
		waiting:  map[int64]bool{},
		lateWake: make(chan struct{}, 1),

		drillsActive: map[int64]bool{},
	}
	r.bucket = newTokenBucket(opts.Limits.RequestsPerSecond, r.now, r.sleep)
	r.workers = newSemaphore(concurrency(opts.Limits))
	return r
}

func concurrency(l policy.Limits) int {
	if l.Concurrency > 0 {
		return l.Concurrency
	}
	return DefaultConcurrency
}

// SetLimits applies new limits (a config reload) to the calls made from now on.
func (r *Runner) SetLimits(l policy.Limits) {
	r.bucket.setRate(l.RequestsPerSecond)
	r.workers.resize(concurrency(l))
}

// Cloud returns the Runner's cloud: every call takes a token of the shared request
// rate. Prune and reconcile use it so that they share the limits with backup runs.
func (r *Runner) Cloud() cloud.Cloud { return limitedCloud{inner: r.opts.Cloud, bucket: r.bucket} }

// AcquireWorker takes one of the Limits.Concurrency worker slots shared by every run
// of this Runner, for work of the named policy (slots are shared fairly between
// policies); the returned func gives it back.
func (r *Runner) AcquireWorker(ctx context.Context, policy string) (release func(), err error) {
	return r.workers.acquire(ctx, policy)
}

// LockPolicy serialises backup runs and prunes of one policy: a run holds it while it
// makes and waits for images, and a prune should hold it too.
func (r *Runner) LockPolicy(ctx context.Context, name string) (unlock func(), err error) {
	return r.pols.lock(ctx, name)
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

// run is one slot run in progress.
type run struct {
	r *Runner
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
	started := r.now()
	// The slot is recorded before waiting for the policy lock: a process killed
	// while it waits (behind a resumed slot, say) must leave a running row for the
	// next start to resume, not a slot with no row at all.
	sl, err := r.store.StartSlot(ctx, store.Slot{Policy: p.Name, Slot: slot, Trigger: string(trigger),
		PolicyVersion: p.Version, ConfigVersion: cfgVersion})
	if err != nil {
		return nil, fmt.Errorf("run slot: %w", err)
	}
	unlock, err := r.LockPolicy(ctx, p.Name)
	if err != nil {
		return nil, fmt.Errorf("run slot of %s: %w", p.Name, err)
	}
	rep, err := r.runSlot(ctx, cfgVersion, p, slot, trigger, sl, started, o)
	unlock()
	if err != nil || r.opts.Settled == nil || o.SkipRetention || rep == nil || rep.Outcome == store.OutcomeFailed {
		return rep, err
	}
	// Only the name leaves the run: retention looks the policy up itself.
	r.opts.Settled(p.Name)
	return rep, nil
}

func (r *Runner) runSlot(ctx context.Context, cfgVersion string, p *policy.Policy, slot time.Time, trigger Trigger,
	sl store.Slot, started time.Time, o RunSlotOptions) (*SlotReport, error) {
	ru := &run{
		r: r, cfgVersion: cfgVersion, p: p, slot: slot, trigger: trigger, slotID: sl.ID, runID: newRunID(), call: o,
		calls:    &callCounter{},
		log:      r.log.With("policy", p.Name, "slot", StampSlot(slot)),
		timeout:  r.waitTimeout(p),
		results:  map[string]*ServerResult{},
		existing: map[string]bool{},
	}
	ru.cloud = limitedCloud{inner: r.opts.Cloud, bucket: r.bucket, counter: ru.calls}
	rep := &SlotReport{Policy: p.Name, Slot: slot, SlotID: sl.ID, Trigger: trigger, Started: started}
	ru.log.Info("slot run starting", "trigger", string(trigger), "run_id", ru.runID)

	runErr := ru.execute(ctx)
	if runErr == nil {
		r.settleStale(ctx, p, slot)
	}

	// Record the outcome even when ctx was cancelled: the bookkeeping must land.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	rep.Servers = ru.sortedResults()
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
	if len(ru.left) > 0 && runErr == nil {
		note := fmt.Sprintf("%d server(s) with good images left the selection: %s", len(ru.left), strings.Join(ru.left, ", "))
		rep.Reason = strings.TrimPrefix(rep.Reason+"; "+note, "; ")
	}
	rep.CloudCalls = ru.calls.total.Load()
	rep.Finished = r.now()
	if runErr != nil && ctx.Err() != nil && trigger != TriggerManual {
		// The process is shutting down: the slot stays running, and the next start
		// resumes it (ResumeInterruptedSlots). Failed would be wrong once the images
		// it asked for turn good, as they usually do.
		rep.Outcome, rep.Reason = store.OutcomeRunning, "interrupted by shutdown; resumed at the next start"
		ru.log.Info("slot run interrupted by shutdown; the next start resumes it")
		return rep, fmt.Errorf("run slot %s of %s: %w", StampSlot(slot), p.Name, runErr)
	}
	if err := r.store.FinishSlot(bctx, sl.ID, rep.Outcome, rep.Reason, rep.Counts); err != nil {
		ru.log.Error("record slot outcome", "err", err)
		if runErr == nil {
			runErr = err
		}
	}
	r.metrics.SlotOutcome(p.Name, rep.Outcome)
	if rep.OK() {
		r.metrics.SetLastSuccess(p.Name, rep.Finished)
	}
	ru.log.Info("slot run finished", "outcome", rep.Outcome, "selected", rep.Counts.Selected, "good", rep.Counts.Good,
		"failed", rep.Counts.Failed, "skipped", rep.Counts.Skipped, "cloud_calls", rep.CloudCalls,
		"duration", rep.Finished.Sub(started).Round(time.Millisecond).String())
	if runErr != nil {
		return rep, fmt.Errorf("run slot %s of %s: %w", StampSlot(slot), p.Name, runErr)
	}
	return rep, nil
}

// settleStale decides the rows of p that earlier runs left requested or creating
// (a run stopped mid-wait, a wait that dropped a row on a store error, an adoption by
// reconcile) once their wait_timeout has passed and no wait of this Runner watches
// them. Without it such rows stay in progress until a daemon restarts, or forever
// where no daemon runs: retention counts them neither as backups nor as garbage.
// Every such row is past its deadline, so one poll per slot settles it.
func (r *Runner) settleStale(ctx context.Context, p *policy.Policy, current time.Time) {
	// Images of this policy in their late window get one look too, so that they are
	// promoted where no daemon runs WatchLate (runs from the CLI).
	if _, err := r.checkLate(ctx, p.Name); err != nil {
		r.log.Warn("look at images in their late window", "policy", p.Name, "err", err)
	}
	rows, err := r.store.Images(ctx, store.ImageFilter{Policy: p.Name,
		States: []store.ImageState{store.ImageRequested, store.ImageCreating}})
	if err != nil {
		r.log.Warn("look for images left in progress", "policy", p.Name, "err", err)
		return
	}
	timeout := r.waitTimeout(p)
	now := r.store.Now()
	var stale []store.Image
	for _, im := range rows {
		if !im.Slot.Equal(current) && now.After(im.RequestedAt.Add(timeout)) {
			stale = append(stale, im)
		}
	}
	stale = r.claim(stale)
	defer r.unclaim(stale)
	bySlot := map[time.Time][]store.Image{}
	var slots []time.Time
	for _, im := range stale {
		if _, ok := bySlot[im.Slot]; !ok {
			slots = append(slots, im.Slot)
		}
		bySlot[im.Slot] = append(bySlot[im.Slot], im)
	}
	for _, sl := range slots {
		sc := waitScope{policy: p.Name, slot: sl, timeout: timeout, p: p, cloud: r.Cloud(), pollFirst: true,
			log: r.log.With("policy", p.Name, "slot", StampSlot(sl))}
		sc.log.Info("settling images left in progress by an earlier run", "images", len(bySlot[sl]))
		if err := r.wait(ctx, sc, bySlot[sl]); err != nil {
			sc.log.Warn("settle images left in progress", "err", err)
			return
		}
	}
}

func (r *Runner) waitTimeout(p *policy.Policy) time.Duration {
	if p != nil && p.Image != nil && p.Image.WaitTimeout > 0 {
		return p.Image.WaitTimeout
	}
	return r.opts.DefaultWaitTimeout
}

func newRunID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// listAll lists every server of the project inside a worker slot (taken in the
// name of policy), for the inventory.
func (r *Runner) listAll(cl cloud.Cloud, policy string) func(context.Context) ([]cloud.Server, error) {
	return func(ctx context.Context) ([]cloud.Server, error) {
		release, err := r.workers.acquire(ctx, policy)
		if err != nil {
			return nil, err
		}
		defer release()
		return cl.ListServers(ctx, cloud.Selector{})
	}
}

// PrepareSlot starts, in the background, the listing of every server that the runs
// of slot select from (see inventory), unless it is made or in flight: the
// Scheduler calls it PrepareLead before the slot, so that at 10,000 servers the
// runs do not all wait for eleven pages of it at the slot instant. A failed listing
// is not kept: the runs list again. Retention never uses this listing.
func (r *Runner) PrepareSlot(p *policy.Policy, slot time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), inventoryTTL)
	started := r.inventory.prefetch(ctx, slot, r.now(), func(ctx context.Context) ([]cloud.Server, error) {
		defer cancel()
		return r.listAll(r.Cloud(), p.Name)(ctx)
	})
	if !started {
		cancel()
	}
}

// execute selects the servers, makes the images and waits for them.
func (ru *run) execute(ctx context.Context) error {
	r, p := ru.r, ru.p
	sel := CloudSelector(p.Select)
	// One listing of every server serves every run of this slot instant (see
	// inventory); it takes a worker slot like any other call.
	servers, err := r.inventory.servers(ctx, ru.slot, r.now(), r.listAll(ru.cloud, p.Name))
	var selected []cloud.Server
	if err == nil {
		selected, err = selectServers(servers, sel)
	}
	if err != nil {
		ru.event(ctx, store.Event{Kind: "list_failed", Message: "list servers: " + cloud.Reason(err)})
		return err // the cloud's error names the call: "list servers: ..."
	}
	if len(ru.call.Servers) > 0 {
		only := selected[:0:0]
		for _, s := range selected {
			if slices.Contains(ru.call.Servers, s.ID) {
				only = append(only, s)
			}
		}
		selected = only
	}
	sort.Slice(selected, func(i, j int) bool { return selected[i].ID < selected[j].ID })
	ru.total = len(selected)
	r.metrics.ServersSelected(p.Name, len(selected))
	r.metrics.SelectionEmpty(p.Name, ru.slot, len(selected) == 0)
	if len(selected) == 0 {
		ru.log.Warn("the policy selected no server: this slot protects nothing; check its select: and the servers' tags",
			"select", DescribeSelector(sel))
	}
	ru.noteLeavers(ctx, selected)
	ru.progress(ServerResult{})

	existing, err := r.store.Images(ctx, store.ImageFilter{Policy: p.Name, Slot: ru.slot})
	if err != nil {
		return err
	}
	rows := map[string]store.Image{}
	for _, im := range existing {
		rows[im.ServerID] = im
	}

	defer func() {
		ru.mu.Lock()
		claimed := ru.claimed
		ru.mu.Unlock()
		r.unclaimRows(claimed)
	}()
	// Servers in the order they may start: by their offset in the spread window
	// (none without a spread), then by id.
	order := selected
	if ru.trigger != TriggerManual && p.Schedule != nil && p.Schedule.Spread > 0 {
		order = slices.Clone(selected)
		slices.SortStableFunc(order, func(a, b cloud.Server) int {
			return cmp.Compare(spreadOffset(p.Name, a.ID, p.Schedule.Spread), spreadOffset(p.Name, b.ID, p.Schedule.Spread))
		})
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var toWait []store.Image
	var firstErr error
	record := func(im store.Image, wait bool, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil && firstErr == nil && !errors.Is(err, errAbandoned) {
			firstErr = err
		}
		if wait {
			// The wait never reads an image's metadata: a decoded map per image in
			// flight was a third of the live heap at 10,000 servers.
			im.Metadata = nil
			toWait = append(toWait, im)
		}
	}
	do := func(s cloud.Server, held bool) {
		row, has := rows[s.ID]
		im, wait, err := ru.server(ctx, s, row, has, held)
		if busy := (busyError{}); errors.As(err, &busy) {
			// Looked at again later, on a goroutine of its own: its backoff must
			// not hold a worker slot (the retry takes one when it calls again).
			wg.Add(1)
			go func() {
				defer wg.Done()
				record(ru.retryBusy(ctx, s, busy))
			}()
			return
		}
		record(im, wait, err)
	}
	if ru.trigger != TriggerManual && p.Schedule != nil && p.Schedule.Spread > 0 {
		// Servers start at their offsets: at most Concurrency goroutines take them
		// in offset order, each sleeping until its server is due.
		var next atomic.Int64
		for range min(r.workers.capacity(), len(order)) {
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
			release, err := r.workers.acquire(ctx, p.Name)
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
		ru.markWaiting(toWait)
		return err
	}
	if len(toWait) > 0 {
		if err := r.wait(ctx, ru.waitScope(), toWait); err != nil {
			ru.markWaiting(toWait)
			return err
		}
	}
	return firstErr
}

// noteLeavers reports, once, every server that has good images of the policy, was
// selected by the policy's previous slot and is not selected now: a retagged or
// moved server silently stops being backed up otherwise. The next slot compares
// with this one, where the server is no longer live, so it is not said again.
func (ru *run) noteLeavers(ctx context.Context, selected []cloud.Server) {
	r, p := ru.r, ru.p
	recent, err := r.store.Slots(ctx, store.SlotFilter{Policy: p.Name, Limit: 20})
	if err != nil {
		ru.log.Warn("look for servers that left the selection", "err", err)
		return
	}
	prevEmpty := true
	for _, sl := range recent {
		if sl.Slot.Equal(ru.slot) {
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
	live, err := r.store.NewestGoodPerServer(ctx, p.Name)
	if err != nil {
		ru.log.Warn("look for servers that left the selection", "err", err)
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
		ru.left = append(ru.left, rp.ServerID)
		msg := "server " + rp.ServerID + " has good images but is no longer selected (select: " +
			DescribeSelector(CloudSelector(p.Select)) + "); it gets no new images; newest good image requested " +
			rp.NewestGood.UTC().Format(time.RFC3339)
		ru.log.Warn("a server with good images left the policy's selection", "server_id", rp.ServerID,
			"newest_good", rp.NewestGood.UTC().Format(time.RFC3339), "select", DescribeSelector(CloudSelector(p.Select)))
		ru.event(ctx, store.Event{Kind: store.EventServerLeft, ServerID: rp.ServerID, Message: msg})
	}
}

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

// Busy retries: a server with a task in progress (its own or someone else's
// snapshot, a resize...) or a createImage refused with 409 is looked at again
// within the slot, with backoff from RunnerOptions.BusyRetryInterval up to
// BusyRetryMaxInterval, until the slot's max_lateness has passed (at most
// MaxBusyRetry after the slot; MaxBusyRetry for a policy without a schedule). Only
// then is it skipped busy: on a daily policy a skip is a day without a backup.
const (
	DefaultBusyRetryInterval = 30 * time.Second
	BusyRetryMaxInterval     = 10 * time.Minute
	MaxBusyRetry             = 6 * time.Hour
)

// busyError is a server found busy: serverRetryingBusy retries it or skips it.
type busyError struct {
	res    ServerResult
	detail string
}

func (e busyError) Error() string { return "server busy: " + e.detail }

// busyDeadline is the last moment a busy server of this run is looked at again.
func (ru *run) busyDeadline() time.Time {
	bound := MaxBusyRetry
	if sch := ru.p.Schedule; sch != nil && sch.MaxLateness > 0 && sch.MaxLateness < bound {
		bound = sch.MaxLateness
	}
	return ru.slot.Add(bound)
}

// retryBusy is called when server found s busy: it waits with backoff, reads the
// server again and runs server again, while it is busy and busyDeadline has not
// passed; then the server is skipped busy.
func (ru *run) retryBusy(ctx context.Context, s cloud.Server, busy busyError) (store.Image, bool, error) {
	r := ru.r
	deadline := ru.busyDeadline()
	interval := r.opts.BusyRetryInterval
	var im store.Image
	for attempt := 1; ; attempt++ {
		left := deadline.Sub(r.now())
		if left <= 0 {
			detail := busy.detail
			if attempt > 1 {
				detail += fmt.Sprintf(" (still busy after %d looks, until max_lateness)", attempt)
			}
			return im, false, ru.skip(ctx, s, busy.res, SkipBusy, detail)
		}
		ru.log.Info("server busy; looking again later", "server_id", s.ID, "detail", busy.detail, "in", min(interval, left).String())
		if err := r.sleep(ctx, min(interval, left)); err != nil {
			return im, false, err
		}
		interval = min(interval*2, BusyRetryMaxInterval)
		if fresh, gerr := ru.cloud.GetServer(ctx, s.ID); gerr == nil {
			s = fresh
		} else if ctx.Err() != nil {
			return im, false, ctx.Err()
		}
		// A 409 dropped the intent; a task state found before the intent wrote none.
		row, err := r.store.ImageByKey(ctx, ru.p.Name, s.ID, ru.slot)
		has := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return im, false, err
		}
		var wait bool
		im, wait, err = ru.server(ctx, s, row, has, false)
		if !errors.As(err, &busy) {
			return im, wait, err
		}
	}
}

// inFlight says why an earlier slot's image of the server under this policy is
// still being made ("" when none is): a second createImage must not start then.
func (ru *run) inFlight(ctx context.Context, serverID string) (string, error) {
	rows, err := ru.r.store.Images(ctx, store.ImageFilter{Policy: ru.p.Name, ServerID: serverID,
		States: []store.ImageState{store.ImageRequested, store.ImageCreating}})
	if err != nil {
		return "", err
	}
	now := ru.r.store.Now()
	for _, im := range rows {
		if im.Slot.Equal(ru.slot) || (im.State == store.ImageRequested && im.Attempts == 0) {
			continue
		}
		if now.Before(im.RequestedAt.Add(ru.timeout)) {
			return fmt.Sprintf("the image of slot %s (row %d, %s) is still being made", StampSlot(im.Slot), im.Row, im.State), nil
		}
	}
	return "", nil
}

// errAbandoned marks a server whose work a test hook stopped, as a crash would.
var errAbandoned = errors.New("abandoned at a crash point")

// server handles one selected server: the existing row, the skips, the intent, the
// call. It returns the row to wait for when wait is true.
//
// held says the caller already holds a worker slot for it (execute without a
// spread window); otherwise server takes one once the server's offset is due.
func (ru *run) server(ctx context.Context, s cloud.Server, row store.Image, has, held bool) (im store.Image, wait bool, err error) {
	r, p := ru.r, ru.p
	log := ru.log.With("server_id", s.ID, "server_name", s.Name)
	res := ServerResult{ServerID: s.ID, ServerName: s.Name, Existing: has}
	if has {
		if !ru.claim(row) {
			res.Outcome, res.ImageRow, res.ImageID = ServerWaiting, row.Row, row.ImageID
			res.Reason = "image is being waited on by a resumed wait of this process"
			ru.finish(res)
			return row, false, nil
		}
		ru.mu.Lock()
		ru.existing[s.ID] = true
		ru.mu.Unlock()
		res.ImageRow, res.ImageID, res.Adopted = row.Row, row.ImageID, row.Adopted
		switch row.State {
		case store.ImageGood:
			res.Outcome = ServerGood
			ru.finish(res)
			return row, false, nil
		case store.ImageCreating:
			return row, true, nil
		case store.ImageDeleting, store.ImageDeleted, store.ImageKeptProtected:
			res.Outcome, res.Reason = ServerGood, "image already "+string(row.State)
			if row.ActiveAt.IsZero() {
				res.Outcome, res.Reason = ServerFailed, row.Reason
			}
			ru.finish(res)
			return row, false, nil
		case store.ImageFailed:
			if row.ImageID != "" {
				// The slot's image was made and failed; a second image for the same slot
				// is not ours to make. The next slot tries again.
				res.Outcome, res.Reason = ServerFailed, row.Reason
				ru.finish(res)
				return row, false, nil
			}
		}
		// requested, or failed before any image existed: the outcome of an earlier
		// call may be unknown, so look for our stamped image before calling again.
		adopted, found, err := ru.adopt(ctx, row, "row for this slot had no image id")
		if err != nil {
			return row, false, ru.failRow(ctx, row, res, "look for stamped image: "+cloud.Reason(err))
		}
		if found {
			return adopted, true, nil
		}
		if row.State == store.ImageRequested && row.Attempts > 0 && r.store.Now().Before(row.RequestedAt.Add(ru.timeout)) {
			// A call was made for this row and its outcome was never learned (a crash or
			// a stop mid-call, or another process's call still in flight). Nova may still
			// be making the image (for a volume-backed server it snapshots every volume
			// before the Glance image appears, and sets no task state, so a second call
			// would be accepted): wait for the stamp until wait_timeout instead.
			return row, true, nil
		}
	}

	// An earlier slot's image still being made explains a task state of our own
	// snapshot too, so it is looked for before busy.
	// A row of this slot that reached here has no createImage sent yet (or a known
	// failure without an image), so the check applies to it as to a new server.
	inFlight, err := ru.inFlight(ctx, s.ID)
	if err != nil {
		return row, false, err
	}
	if inFlight != "" && has && row.State == store.ImageRequested && row.Attempts == 0 && row.ImageID == "" {
		// Nothing was asked for this row: drop it, so that it does not wait out a
		// wait_timeout for an image that cannot exist; a later run of the slot may
		// try again.
		if derr := r.store.DropIntent(context.WithoutCancel(ctx), row.Row, "in_flight: "+inFlight); derr != nil {
			return row, false, derr
		}
		res.ImageRow = 0
	}
	switch {
	case s.Status == "ERROR":
		return row, false, ru.skip(ctx, s, res, SkipErrorState, "server is in ERROR state; Nova refuses to image it")
	case s.Locked:
		return row, false, ru.skip(ctx, s, res, SkipLocked, "server is locked; Nova refuses to image it until it is unlocked")
	case inFlight != "":
		return row, false, ru.skip(ctx, s, res, SkipInFlight, inFlight)
	case s.TaskState != "":
		return row, false, busyError{res: res, detail: fmt.Sprintf("server has a task in progress (task_state %s)", s.TaskState)}
	}

	// Start at the server's stable offset inside the spread window, counted from the
	// slot, so that a late (catch-up) run does not wait at all. A manual run starts
	// at once.
	if ru.trigger != TriggerManual && p.Schedule != nil {
		if d := ru.slot.Add(spreadOffset(p.Name, s.ID, p.Schedule.Spread)).Sub(r.now()); d > 0 {
			if err := r.sleep(ctx, d); err != nil {
				return row, false, err
			}
		}
	}
	if !held {
		release, err := r.workers.acquire(ctx, p.Name)
		if err != nil {
			return row, false, err
		}
		defer release()
	}

	name, meta, err := ru.render(s)
	if err != nil {
		if has {
			return row, false, ru.failRow(ctx, row, res, err.Error())
		}
		ru.event(ctx, store.Event{Kind: store.EventImageFailed, ServerID: s.ID, Message: err.Error()})
		res.Outcome, res.Reason = ServerFailed, err.Error()
		r.metrics.ImageCreated(p.Name, CreateFailed, 0)
		ru.finish(res)
		return row, false, nil
	}
	if !has {
		var created bool
		row, created, err = r.store.RecordIntent(ctx, store.Intent{
			Policy: p.Name, ServerID: s.ID, ServerName: s.Name, AZ: s.AvailabilityZone, VolumeBacked: s.VolumeBacked,
			Slot: ru.slot, SlotID: ru.slotID, Name: name, Metadata: meta, PolicyVersion: p.Version,
			ConfigVersion: ru.cfgVersion,
		})
		if err != nil {
			return row, false, err
		}
		res.ImageRow = row.Row
		if !ru.claim(row) {
			res.Outcome, res.ImageID = ServerWaiting, row.ImageID
			res.Reason = "image is being waited on by a resumed wait of this process"
			ru.finish(res)
			return row, false, nil
		}
		if !created {
			// Another process wrote the row between our read and now: it owns the call.
			res.Existing = true
			ru.log.Info("slot row appeared concurrently; not calling again", "server_id", s.ID, "server_name", s.Name)
			if row.State == store.ImageCreating {
				return row, true, nil
			}
			res.Outcome, res.Reason = ServerFailed, "row for this slot written by another run ("+string(row.State)+")"
			if row.State == store.ImageGood {
				res.Outcome, res.Reason = ServerGood, ""
			}
			ru.finish(res)
			return row, false, nil
		}
	}
	if h := r.opts.hooks.afterIntent; h != nil {
		if err := h(s.ID); err != nil {
			return row, false, errAbandoned
		}
	}
	return ru.create(ctx, s, row, res, name, meta, log)
}

// create makes the createImage call for a row that has no image yet.
func (ru *run) create(ctx context.Context, s cloud.Server, row store.Image, res ServerResult, name string,
	meta map[string]string, log *slog.Logger) (store.Image, bool, error) {
	r := ru.r
	unlock, err := r.servers.lock(ctx, s.ID)
	if err != nil {
		return row, false, err
	}
	// The pre hook runs just before createImage, under the server's lock and the
	// worker slot the caller holds (hooks count against limits.concurrency). From
	// the moment it starts a post is owed: thaw runs it on every path below that
	// does not end in an accepted createImage.
	var hk *openHook
	thaw := func(result string) {
		if hk != nil {
			ru.runPost(ctx, hk, s.ID, row.Row, "", result)
			hk = nil
		}
	}
	if ru.p.Image.Hooks != nil {
		var skip bool
		var detail string
		hk, meta, skip, detail, err = ru.runPre(ctx, s, row, meta)
		if err != nil {
			unlock()
			return row, false, err
		}
		if skip {
			unlock()
			// Nothing was asked of Nova: the intent goes, as for a 409.
			if derr := r.store.DropIntent(context.WithoutCancel(ctx), row.Row, SkipHookFailed+": "+detail); derr != nil {
				return row, false, derr
			}
			res.ImageRow = 0
			return row, false, ru.skip(ctx, s, res, SkipHookFailed, detail+"; on_failure: skip")
		}
	}
	// The rate-limit token is taken before the attempt is recorded: a run stopped
	// while queued for it (a drain, a second SIGTERM) has sent nothing, and an
	// attempt on the row would make the resumed slot wait the whole wait_timeout for
	// a stamped image that cannot exist instead of calling at once.
	if err := ru.cloud.take(ctx); err != nil {
		unlock()
		thaw(PostNotRequested)
		return row, false, err
	}
	if err := ctx.Err(); err != nil {
		unlock()
		thaw(PostNotRequested)
		return row, false, err
	}
	row, err = r.store.BeginAttempt(ctx, row.Row, name, meta)
	if err != nil {
		unlock()
		thaw(PostNotRequested)
		return row, false, err
	}
	id, err := ru.cloud.inner.CreateImage(ctx, s.ID, name, meta)
	unlock()
	if err == nil {
		if h := r.opts.hooks.afterCreate; h != nil {
			if herr := h(s.ID, id); herr != nil {
				return row, false, errAbandoned
			}
		}
		bctx := context.WithoutCancel(ctx) // the id must be recorded once we have it
		row, err = r.store.SetImageID(bctx, row.Row, id, false, "createImage returned image "+id)
		if err != nil {
			thaw(PostRequested)
			return row, false, err
		}
		log.Info("image requested", "image_id", id, "image_name", row.Name)
		if hk != nil {
			seen, why := ru.awaitPoint(ctx, s, id, hk.preEnd)
			result := PostRequested
			if !seen {
				result = PostPointNotSeen
				r.downgrade(ctx, ru, row, why)
			}
			ru.runPost(ctx, hk, s.ID, row.Row, id, result)
		}
		return row, true, nil
	}
	if hk != nil {
		// No image, or one whose making nobody watched: not application-consistent.
		r.downgrade(ctx, ru, row, "createImage failed after the pre hook: "+cloud.Reason(err))
	}
	thaw(PostCreateFailed)
	switch {
	case errors.Is(err, cloud.ErrBusy):
		// 409: Nova refused before making anything, so the intent can go and a later
		// run of this slot may try again.
		reason := "server busy: " + cloud.Reason(err)
		if derr := r.store.DropIntent(context.WithoutCancel(ctx), row.Row, reason); derr != nil {
			return row, false, derr
		}
		res.ImageRow = 0
		if strings.Contains(strings.ToLower(cloud.Reason(err)), "locked") {
			// Nova's InstanceIsLocked: an operator's lock, not a task that ends soon.
			return row, false, ru.skip(ctx, s, res, SkipLocked, cloud.Reason(err))
		}
		return row, false, busyError{res: res, detail: "createImage refused (409): " + cloud.Reason(err)}
	case errors.Is(err, cloud.ErrUnknownOutcome) || (ctx.Err() == nil && isTransport(err)):
		// The image may exist: never call again before looking for it. The wait adopts
		// it when it shows up under our stamp, and fails the row at wait_timeout if not.
		bctx := context.WithoutCancel(ctx)
		if _, nerr := r.store.NoteImage(bctx, row.Row, store.EventImageNote,
			"createImage outcome unknown ("+cloud.Reason(err)+"); looking for our stamped image"); nerr != nil {
			return row, false, nerr
		}
		adopted, found, aerr := ru.adopt(ctx, row, "createImage outcome unknown")
		if aerr == nil && found {
			return adopted, true, nil
		}
		return row, true, nil
	case ctx.Err() != nil:
		// Cancelled mid-call: the outcome is unknown; the next run of the slot looks first.
		return row, false, ctx.Err()
	default:
		return row, false, ru.failRow(context.WithoutCancel(ctx), row, res, "createImage: "+cloud.Reason(err))
	}
}

// isTransport reports an error that is not one of the cloud's verdicts: the request
// may have reached the cloud.
func isTransport(err error) bool {
	for _, k := range []error{cloud.ErrNotFound, cloud.ErrBusy, cloud.ErrProtected, cloud.ErrInUse, cloud.ErrQuota,
		cloud.ErrInvalid, cloud.ErrUnavailable} {
		if errors.Is(err, k) {
			return false
		}
	}
	return true
}

// adopt looks for our stamped image of the row's (policy, server, slot) and records
// it. found is false when there is none.
func (ru *run) adopt(ctx context.Context, row store.Image, why string) (store.Image, bool, error) {
	r := ru.r
	stamp := cloud.Stamp{Owner: r.store.Owner(), Policy: row.Policy, Server: row.ServerID, Slot: StampSlot(row.Slot)}
	images, err := ru.cloud.ListImages(ctx, stamp.Properties())
	if err != nil {
		return row, false, err
	}
	img, ok := pickStamped(images, stamp)
	if !ok {
		return row, false, nil
	}
	msg := fmt.Sprintf("adopted image %s found by its stamp (%s)", img.ID, why)
	if n := countStamped(images, stamp); n > 1 {
		msg += fmt.Sprintf("; %d images carry this stamp, the oldest was adopted", n)
	}
	adopted, err := r.store.SetImageID(context.WithoutCancel(ctx), row.Row, img.ID, true, msg)
	if err != nil {
		return row, false, err
	}
	ru.log.Info("image adopted", "server_id", row.ServerID, "server_name", row.ServerName, "image_id", img.ID, "image_name", img.Name)
	return adopted, true, nil
}

// pickStamped returns the oldest image carrying exactly stamp and made of the
// stamped server. Nova records the source server as instance_uuid on an
// image-backed server's snapshot (volume-backed ones have none); a snapshot of a
// server booted from one of our images inherits our whole stamp but names its own
// server there, and must never be adopted.
func pickStamped(images []cloud.Image, stamp cloud.Stamp) (cloud.Image, bool) {
	var best cloud.Image
	found := false
	for _, im := range images {
		st, ok := cloud.StampOf(im.Properties)
		if !ok || st != stamp || im.ID == "" {
			continue
		}
		if src := im.Properties["instance_uuid"]; src != "" && src != stamp.Server {
			continue
		}
		if !found || im.CreatedAt.Before(best.CreatedAt) || (im.CreatedAt.Equal(best.CreatedAt) && im.ID < best.ID) {
			best, found = im, true
		}
	}
	return best, found
}

func countStamped(images []cloud.Image, stamp cloud.Stamp) int {
	n := 0
	for _, im := range images {
		if st, ok := cloud.StampOf(im.Properties); ok && st == stamp {
			n++
		}
	}
	return n
}

// render makes the image name and metadata of server s, stamp included.
func (ru *run) render(s cloud.Server) (string, map[string]string, error) {
	p := ru.p
	loc := time.UTC
	if p.Schedule != nil && p.Schedule.Location != nil {
		loc = p.Schedule.Location
	}
	name, meta, err := p.Image.Render(policy.TemplateData{
		Server: policy.ServerInfo{ID: s.ID, Name: s.Name, AZ: s.AvailabilityZone, Tags: s.Tags, Metadata: s.Metadata},
		Policy: policy.PolicyInfo{Name: p.Name},
		Slot:   ru.slot.In(loc),
		Now:    ru.r.now().In(loc),
		RunID:  ru.runID,
	})
	if err != nil {
		return "", nil, fmt.Errorf("render image name and metadata: %w", err)
	}
	if meta == nil {
		meta = map[string]string{}
	}
	stamp := cloud.Stamp{Owner: ru.r.store.Owner(), Policy: p.Name, Server: s.ID, Slot: StampSlot(ru.slot)}
	for k, v := range stamp.Properties() {
		meta[k] = v
	}
	return name, meta, nil
}

// skip records a server that is not imaged, with its reason.
func (ru *run) skip(ctx context.Context, s cloud.Server, res ServerResult, reason, detail string) error {
	ru.event(ctx, store.Event{Kind: store.EventServerSkipped, ServerID: s.ID, Message: reason + ": " + detail})
	ru.r.metrics.ServerSkipped(ru.p.Name, reason)
	ru.log.Info("server skipped", "server_id", s.ID, "server_name", s.Name, "reason", reason, "detail", detail)
	res.Outcome, res.Reason = ServerSkipped, reason
	ru.finish(res)
	return nil
}

// failRow marks a row failed and reports the server failed.
func (ru *run) failRow(ctx context.Context, row store.Image, res ServerResult, reason string) error {
	im, err := ru.r.store.MarkFailed(ctx, row.Row, reason)
	if err != nil {
		return err
	}
	ru.r.metrics.ImageCreated(ru.p.Name, CreateFailed, 0)
	ru.log.Warn("image failed", "server_id", row.ServerID, "server_name", row.ServerName, "image_id", row.ImageID, "image_name", row.Name, "reason", reason)
	res.Outcome, res.Reason, res.ImageRow, res.ImageID = ServerFailed, reason, im.Row, im.ImageID
	ru.finish(res)
	return nil
}

// event appends an audit event about this run's slot.
func (ru *run) event(ctx context.Context, e store.Event) {
	e.Policy, e.Slot, e.SlotID = ru.p.Name, ru.slot, ru.slotID
	if _, err := ru.r.store.AddEvent(context.WithoutCancel(ctx), e); err != nil {
		ru.log.Error("record event", "kind", e.Kind, "err", err)
	}
}

// claim takes a row for this run, so that a resumed wait of the same process
// leaves it alone; false if that wait has it.
func (ru *run) claim(row store.Image) bool {
	ru.mu.Lock()
	for _, c := range ru.claimed {
		if c == row.Row {
			// Ours already: a busy server's intent dropped and written again may get
			// the same row id back.
			ru.mu.Unlock()
			return true
		}
	}
	ru.mu.Unlock()
	if len(ru.r.claim([]store.Image{row})) == 0 {
		return false
	}
	ru.mu.Lock()
	// The row id is all unclaim needs: not a copy of every field and of the decoded
	// metadata per server for the whole run (3.7-4.8 MB of live heap at 10,000 servers).
	ru.claimed = append(ru.claimed, row.Row)
	ru.mu.Unlock()
	return true
}

// finish records a server's final result and reports progress.
func (ru *run) finish(res ServerResult) {
	ru.mu.Lock()
	defer ru.mu.Unlock()
	if _, dup := ru.results[res.ServerID]; dup {
		return
	}
	if ru.existing[res.ServerID] {
		res.Existing = true
	}
	cp := res
	ru.results[res.ServerID] = &cp
	ru.done++
	ru.report(res)
}

// report calls the progress callbacks; ru.mu is held.
func (ru *run) report(res ServerResult) {
	e := ProgressEvent{Policy: ru.p.Name, Slot: ru.slot, Done: ru.done, Total: ru.total, Server: res}
	if ru.r.opts.Progress != nil {
		ru.r.opts.Progress(e)
	}
	if ru.call.Progress != nil {
		ru.call.Progress(e)
	}
}

// progress reports the start of the run (selection done).
func (ru *run) progress(res ServerResult) {
	ru.mu.Lock()
	defer ru.mu.Unlock()
	ru.report(res)
}

// markWaiting reports the servers still being waited on when the run stops early.
func (ru *run) markWaiting(rows []store.Image) {
	for _, im := range rows {
		ru.mu.Lock()
		_, done := ru.results[im.ServerID]
		ru.mu.Unlock()
		if !done {
			ru.finish(ServerResult{ServerID: im.ServerID, ServerName: im.ServerName, Outcome: ServerWaiting,
				ImageID: im.ImageID, ImageRow: im.Row, Adopted: im.Adopted, Reason: "run stopped while waiting"})
		}
	}
}

func (ru *run) sortedResults() []ServerResult {
	ru.mu.Lock()
	defer ru.mu.Unlock()
	out := make([]ServerResult, 0, len(ru.results))
	for _, r := range ru.results {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ServerID < out[j].ServerID })
	return out
}

// waitScope is the run's part of a wait: its slot, cloud, timeout and result sink.
func (ru *run) waitScope() waitScope {
	return waitScope{
		policy: ru.p.Name, slot: ru.slot, timeout: ru.timeout, p: ru.p, cloud: ru.cloud, log: ru.log,
		done: func(im store.Image, outcome ServerOutcome, reason string, d time.Duration) {
			ru.finish(ServerResult{ServerID: im.ServerID, ServerName: im.ServerName, Outcome: outcome, Reason: reason,
				ImageID: im.ImageID, ImageRow: im.Row, Adopted: im.Adopted, Duration: d})
		},
	}
}
