package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// memLedger is an in-memory Ledger.
type memLedger struct {
	mu    sync.Mutex
	slots map[string]map[time.Time]store.SlotOutcome // policy -> slot -> outcome
	fail  error
}

func newMemLedger() *memLedger {
	return &memLedger{slots: map[string]map[time.Time]store.SlotOutcome{}}
}

func (l *memLedger) LastSlot(_ context.Context, p string) (time.Time, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail != nil {
		return time.Time{}, false, l.fail
	}
	var last time.Time
	for s := range l.slots[p] {
		if s.After(last) {
			last = s
		}
	}
	return last, !last.IsZero(), nil
}

func (l *memLedger) RecordSlot(_ context.Context, p string, slot time.Time, outcome store.SlotOutcome, _ string) error {
	l.set(p, slot, outcome)
	return nil
}

func (l *memLedger) set(p string, slot time.Time, outcome store.SlotOutcome) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.slots[p] == nil {
		l.slots[p] = map[time.Time]store.SlotOutcome{}
	}
	l.slots[p][slot.UTC()] = outcome
}

// ledger returns "HH:MM:SS outcome" lines of a policy, oldest first.
func (l *memLedger) ledger(p string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for s, o := range l.slots[p] {
		out = append(out, s.UTC().Format("15:04:05")+" "+string(o))
	}
	sort.Strings(out)
	return out
}

// runCall is one RunSlot call seen by fakeRuns.
type runCall struct {
	policy  string
	version string
	slot    time.Time
	catchUp bool
}

// fakeRuns is a SlotFunc that records its calls in the ledger like RunSlot does and
// can be told to block until released.
type fakeRuns struct {
	ledger  *memLedger
	calls   chan runCall
	mu      sync.Mutex
	block   map[string]chan struct{} // policy -> closed to release
	panicky map[string]bool
}

func newFakeRuns(l *memLedger) *fakeRuns {
	return &fakeRuns{ledger: l, calls: make(chan runCall, 100), block: map[string]chan struct{}{},
		panicky: map[string]bool{}}
}

func (f *fakeRuns) run(ctx context.Context, _ string, p *policy.Policy, slot time.Time, catchUp bool) error {
	outcome := store.OutcomeRan
	if catchUp {
		outcome = store.OutcomeCaughtUp
	}
	f.ledger.set(p.Name, slot, "running")
	f.calls <- runCall{p.Name, p.Version, slot, catchUp}
	f.mu.Lock()
	ch, panicky := f.block[p.Name], f.panicky[p.Name]
	f.mu.Unlock()
	if panicky {
		panic("boom")
	}
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			f.ledger.set(p.Name, slot, "running") // left for ResumeWaits
			return ctx.Err()
		}
	}
	f.ledger.set(p.Name, slot, outcome)
	return nil
}

func (f *fakeRuns) blockPolicy(name string) chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan struct{})
	f.block[name] = ch
	return ch
}

// setPanicky makes the runs of policy p panic (or stop panicking).
func (f *fakeRuns) setPanicky(p string, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.panicky[p] = on
}

func (f *fakeRuns) next(t *testing.T) runCall {
	t.Helper()
	select {
	case c := <-f.calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no run started")
		return runCall{}
	}
}

func (f *fakeRuns) none(t *testing.T) {
	t.Helper()
	select {
	case c := <-f.calls:
		t.Fatalf("unexpected run %+v", c)
	default:
	}
}

func everyPolicy(name string, every time.Duration, catchUp policy.CatchUp, maxLate time.Duration) *policy.Policy {
	return &policy.Policy{
		Name: name, Enabled: true, Version: name + "-v1",
		Schedule: &policy.Schedule{Spec: "@every " + every.String(), Location: time.UTC, Every: every,
			CatchUp: catchUp, MaxLateness: maxLate},
	}
}

func config(ps ...*policy.Policy) *policy.Config { return &policy.Config{Version: "c1", Policies: ps} }

// base is a slot-aligned instant for 10 s schedules.
var base = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// tickHarness is a Scheduler ticked by hand on a manual clock, over fake runs and an
// in-memory ledger: the Scheduler's tests need no cloud and no store (harness_test.go).
type tickHarness struct {
	s      *Scheduler
	clock  *storetest.Clock
	ledger *memLedger
	runs   *fakeRuns
}

func newTickHarness(t *testing.T) *tickHarness {
	t.Helper()
	h := &tickHarness{clock: storetest.NewClock(base), ledger: newMemLedger()}
	h.runs = newFakeRuns(h.ledger)
	h.s = New(Options{RunSlot: h.runs.run, Ledger: h.ledger, Now: h.clock.Now, Manual: true,
		LateGrace: 5 * time.Second})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = h.s.Drain(ctx, time.Second)
	})
	return h
}

// start starts the Scheduler on cfg.
func (h *tickHarness) start(t *testing.T, cfg *policy.Config) {
	t.Helper()
	if err := h.s.Start(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
}

// tick moves the clock and ticks.
func (h *tickHarness) tick(d time.Duration) time.Time {
	h.clock.Advance(d)
	now := h.clock.Now()
	h.s.Tick(now)
	return now
}

// settle waits until no run is in flight and the ledger writes are done.
func (h *tickHarness) settle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.s.InFlight() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("runs did not finish")
		}
		time.Sleep(time.Millisecond)
	}
	h.s.waitRecords()
}

func equal(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

func TestTickRunsEverySlotOnce(t *testing.T) {
	h := newTickHarness(t)
	h.start(t, config(everyPolicy("p", 10*time.Second, policy.CatchUpLatest, time.Minute)))
	h.tick(time.Second) // 12:00:01: slot 12:00:00 is not after the start
	h.runs.none(t)
	h.tick(9 * time.Second) // 12:00:10
	if c := h.runs.next(t); !c.slot.Equal(base.Add(10*time.Second)) || c.catchUp {
		t.Fatalf("run %+v, want slot 12:00:10 on time", c)
	}
	h.settle(t)
	h.s.Tick(h.clock.Now()) // the same instant again takes nothing
	h.tick(2 * time.Second)
	h.runs.none(t)
	h.tick(8 * time.Second) // 12:00:20
	if c := h.runs.next(t); !c.slot.Equal(base.Add(20 * time.Second)) {
		t.Fatalf("run %+v, want slot 12:00:20", c)
	}
	h.settle(t)
	if got, want := h.ledger.ledger("p"), []string{"12:00:10 ran", "12:00:20 ran"}; !equal(got, want) {
		t.Fatalf("ledger %v, want %v", got, want)
	}
}

func TestOverlapIsRecordedSkipped(t *testing.T) {
	h := newTickHarness(t)
	h.start(t, config(everyPolicy("p", 10*time.Second, policy.CatchUpLatest, time.Minute)))
	release := h.runs.blockPolicy("p")
	h.tick(10 * time.Second)
	h.runs.next(t)
	h.tick(10 * time.Second) // 12:00:20 arrives while 12:00:10 still runs
	h.runs.none(t)
	h.s.waitRecords()
	if got := h.ledger.ledger("p"); !equal(got, []string{"12:00:10 running", "12:00:20 skipped_overlap"}) {
		t.Fatalf("ledger %v", got)
	}
	close(release)
	h.settle(t)
	h.tick(10 * time.Second) // 12:00:30 runs again
	if c := h.runs.next(t); !c.slot.Equal(base.Add(30 * time.Second)) {
		t.Fatalf("run %+v, want 12:00:30", c)
	}
	h.settle(t)
	want := []string{"12:00:10 ran", "12:00:20 skipped_overlap", "12:00:30 ran"}
	if got := h.ledger.ledger("p"); !equal(got, want) {
		t.Fatalf("ledger %v, want %v", got, want)
	}
}

func TestLateTimerRecordsMissedSlots(t *testing.T) {
	h := newTickHarness(t)
	h.start(t, config(everyPolicy("p", 10*time.Second, policy.CatchUpNone, time.Minute)))
	// The host slept through 12:00:10 and 12:00:20 and woke at 12:00:31: 12:00:30 is
	// within the 5 s grace and runs on time, the two before it are missed.
	h.tick(31 * time.Second)
	if c := h.runs.next(t); !c.slot.Equal(base.Add(30*time.Second)) || c.catchUp {
		t.Fatalf("run %+v, want 12:00:30 on time", c)
	}
	h.settle(t)
	// It sleeps again and wakes at 12:00:47, 7 s after 12:00:40: with catch_up none
	// that slot is missed too.
	h.tick(16 * time.Second)
	h.settle(t)
	h.runs.none(t)
	want := []string{"12:00:10 missed", "12:00:20 missed", "12:00:30 ran", "12:00:40 missed"}
	if got := h.ledger.ledger("p"); !equal(got, want) {
		t.Fatalf("ledger %v, want %v", got, want)
	}
}

func TestStartCatchUp(t *testing.T) {
	// The daemon last took 11:59:00 and comes back at 12:00:03; the policy runs every
	// 10 s, so 11:59:10 .. 12:00:00 (6 slots) were missed while it was down.
	last := base.Add(-time.Minute)
	tests := []struct {
		name       string
		catchUp    policy.CatchUp
		maxLate    time.Duration
		history    bool
		wantRun    bool
		wantLedger []string
	}{
		{"latest within max_lateness", policy.CatchUpLatest, 10 * time.Second, true, true,
			[]string{"11:59:00 ran", "11:59:10 missed", "11:59:20 missed", "11:59:30 missed", "11:59:40 missed",
				"11:59:50 missed", "12:00:00 caught_up"}},
		{"latest beyond max_lateness", policy.CatchUpLatest, 2 * time.Second, true, false,
			[]string{"11:59:00 ran", "11:59:10 missed", "11:59:20 missed", "11:59:30 missed", "11:59:40 missed",
				"11:59:50 missed", "12:00:00 missed"}},
		{"none", policy.CatchUpNone, time.Hour, true, false,
			[]string{"11:59:00 ran", "11:59:10 missed", "11:59:20 missed", "11:59:30 missed", "11:59:40 missed",
				"11:59:50 missed", "12:00:00 missed"}},
		{"no history takes nothing", policy.CatchUpLatest, time.Hour, false, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newTickHarness(t)
			if tt.history {
				h.ledger.set("p", last, store.OutcomeRan)
			}
			h.clock.Set(base.Add(3 * time.Second))
			h.start(t, config(everyPolicy("p", 10*time.Second, tt.catchUp, tt.maxLate)))
			if tt.wantRun {
				if c := h.runs.next(t); !c.slot.Equal(base) || !c.catchUp {
					t.Fatalf("run %+v, want catch-up of 12:00:00", c)
				}
			}
			h.settle(t)
			h.runs.none(t)
			if got := h.ledger.ledger("p"); !equal(got, tt.wantLedger) {
				t.Fatalf("ledger %v\nwant %v", got, tt.wantLedger)
			}
			// Live slots go on after the start either way.
			h.tick(7 * time.Second)
			if c := h.runs.next(t); !c.slot.Equal(base.Add(10*time.Second)) || c.catchUp {
				t.Fatalf("run %+v, want 12:00:10 on time", c)
			}
		})
	}
}

func TestStartBoundsMissedRows(t *testing.T) {
	h := newTickHarness(t)
	h.s.opts.MaxMissedRows = 3
	h.ledger.set("p", base.Add(-time.Hour), store.OutcomeRan)
	h.clock.Set(base.Add(time.Second))
	h.start(t, config(everyPolicy("p", 10*time.Second, policy.CatchUpNone, 0)))
	h.settle(t)
	// 360 slots in the hour: the 3 most recent before 12:00 and 12:00 itself are rows.
	want := []string{"11:00:00 ran", "11:59:30 missed", "11:59:40 missed", "11:59:50 missed", "12:00:00 missed"}
	if got := h.ledger.ledger("p"); !equal(got, want) {
		t.Fatalf("ledger %v\nwant %v", got, want)
	}
}

func TestDisabledPolicyTakesNoSlots(t *testing.T) {
	h := newTickHarness(t)
	off := everyPolicy("off", 10*time.Second, policy.CatchUpLatest, time.Hour)
	off.Enabled = false
	h.ledger.set("off", base.Add(-time.Minute), store.OutcomeRan)
	h.start(t, config(off))
	h.tick(10 * time.Second)
	h.tick(10 * time.Second)
	h.settle(t)
	h.runs.none(t)
	if got := h.ledger.ledger("off"); !equal(got, []string{"11:59:00 ran"}) {
		t.Fatalf("ledger %v: a disabled policy got slots", got)
	}
}

func TestSwapAddsRemovesAndChanges(t *testing.T) {
	h := newTickHarness(t)
	a := everyPolicy("a", 10*time.Second, policy.CatchUpLatest, time.Minute)
	b := everyPolicy("b", 10*time.Second, policy.CatchUpLatest, time.Minute)
	h.start(t, config(a, b))
	releaseA := h.runs.blockPolicy("a")
	h.tick(10 * time.Second) // 12:00:10: both run; a blocks
	got := map[string]runCall{}
	for range 2 {
		c := h.runs.next(t)
		got[c.policy] = c
	}
	if got["a"].version != "a-v1" || got["b"].version != "b-v1" {
		t.Fatalf("runs %+v", got)
	}

	// Reload: a changes to every 30 s (version 2), b goes, c comes.
	a2 := everyPolicy("a", 30*time.Second, policy.CatchUpLatest, time.Minute)
	a2.Version = "a-v2"
	c := everyPolicy("c", 10*time.Second, policy.CatchUpLatest, time.Minute)
	h.clock.Set(base.Add(12 * time.Second))
	h.s.Swap(&policy.Config{Version: "c2", Policies: []*policy.Policy{a2, c}})

	close(releaseA) // the in-flight run of a finishes under v1
	h.settle(t)
	h.tick(8 * time.Second) // 12:00:20: c runs; a's old 10 s slot is gone; b is gone
	if call := h.runs.next(t); call.policy != "c" || !call.slot.Equal(base.Add(20*time.Second)) {
		t.Fatalf("run %+v, want c at 12:00:20", call)
	}
	h.settle(t)
	h.runs.none(t)
	h.tick(10 * time.Second) // 12:00:30: a (v2) and c
	got = map[string]runCall{}
	for range 2 {
		call := h.runs.next(t)
		got[call.policy] = call
	}
	if got["a"].version != "a-v2" || !got["a"].slot.Equal(base.Add(30*time.Second)) || got["c"].policy != "c" {
		t.Fatalf("runs at 12:00:30: %+v", got)
	}
	h.settle(t)
	h.runs.none(t)
	if got := h.ledger.ledger("b"); !equal(got, []string{"12:00:10 ran"}) {
		t.Fatalf("b took slots after removal: %v", got)
	}
	if got := h.ledger.ledger("a"); !equal(got, []string{"12:00:10 ran", "12:00:30 ran"}) {
		t.Fatalf("a ledger %v", got)
	}
}

func TestSwapTakesDueSlotOfOldSchedule(t *testing.T) {
	h := newTickHarness(t)
	h.start(t, config(everyPolicy("a", 10*time.Second, policy.CatchUpLatest, time.Minute)))
	// 12:00:10 is due but its timer has not fired when the reload changes the schedule.
	h.clock.Set(base.Add(10*time.Second + time.Millisecond))
	a2 := everyPolicy("a", 60*time.Second, policy.CatchUpLatest, time.Minute)
	a2.Version = "a-v2"
	h.s.Swap(config(a2))
	if c := h.runs.next(t); !c.slot.Equal(base.Add(10*time.Second)) || c.version != "a-v1" {
		t.Fatalf("run %+v, want the old version's 12:00:10", c)
	}
	h.settle(t)
}

func TestPanickingRunIsFailedAndPolicyGoesOn(t *testing.T) {
	h := newTickHarness(t)
	h.start(t, config(everyPolicy("p", 10*time.Second, policy.CatchUpLatest, time.Minute)))
	h.runs.setPanicky("p", true)
	h.tick(10 * time.Second)
	h.runs.next(t)
	h.settle(t)
	h.runs.setPanicky("p", false)
	h.tick(10 * time.Second)
	h.runs.next(t)
	h.settle(t)
	if got, want := h.ledger.ledger("p"), []string{"12:00:10 failed", "12:00:20 ran"}; !equal(got, want) {
		t.Fatalf("ledger %v, want %v", got, want)
	}
}

func TestDrain(t *testing.T) {
	t.Run("clean", func(t *testing.T) {
		h := newTickHarness(t)
		h.start(t, config(everyPolicy("p", 10*time.Second, policy.CatchUpLatest, time.Minute)))
		release := h.runs.blockPolicy("p")
		h.tick(10 * time.Second)
		h.runs.next(t)
		h.s.Stop()
		done := make(chan error)
		go func() { done <- h.s.Drain(context.Background(), time.Second) }()
		// A stopped scheduler takes no new slots, not even as skipped_overlap.
		h.tick(10 * time.Second)
		close(release)
		if err := <-done; err != nil {
			t.Fatalf("clean drain: %v", err)
		}
		h.runs.none(t)
		if got := h.ledger.ledger("p"); !equal(got, []string{"12:00:10 ran"}) {
			t.Fatalf("ledger %v", got)
		}
	})
	t.Run("deadline cancels runs", func(t *testing.T) {
		h := newTickHarness(t)
		h.start(t, config(everyPolicy("p", 10*time.Second, policy.CatchUpLatest, time.Minute)))
		h.runs.blockPolicy("p")
		h.tick(10 * time.Second)
		h.runs.next(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // a second signal: stop waiting
		if err := h.s.Drain(ctx, 10*time.Second); !errors.Is(err, ErrDrainInterrupted) {
			t.Fatalf("drain = %v, want ErrDrainInterrupted", err)
		}
		if h.s.InFlight() != 0 {
			t.Fatal("cancelled run did not return")
		}
		if got := h.ledger.ledger("p"); !equal(got, []string{"12:00:10 running"}) {
			t.Fatalf("ledger %v: the interrupted slot should stay running for the next start", got)
		}
	})
}

func TestStartFailsWhenLedgerFails(t *testing.T) {
	h := newTickHarness(t)
	h.ledger.fail = errors.New("disk on fire")
	err := h.s.Start(context.Background(), config(everyPolicy("p", 10*time.Second, policy.CatchUpLatest, time.Minute)))
	if err == nil || !errors.Is(err, h.ledger.fail) {
		t.Fatalf("start = %v, want the ledger error", err)
	}
}

// TestTimersFireSlots runs robfig's real timers on a 1 s schedule: slots arrive on
// their own, each once, aligned to the second.
func TestTimersFireSlots(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for real timers")
	}
	ledger := newMemLedger()
	runs := newFakeRuns(ledger)
	s := New(Options{RunSlot: runs.run, Ledger: ledger})
	if err := s.Start(context.Background(), config(everyPolicy("p", time.Second, policy.CatchUpLatest, time.Minute))); err != nil {
		t.Fatal(err)
	}
	a := runs.next(t)
	b := runs.next(t)
	if err := s.Drain(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
	if a.slot.Nanosecond() != 0 || !b.slot.After(a.slot) || a.catchUp || b.catchUp {
		t.Fatalf("slots %v then %v", a, b)
	}
}
