package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// SlotFunc runs one slot of policy p, taken from the config of version cfgVersion.
// It gets the policy and the version, not the config: what it does after its images
// (retention) must ask the config owner. It must record the slot and its outcome
// (ran, caught_up or failed) itself; see RunnerSlots.
type SlotFunc func(ctx context.Context, cfgVersion string, p *policy.Policy, slot time.Time, catchUp bool) error

// RunnerSlots adapts a Runner to the SlotFunc the Scheduler calls: a slot taken on
// time runs with TriggerScheduled, a catch-up with TriggerCatchUp.
func RunnerSlots(r *Runner) SlotFunc {
	return func(ctx context.Context, cfgVersion string, p *policy.Policy, slot time.Time, catchUp bool) error {
		trigger := TriggerScheduled
		if catchUp {
			trigger = TriggerCatchUp
		}
		_, err := r.RunSlot(ctx, cfgVersion, p, slot, trigger)
		return err
	}
}

// Ledger is the part of the lineage store the scheduler reads and writes slots in.
type Ledger interface {
	// LastSlot returns the most recent slot recorded for the policy, whatever its
	// outcome; ok is false when the policy has no slot yet.
	LastSlot(ctx context.Context, policy string) (slot time.Time, ok bool, err error)
	// RecordSlot writes the outcome of a slot the scheduler did not hand to SlotFunc
	// (missed, skipped_overlap), or failed for a run that panicked.
	RecordSlot(ctx context.Context, policy string, slot time.Time, outcome store.SlotOutcome, reason string) error
}

// slotMetrics is the part of *Metrics the scheduler feeds. Every method of *Metrics
// is safe on a nil receiver, so a nil *Metrics is a valid value here.
type slotMetrics interface {
	InitPolicy(policy string)
	RemovePolicy(policy string)
	SlotOutcome(policy string, outcome store.SlotOutcome)
	SetNextSlot(policy string, t time.Time)
}

// Options configure a Scheduler.
type Options struct {
	// RunSlot runs a slot; required.
	RunSlot SlotFunc
	// Prepare, when set, is called PrepareLead before each slot a timer will take
	// (not with Manual), with the policy and that slot: the Runner starts the slot
	// instant's server listing then (Runner.PrepareSlot), so that the runs find it
	// made instead of each waiting for it.
	Prepare func(p *policy.Policy, slot time.Time)
	// Ledger is where slots are read and recorded; required.
	Ledger Ledger
	// Metrics receives slot outcomes and next-slot times; nil for none.
	Metrics slotMetrics
	// Logger receives the scheduler's log; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Manual turns the timers off: the caller drives the scheduler with Tick. Tests
	// use it with a fake Now.
	Manual bool
	// LateGrace is how late a timer may fire and still count as on time (not a
	// catch-up); 0 means one minute.
	LateGrace time.Duration
	// MaxMissedRows bounds the missed slots written one by one per policy and gap;
	// 0 means DefaultMaxMissedRows.
	MaxMissedRows int
}

// ErrDrainInterrupted is returned by Drain when in-flight runs had to be cancelled
// because the drain deadline passed or the caller stopped waiting.
var ErrDrainInterrupted = errors.New("drain interrupted: in-flight runs were cancelled")

// Scheduler takes the slots of every enabled policy: it wakes on each policy's
// schedule, keeps runs of one policy from overlapping, gives every slot an outcome in
// the ledger, catches up after downtime, and swaps configs on reload.
type Scheduler struct {
	opts Options
	log  *slog.Logger
	now  func() time.Time
	cron *cron.Cron

	// runCtx is what in-flight runs see; it is cancelled only when a drain gives up.
	runCtx     context.Context
	cancelRuns context.CancelFunc
	wg         sync.WaitGroup
	// recWG tracks ledger writes alone, so tests can wait for them.
	recWG sync.WaitGroup

	mu       sync.Mutex
	cfg      *policy.Config
	pols     map[string]*policyState
	running  map[string]bool // by policy name; outlives removal so a re-added policy cannot overlap its old run
	inFlight int
	started  bool
	stopped  bool
}

// policyState is the scheduler's bookkeeping for one enabled policy.
type policyState struct {
	entry cron.EntryID
	// prep is the timer of Options.Prepare, 0 without one.
	prep cron.EntryID
	// watermark: every slot at or before it has been handled (run, recorded or, for a
	// new policy, not ours to take).
	watermark time.Time
	// schedKey identifies the schedule, so a reload that leaves it alone keeps the
	// watermark and the timer.
	schedKey string
}

// New returns a Scheduler that takes no slot until Start.
func New(opts Options) *Scheduler {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.LateGrace <= 0 {
		opts.LateGrace = time.Minute
	}
	if opts.MaxMissedRows <= 0 {
		opts.MaxMissedRows = DefaultMaxMissedRows
	}
	if opts.Metrics == nil {
		opts.Metrics = noMetrics{}
	}
	s := &Scheduler{
		opts:    opts,
		log:     opts.Logger,
		now:     opts.Now,
		pols:    map[string]*policyState{},
		running: map[string]bool{},
	}
	s.runCtx, s.cancelRuns = context.WithCancel(context.Background())
	cl := cronLogger{s.log}
	// Recover sits inside SkipIfStillRunning: in v3.0.1 the other order never gives
	// the token back after a panic and skips the job forever. Our jobs only decide
	// and dispatch, so SkipIfStillRunning never drops a slot silently; overlap of the
	// runs themselves is tracked per policy and recorded as skipped_overlap.
	s.cron = cron.New(cron.WithLocation(time.UTC), cron.WithLogger(cl),
		cron.WithChain(cron.SkipIfStillRunning(cl), cron.Recover(cl)))
	return s
}

// Start takes cfg as the current config, settles every enabled policy's slots missed
// while the daemon was down (running the most recent one as a catch-up where the
// policy allows it) and starts the timers. It fails when the ledger cannot be read.
func (s *Scheduler) Start(ctx context.Context, cfg *policy.Config) error {
	now := s.now()
	type start struct {
		p    *policy.Policy
		last time.Time
		ok   bool
	}
	var starts []start
	for _, p := range cfg.Policies {
		if !p.Enabled || p.Schedule == nil {
			continue
		}
		last, ok, err := s.opts.Ledger.LastSlot(ctx, p.Name)
		if err != nil {
			return fmt.Errorf("read last slot of policy %q: %w", p.Name, err)
		}
		starts = append(starts, start{p, last, ok})
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("scheduler already started")
	}
	s.started = true
	s.cfg = cfg
	for _, st := range starts {
		ps := s.addLocked(st.p, now)
		if !st.ok {
			// A policy with no slot yet starts with its next slot: there is nothing
			// it could have missed.
			continue
		}
		ps.watermark = st.last
		s.settleLocked(st.p, now, planRules{
			catchUpLatest: st.p.Schedule.CatchUp == policy.CatchUpLatest,
			maxLateness:   st.p.Schedule.MaxLateness,
			grace:         0,
			missedReason:  "missed while the daemon was not running",
			maxRows:       s.opts.MaxMissedRows,
		})
	}
	if !s.opts.Manual {
		s.cron.Start()
	}
	return nil
}

// Tick settles every enabled policy as if its timer fired at now. The timers call the
// same code per policy; tests with Manual call Tick with a fake clock.
func (s *Scheduler) Tick(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.cfg == nil {
		return
	}
	for _, p := range s.cfg.Policies {
		if _, ok := s.pols[p.Name]; ok {
			s.settleLocked(p, now, s.liveRules(p))
		}
	}
}

// fire is the timer job of one policy.
func (s *Scheduler) fire(name string) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.cfg == nil {
		return
	}
	if p := s.cfg.Policy(name); p != nil {
		if _, ok := s.pols[name]; ok {
			s.settleLocked(p, now, s.liveRules(p))
		}
	}
}

func (s *Scheduler) liveRules(p *policy.Policy) planRules {
	return planRules{
		catchUpLatest: p.Schedule.CatchUp == policy.CatchUpLatest,
		maxLateness:   p.Schedule.MaxLateness,
		grace:         s.opts.LateGrace,
		// A timer that fires past several slots means the host slept or the clock
		// jumped: the daemon was up but could not take them.
		missedReason: "missed: the timer fired late (host suspended or clock changed)",
		maxRows:      s.opts.MaxMissedRows,
	}
}

// settleLocked handles the slots of p due in (watermark, now]: runs at most one and
// records the others. The ledger writes happen in the background so that the lock
// is never held across I/O.
func (s *Scheduler) settleLocked(p *policy.Policy, now time.Time, r planRules) {
	ps := s.pols[p.Name]
	plan := planSlots(p.Schedule, ps.watermark, now, r)
	records := plan.records
	if !plan.run.IsZero() {
		if s.running[p.Name] {
			records = append(records, slotRecord{slot: plan.run, outcome: store.OutcomeSkippedOverlap, count: 1,
				reason: "the previous run of this policy was still going"})
		} else {
			s.dispatchLocked(s.cfg.Version, p, plan.run, plan.catchUp)
		}
	}
	for _, rec := range records {
		if rec.slot.After(ps.watermark) {
			ps.watermark = rec.slot
		}
	}
	if plan.run.After(ps.watermark) {
		ps.watermark = plan.run
	}
	s.opts.Metrics.SetNextSlot(p.Name, p.Schedule.Next(now))
	if len(records) > 0 {
		s.recordLocked(p.Name, records)
	}
}

// recordLocked writes records in the background, tracked by the drain.
func (s *Scheduler) recordLocked(name string, records []slotRecord) {
	s.wg.Add(1)
	s.recWG.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.recWG.Done()
		for _, rec := range records {
			lg := s.log.With(LogKeyPolicy, name, LogKeySlot, rec.slot, LogKeyOutcome, rec.outcome)
			if rec.outcome == store.OutcomeSkippedOverlap {
				lg.Warn("slot skipped: " + rec.reason)
			} else {
				lg.Warn("slot " + string(rec.outcome) + ": " + rec.reason)
			}
			// Writes use a context of their own: a drain that gives up cancels runs,
			// but an outcome that is already decided should still reach the ledger.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := s.opts.Ledger.RecordSlot(ctx, name, rec.slot, rec.outcome, rec.reason)
			cancel()
			if err != nil {
				lg.Error("record slot outcome", LogKeyErr, err)
				continue
			}
			for range rec.count {
				s.opts.Metrics.SlotOutcome(name, rec.outcome)
			}
		}
	}()
}

// waitRecords waits for the ledger writes started so far.
func (s *Scheduler) waitRecords() { s.recWG.Wait() }

// dispatchLocked starts a run of p for slot; the run keeps p (and the version of the
// config it came from), so a reload while it is in flight does not change what it
// images. Retention after it asks the config owner, not the run.
func (s *Scheduler) dispatchLocked(cfgVersion string, p *policy.Policy, slot time.Time, catchUp bool) {
	s.running[p.Name] = true
	s.inFlight++
	s.wg.Add(1)
	lg := s.log.With(LogKeyPolicy, p.Name, LogKeySlot, slot)
	if catchUp {
		lg.Info("catching up a missed slot")
	} else {
		lg.Debug("slot due")
	}
	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			s.running[p.Name] = false
			s.inFlight--
			s.mu.Unlock()
		}()
		defer func() {
			if v := recover(); v != nil {
				lg.Error("run panicked", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := s.opts.Ledger.RecordSlot(ctx, p.Name, slot, store.OutcomeFailed, fmt.Sprintf("panic: %v", v)); err != nil {
					lg.Error("record slot outcome", LogKeyErr, err)
				}
				s.opts.Metrics.SlotOutcome(p.Name, store.OutcomeFailed)
			}
		}()
		if err := s.opts.RunSlot(s.runCtx, cfgVersion, p, slot, catchUp); err != nil {
			lg.Error("slot run failed", LogKeyErr, err)
		}
	}()
}

// addLocked starts taking slots of p from the first one after now.
func (s *Scheduler) addLocked(p *policy.Policy, now time.Time) *policyState {
	ps := &policyState{watermark: now, schedKey: scheduleKey(p.Schedule)}
	name := p.Name
	ps.entry = s.cron.Schedule(cronSchedule{p.Schedule}, cron.FuncJob(func() { s.fire(name) }))
	if prepare := s.opts.Prepare; prepare != nil {
		sched := p.Schedule
		ps.prep = s.cron.Schedule(leadSchedule{cronSchedule{sched}, PrepareLead}, cron.FuncJob(func() {
			// A timer that fired late (past its slot) has nothing left to prepare.
			now := s.now()
			if slot := sched.Next(now); !slot.IsZero() && slot.Sub(now) <= 2*PrepareLead {
				prepare(p, slot)
			}
		}))
	}
	s.pols[name] = ps
	s.opts.Metrics.InitPolicy(name)
	s.opts.Metrics.SetNextSlot(name, p.Schedule.Next(now))
	return ps
}

// removeLocked stops the timers of a policy.
func (s *Scheduler) removeLocked(name string, ps *policyState) {
	s.cron.Remove(ps.entry)
	if ps.prep != 0 {
		s.cron.Remove(ps.prep)
	}
	delete(s.pols, name)
}

// PrepareLead is how long before a slot Options.Prepare is called: about what one
// listing of 10,000 servers takes (11 pages, BENCHMARKS.md section 3), so that it
// is made by the slot instant. A server created or tagged within it may wait for
// the next slot; the listing is never an instant anyway (its pages are read one
// after another), this moves that window from just after the slot to just before.
const PrepareLead = 2 * time.Second

// leadSchedule fires lead before each instant of s.
type leadSchedule struct {
	s    cron.Schedule
	lead time.Duration
}

func (l leadSchedule) Next(t time.Time) time.Time {
	next := l.s.Next(t.Add(l.lead))
	if next.IsZero() {
		return next
	}
	return next.Add(-l.lead)
}

// Swap makes cfg the current config. Added (or newly enabled) policies start with
// their next slot; removed (or disabled) ones stop taking slots, and nothing of
// theirs is deleted for it; changed ones take effect from their next slot. Runs in
// flight keep the policy they started with for what they image; retention after
// them asks the config owner (Retention), so it follows cfg at once. The daemon
// subscribes Swap to its policy.Coordinator.
func (s *Scheduler) Swap(cfg *policy.Config) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	next := map[string]*policy.Policy{}
	for _, p := range cfg.Policies {
		if p.Enabled && p.Schedule != nil {
			next[p.Name] = p
		}
	}
	oldByName := map[string]*policy.Policy{}
	if s.cfg != nil {
		for _, p := range s.cfg.Policies {
			oldByName[p.Name] = p
		}
	}
	for name, ps := range s.pols {
		if _, keep := next[name]; keep {
			continue
		}
		s.removeLocked(name, ps)
		s.opts.Metrics.RemovePolicy(name)
		s.log.Info("policy no longer scheduled; its images are kept", LogKeyPolicy, name)
	}
	for _, p := range cfg.Policies {
		if next[p.Name] == nil {
			continue
		}
		ps, ok := s.pols[p.Name]
		switch {
		case !ok:
			s.addLocked(p, now)
			s.log.Info("policy scheduled", LogKeyPolicy, p.Name, "next_slot", p.Schedule.Next(now))
		case ps.schedKey != scheduleKey(p.Schedule):
			// A slot of the old schedule that is due but whose timer has not fired yet
			// still belongs to the old version; take it before switching.
			if old := oldByName[p.Name]; old != nil && old.Schedule != nil {
				s.settleLocked(old, now, s.liveRules(old))
			}
			s.removeLocked(p.Name, ps)
			nps := s.addLocked(p, now)
			if ps.watermark.After(nps.watermark) {
				nps.watermark = ps.watermark
			}
			s.log.Info("policy schedule changed", LogKeyPolicy, p.Name, "next_slot", p.Schedule.Next(now))
		default:
			if old := oldByName[p.Name]; old != nil && old.Version != p.Version {
				s.log.Info("policy changed; takes effect from its next slot", LogKeyPolicy, p.Name)
			}
			s.opts.Metrics.SetNextSlot(p.Name, p.Schedule.Next(now))
		}
	}
	s.cfg = cfg
}

// Config returns the current config.
func (s *Scheduler) Config() *policy.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// InFlight returns how many runs are going.
func (s *Scheduler) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight
}

// Go runs fn in the background under the same context and drain as the slot runs;
// the daemon resumes the waits of a previous process with it.
func (s *Scheduler) Go(name string, fn func(ctx context.Context) error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() {
			if v := recover(); v != nil {
				s.log.Error(name+" panicked", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			}
		}()
		if err := fn(s.runCtx); err != nil {
			s.log.Error(name+" failed", LogKeyErr, err)
		}
	}()
}

// Stop takes no new slots from now on. Runs in flight go on; Drain waits for them.
func (s *Scheduler) Stop() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	s.mu.Unlock()
	// Stop waits for robfig's loop; it must not run under s.mu, which jobs take.
	s.cron.Stop()
}

// Drain stops taking slots and waits for in-flight work until ctx is done. When ctx
// ends first it cancels the runs, waits up to grace for them to return, and returns
// ErrDrainInterrupted; images still being waited on are left for ResumeWaits.
func (s *Scheduler) Drain(ctx context.Context, grace time.Duration) error {
	s.Stop()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancelRuns()
		return nil
	case <-ctx.Done():
	}
	s.log.Warn("drain deadline reached; cancelling in-flight runs", "in_flight", s.InFlight())
	s.cancelRuns()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Error("in-flight runs did not return after cancellation", "in_flight", s.InFlight())
	}
	return ErrDrainInterrupted
}

// noMetrics stands in when no metrics are wanted.
type noMetrics struct{}

func (noMetrics) InitPolicy(string)                     {}
func (noMetrics) RemovePolicy(string)                   {}
func (noMetrics) SlotOutcome(string, store.SlotOutcome) {}
func (noMetrics) SetNextSlot(string, time.Time)         {}

// cronSchedule hands robfig our schedule, so every slot time (and its DST handling)
// is ours, not robfig's.
type cronSchedule struct{ s slotClock }

// Next implements cron.Schedule.
func (c cronSchedule) Next(t time.Time) time.Time { return c.s.Next(t) }

func scheduleKey(s *policy.Schedule) string {
	loc := ""
	if s.Location != nil {
		loc = s.Location.String()
	}
	return fmt.Sprintf("%s|%s|%s", s.Spec, loc, s.Every)
}

// cronLogger sends robfig's chatter to slog: its Info is per-wakeup noise.
type cronLogger struct{ l *slog.Logger }

func (c cronLogger) Info(msg string, kv ...any) { c.l.Debug("cron: "+msg, kv...) }
func (c cronLogger) Error(err error, msg string, kv ...any) {
	c.l.Error("cron: "+msg, append([]any{"err", err}, kv...)...)
}
