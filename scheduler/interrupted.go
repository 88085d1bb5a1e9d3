package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// InterruptedSlots returns the slots a previous process left running: it was killed
// or crashed mid-run, so nothing recorded their outcome. Call it before the
// scheduler starts, while no run of this process can be running.
func (r *Runner) InterruptedSlots(ctx context.Context) ([]store.Slot, error) {
	slots, err := r.sh.store.Slots(ctx, store.SlotFilter{Outcome: store.OutcomeRunning})
	if err != nil {
		return nil, fmt.Errorf("interrupted slots: %w", err)
	}
	return slots, nil
}

// ResumeInterruptedSlots gives every interrupted slot an outcome. A scheduled or
// caught-up slot of a policy that the config in force (cfgs) still has enabled, and no older than its
// max_lateness, is run again: the run is idempotent by (policy, server, slot), so
// it adopts or waits for the images the dead process asked for and asks only for
// the servers it had not reached. Any other interrupted slot (a manual run, a
// removed or disabled policy, too late) is recorded failed with the reason. Call it
// before ResumeWaits, so that each re-run claims and waits for its own images.
// Slots of different policies resume concurrently.
// The config is asked for when the slots are resumed, not when the process started:
// a reload before that counts.
func (r *Runner) ResumeInterruptedSlots(ctx context.Context, cfgs *policy.Coordinator, slots []store.Slot) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, err)
	}
	for _, sl := range slots {
		if ctx.Err() != nil {
			break
		}
		cfg := cfgs.Current()
		p := cfg.Policy(sl.Policy)
		reason := ""
		switch {
		case sl.Trigger == store.TriggerManual:
			reason = "interrupted: the manual run's process ended before it finished"
		case p == nil:
			reason = "interrupted, and the policy is no longer in the file"
		case !p.Enabled:
			reason = "interrupted, and the policy is now disabled"
		case p.Schedule != nil && p.Schedule.MaxLateness > 0 && r.sh.now().Sub(sl.Slot) > p.Schedule.MaxLateness:
			reason = fmt.Sprintf("interrupted, and now later than max_lateness %s: not resumed", p.Schedule.MaxLateness)
		}
		if reason != "" {
			if err := r.sh.store.FinishSlot(ctx, sl.ID, store.OutcomeFailed, reason, sl.Counts); err != nil {
				fail(fmt.Errorf("finish interrupted slot %s %s: %w", sl.Policy, StampSlot(sl.Slot), err))
				continue
			}
			r.sh.metrics.SlotOutcome(sl.Policy, store.OutcomeFailed)
			r.sh.log.Warn("interrupted slot not resumed", LogKeyPolicy, sl.Policy, LogKeySlot, StampSlot(sl.Slot), LogKeyReason, reason)
			continue
		}
		r.sh.log.Info("resuming interrupted slot", LogKeyPolicy, sl.Policy, LogKeySlot, StampSlot(sl.Slot))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.RunSlot(ctx, cfg.Version, p, sl.Slot, Trigger(sl.Trigger)); err != nil {
				fail(fmt.Errorf("resume interrupted slot %s %s: %w", sl.Policy, StampSlot(sl.Slot), err))
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		fail(err)
	}
	return errors.Join(errs...)
}

// ResumeWaits picks up the images a previous process left creating (or requested,
// with an unknown outcome) and waits for them, in batches by (policy, slot). Each
// batch takes its policy's wait_timeout from the config in force when it starts; a
// policy no longer there is waited for with DefaultWaitTimeout. It returns when
// every such image is good or failed, or ctx ends. Call it after
// ResumeInterruptedSlots, so that each re-run claims and waits for its own images.
func (r *Runner) ResumeWaits(ctx context.Context, cfgs *policy.Coordinator) error {
	return r.w.resume(ctx, cfgs)
}
