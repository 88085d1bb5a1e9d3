package scheduler

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// busyRunner is a Runner of the harness that looks at busy servers again quickly.
func busyRunner(h *harness) *Runner {
	return h.runner(func(o *runnerOptions) { o.BusyRetryInterval = 20 * time.Millisecond })
}

// TestBusyServerRetriedWithinSlot: a server busy when its turn comes is looked at
// again with backoff and imaged, in the same slot, instead of losing the slot:
//   - task state: busy with someone else's snapshot (task_state image_uploading)
//     when the slot starts, imaged once the task ends, with one createImage call;
//   - 409: createImage answered 409 twice (a task appeared after the listing), tried
//     again within the slot, and the row records one accepted attempt.
func TestBusyServerRetriedWithinSlot(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spec  simcloud.ServerSpec
		busy  func(h *harness, id string)                               // makes the server busy
		check func(t *testing.T, h *harness, id string, slot time.Time) // beyond the good outcome
	}{
		{name: "task state", spec: simcloud.ServerSpec{TaskState: "image_uploading"},
			busy: func(h *harness, id string) {
				go func() {
					time.Sleep(300 * time.Millisecond)
					h.sim.SetServerTaskState(id, "")
				}()
			},
			check: func(t *testing.T, h *harness, id string, _ time.Time) {
				if n := h.sim.CreateImageCalls(id); n != 1 {
					t.Errorf("%d createImage calls, want 1", n)
				}
			}},
		{name: "409", busy: func(h *harness, _ string) {
			h.sim.SetFault(simcloud.Fault{Op: "compute.createImage", ErrorStatus: 409, Count: 2})
		},
			check: func(t *testing.T, h *harness, id string, slot time.Time) {
				row, err := h.store.ImageByKey(context.Background(), "web", id, slot)
				if err != nil || row.State != store.ImageGood || row.Attempts != 1 {
					t.Errorf("row %+v (%v): want good after 1 accepted attempt", row, err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			spec := tc.spec
			spec.Name, spec.Tags = "w", []string{"backup=daily"}
			id := h.sim.AddServer(spec)
			tc.busy(h, id)
			slot := time.Now().UTC().Truncate(time.Second)
			rep, err := busyRunner(h).RunSlot(context.Background(), h.cfg.Version, h.p, slot, TriggerManual)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Servers) != 1 || rep.Servers[0].Outcome != ServerGood {
				t.Fatalf("busy server: %+v, want good once it was free", rep.Servers)
			}
			tc.check(t, h, id, slot)
		})
	}
}

// TestServerSkipped: a server that must not be imaged now is skipped with the
// reason that says why, and no second createImage goes to it.
//   - busy past max_lateness: a server busy for good is skipped busy once the
//     slot's max_lateness has passed, not looked at forever;
//   - locked: Nova's locked server is skipped locked, and createImage is not called;
//   - in flight: the image of an earlier slot of the server is still being made (its
//     run stopped mid-wait, within wait_timeout): the next slot does not start a
//     second image of it, and says in_flight.
func TestServerSkipped(t *testing.T) {
	for _, tc := range []struct {
		name        string
		opts        []harnessOption
		spec        simcloud.ServerSpec
		run         func(h *harness) (time.Time, Trigger) // what happened before; the slot and trigger of the run under test
		reason      string
		createCalls int // createImage calls on the server at the end; -1: not checked
	}{
		{name: "busy past max_lateness", spec: simcloud.ServerSpec{TaskState: "resize_migrating"}, reason: SkipBusy, createCalls: -1,
			// A scheduled slot long past: its max_lateness (one day) is over.
			run: func(h *harness) (time.Time, Trigger) { return h.slot, TriggerScheduled }},
		{name: "locked", spec: simcloud.ServerSpec{Locked: true}, reason: SkipLocked, createCalls: 0,
			run: func(h *harness) (time.Time, Trigger) { return time.Now().UTC().Truncate(time.Second), TriggerManual }},
		{name: "in flight", opts: []harnessOption{withWaitTimeout("1h")}, reason: SkipInFlight, createCalls: 1,
			run: func(h *harness) (time.Time, Trigger) {
				crashing := h.runner(func(o *runnerOptions) {
					o.hooks.beforePoll = func(int) error { return errors.New("stop") }
				})
				_, _ = crashing.RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerManual)
				return h.slot.Add(24 * time.Hour), TriggerManual
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.opts...)
			spec := tc.spec
			spec.Name, spec.Tags = "w", []string{"backup=daily"}
			id := h.sim.AddServer(spec)
			slot, trigger := tc.run(h)
			rep, err := busyRunner(h).RunSlot(context.Background(), h.cfg.Version, h.p, slot, trigger)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Servers) != 1 || rep.Servers[0].Outcome != ServerSkipped || rep.Servers[0].Reason != tc.reason {
				t.Fatalf("report %+v, want skipped %s", rep.Servers, tc.reason)
			}
			if n := h.sim.CreateImageCalls(id); tc.createCalls >= 0 && n != tc.createCalls {
				t.Errorf("%d createImage calls, want %d", n, tc.createCalls)
			}
		})
	}
}

// TestInFlightAppliesToResumedIntent: a slot's row written before a crash, with no
// createImage sent, is resumed while an earlier slot's image of the server is in
// flight: no second image starts, and the empty intent is dropped.
func TestInFlightAppliesToResumedIntent(t *testing.T) {
	h := newHarness(t, withWaitTimeout("1h"))
	id := h.sim.AddServer(simcloud.ServerSpec{Name: "w", Tags: []string{"backup=daily"}})
	ctx := context.Background()
	later := h.slot.Add(24 * time.Hour)
	afterIntent := h.runner(func(o *runnerOptions) { o.hooks.afterIntent = func(string) error { return errors.New("stop") } })
	_, _ = afterIntent.RunSlot(ctx, h.cfg.Version, h.p, later, TriggerManual)
	midWait := h.runner(func(o *runnerOptions) { o.hooks.beforePoll = func(int) error { return errors.New("stop") } })
	_, _ = midWait.RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerManual)
	rep, err := busyRunner(h).RunSlot(ctx, h.cfg.Version, h.p, later, TriggerManual)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Servers) != 1 || rep.Servers[0].Reason != SkipInFlight {
		t.Fatalf("report %+v, want skipped in_flight", rep.Servers)
	}
	if n := h.sim.CreateImageCalls(id); n != 1 {
		t.Errorf("%d createImage calls, want 1", n)
	}
	if _, err := h.store.ImageByKey(ctx, "web", id, later); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the empty intent of the skipped slot is still there (%v)", err)
	}
}
