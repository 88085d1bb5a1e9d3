package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/scheduler"
	"github.com/imagekeeper/imagekeeper/store"
)

// runOptions are the flags of `imagekeeper run`.
type runOptions struct {
	*common
	policy  string
	servers []string
	slot    string
	quiet   bool
	noPrune bool
}

// newRunCommand builds `imagekeeper run`.
func newRunCommand(m *Main) *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run --policy NAME [--server NAME|ID ...] [--slot TIME]",
		Short: "run one slot of a policy now, with progress",
		Long: `Runs one slot of a policy now: images every server the policy selects (or the
--server ones), waits for each image, prints a line per server as it finishes and
a progress line at least every 10 seconds, then applies retention.

The current minute is the slot, so running it twice in one minute makes no
second image; --slot re-runs a missed or failed slot of the schedule (or an
earlier manual one). When a daemon serves the lineage, the daemon does the run,
with its own locks, and its progress streams back here.

Exit 0 when every selected server got a good image or was skipped for a recorded
reason, 1 otherwise.`,
		Example: `  imagekeeper run --policy web-daily
  imagekeeper run --policy web-daily --server web-1 --server 0b6f9a51-3c2e-4d7a-8f10-2b9e4c6d8a01
  imagekeeper run --policy web-daily --slot 2026-11-30T03:00:00Z
  imagekeeper run --policy web-daily --quiet --no-prune`,
		Args: noArgs,
		RunE: inDaemonOr(o, func(cmd *cobra.Command, args []string) error {
			return runBackup(cmd.Context(), m, o)
		}),
	}
	o.common = newCommon(m, cmd).withConfig().withLogs("warn")
	f := cmd.Flags()
	f.StringVar(&o.policy, "policy", "", "policy to run (required)")
	f.StringArrayVar(&o.servers, "server", nil, "only this server, by name or id (repeatable); it must be one the policy selects")
	f.StringVar(&o.slot, "slot", "", "re-run this slot (RFC 3339, e.g. 2026-11-30T03:00:00Z): a slot of the schedule or an earlier manual one")
	f.BoolVar(&o.quiet, "quiet", false, "print only the summary")
	f.BoolVar(&o.noPrune, "no-prune", false, "skip retention after the run")
	completePolicies(cmd, o.common)
	return cmd
}

// runBackup runs one slot of one policy now: the current minute is the slot, so
// running it twice in one minute makes no second image. Exit 0 when every selected
// server got a good image or was skipped for a recorded reason, 1 otherwise.
func runBackup(ctx context.Context, m *Main, o *runOptions) error {
	if o.policy == "" {
		return usageError("--policy is required")
	}
	wired, err := o.wire(ctx, wireOptions{policy: o.policy, store: true, exclusive: true, cloud: true})
	if err != nil {
		return err
	}
	defer wired.close()
	cfg, p := wired.cfg, wired.policies[0]

	slot, err := o.runSlot(ctx, wired, p)
	if err != nil {
		return err
	}
	servers, err := o.resolveServers(ctx, wired, p)
	if err != nil {
		return err
	}

	out := &lockedWriter{w: m.Stdout}
	var done atomic.Int64
	progress := func(e scheduler.ProgressEvent) {
		done.Store(int64(e.Done))
		if !o.quiet {
			printProgress(out, e)
		}
	}
	shared := wired.shared(scheduler.SharedOptions{PollInterval: m.PollInterval, MaxPollInterval: 4 * m.PollInterval})
	runner := wired.runner(shared)
	if wired.daemon == nil {
		// A one-shot run killed between a pre and its post hook left an application
		// frozen (the daemon does this at its start): thaw it before anything else.
		if n, err := runner.RunOwedPostHooks(ctx); err != nil {
			return withExitCode(exitFailure, err)
		} else if n > 0 {
			fmt.Fprintf(out, "ran %d post hook(s) an interrupted earlier run owed\n", n)
		}
	}
	stopTicker := o.tickProgress(ctx, out, wired, p, slot, &done)
	rep, runErr := runner.RunSlotWith(ctx, cfg.Version, p, slot, scheduler.TriggerManual,
		scheduler.RunSlotOptions{Servers: servers, Progress: progress, SkipRetention: true})
	stopTicker()
	if rep != nil {
		printSummary(out, rep)
	}
	// Retention follows every settled backup run, here as in the daemon, so that a
	// crontab of `imagekeeper run` keeps the same promises; it asks the file's
	// config for the policy by name, as the daemon's retention asks the one in force.
	if !o.noPrune && runErr == nil && rep != nil && rep.Outcome != store.OutcomeFailed {
		prep, err := scheduler.NewRetention(shared, wired.configs(), scheduler.RetentionOptions{}).
			Prune(ctx, p.Name, scheduler.PruneOptions{})
		if prep != nil {
			fmt.Fprintln(out, "retention: "+pruneSummary(prep))
		}
		if err != nil {
			runErr = fmt.Errorf("retention after the run of %s: %w", p.Name, err)
		}
	}
	switch {
	case runErr != nil && ctx.Err() != nil:
		return withExitCode(exitFailure, fmt.Errorf("interrupted; images still being made are finished by the daemon (or the next run of this slot): %w", runErr))
	case runErr != nil:
		return withExitCode(exitFailure, runErr)
	case rep.Outcome == store.OutcomeEmpty:
		return withExitCode(exitFailure, fmt.Errorf("policy %s %s: nothing was backed up", p.Name, rep.Reason))
	case !rep.OK():
		return withExitCode(exitFailure, fmt.Errorf("%d of %d selected servers have no good image for slot %s",
			rep.Counts.Selected-rep.Counts.Good-rep.Counts.Skipped, rep.Counts.Selected, scheduler.StampSlot(rep.Slot)))
	}
	return nil
}

// runSlot is the slot to run: the current minute, or --slot when it is a slot of
// the policy's schedule or one a manual run made before.
func (o *runOptions) runSlot(ctx context.Context, w *wiring, p *policy.Policy) (time.Time, error) {
	now := o.m.now().UTC()
	if o.slot == "" {
		return now.Truncate(time.Minute), nil
	}
	slot, err := time.Parse(time.RFC3339, o.slot)
	if err != nil {
		return time.Time{}, usageError("--slot %q: want an RFC 3339 time such as 2026-11-30T03:00:00Z", o.slot)
	}
	slot = slot.UTC()
	if slot.After(now) {
		return time.Time{}, usageError("--slot %s is in the future", scheduler.StampSlot(slot))
	}
	if p.Schedule.Next(slot.Add(-time.Second)).Equal(slot) {
		return slot, nil
	}
	if sl, err := w.store.SlotByKey(ctx, p.Name, slot); err == nil && sl.Trigger == string(scheduler.TriggerManual) {
		return slot, nil
	}
	prev := ""
	for t, n := p.Schedule.Next(slot.Add(-48*time.Hour)), 0; !t.IsZero() && !t.After(slot) && n < 10000; t, n = p.Schedule.Next(t), n+1 {
		prev = scheduler.StampSlot(t)
	}
	hint := ""
	if prev != "" {
		hint = " (the slot before it is " + prev + ")"
	}
	return time.Time{}, usageError("--slot %s is not a slot of %s (%s in %s) nor an earlier manual run%s",
		scheduler.StampSlot(slot), p.Name, p.Schedule.Spec, p.Schedule.Location, hint)
}

// resolveServers turns the --server names and ids into ids of servers the policy
// selects; a name or id it does not select, or a name two servers share, is a
// usage error that says which.
func (o *runOptions) resolveServers(ctx context.Context, w *wiring, p *policy.Policy) ([]string, error) {
	if len(o.servers) == 0 {
		return nil, nil
	}
	selected, err := w.cloud.ListServers(ctx, scheduler.CloudSelector(p.Select))
	if err != nil {
		return nil, withExitCode(exitFailure, fmt.Errorf("list the servers of %s: %w", p.Name, err))
	}
	var ids []string
	for _, want := range o.servers {
		var match []cloud.Server
		for _, s := range selected {
			if s.ID == want || s.Name == want {
				match = append(match, s)
			}
		}
		switch len(match) {
		case 0:
			return nil, usageError("--server %s: policy %s selects no server of that name or id (%s)", want, p.Name,
				plural(len(selected), "server selected", "servers selected"))
		case 1:
			ids = append(ids, match[0].ID)
		default:
			var twins []string
			for _, s := range match {
				twins = append(twins, s.ID)
			}
			return nil, usageError("--server %s: %d servers have that name (%s): give the id", want, len(match), strings.Join(twins, ", "))
		}
	}
	return ids, nil
}

// tickProgress prints a line every m.ProgressEvery (10 s) while the slot runs:
// how long it has run, how many servers are done, and how many images and volume
// snapshots are still being made, so that a long wait is never silent. The
// returned func stops it.
func (o *runOptions) tickProgress(ctx context.Context, w io.Writer, wired *wiring, p *policy.Policy, slot time.Time, done *atomic.Int64) func() {
	every := cmp.Or(o.m.ProgressEvery, 10*time.Second)
	ctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	started := time.Now()
	go func() {
		defer close(stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			saving, snapshots := inFlight(ctx, wired.store, p.Name, slot)
			fmt.Fprintf(w, "%s: %s elapsed, %s done; %s saving, %s creating\n", p.Name,
				roundDuration(time.Since(started)), plural(int(done.Load()), "server", "servers"), plural(saving, "image", "images"),
				plural(snapshots, "volume snapshot", "volume snapshots"))
		}
	}()
	return func() { cancel(); <-stopped }
}

// inFlight counts the slot's images still being made and their volume snapshots
// still creating. A store error counts as none: the line is only a heartbeat.
func inFlight(ctx context.Context, st *store.Store, pol string, slot time.Time) (images, snapshots int) {
	rows, err := st.Images(ctx, store.ImageFilter{Policy: pol, Slot: slot,
		States: []store.ImageState{store.ImageRequested, store.ImageCreating}})
	if err != nil {
		return 0, 0
	}
	for _, im := range rows {
		images++
		if !im.VolumeBacked {
			continue
		}
		snaps, err := st.Snapshots(ctx, im.Row)
		if err != nil {
			continue
		}
		for _, sn := range snaps {
			if sn.State == store.SnapshotCreating {
				snapshots++
			}
		}
	}
	return images, snapshots
}

// lockedWriter serialises the progress lines of the run's goroutines and the
// heartbeat.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// printProgress prints one line per server as it reaches its outcome, e.g.
// "3/50 web-1: image abc123 good (12s)".
func printProgress(w io.Writer, e scheduler.ProgressEvent) {
	if e.Server.ServerID == "" {
		fmt.Fprintf(w, "%s: slot %s: %s selected\n", e.Policy, scheduler.StampSlot(e.Slot), plural(e.Total, "server", "servers"))
		return
	}
	s := e.Server
	name := cmp.Or(s.ServerName, s.ServerID)
	var what string
	switch s.Outcome {
	case scheduler.ServerSkipped:
		what = "skipped (" + s.Reason + ")"
	case scheduler.ServerGood:
		what = fmt.Sprintf("image %s good", orNone(s.ImageID))
		if s.Duration > 0 {
			what += fmt.Sprintf(" (%s)", roundDuration(s.Duration))
		}
		if s.Existing {
			what += " (already made for this slot)"
		} else if s.Adopted {
			what += " (adopted)"
		}
	case scheduler.ServerFailed:
		what = fmt.Sprintf("image %s failed", orNone(s.ImageID))
		if s.Duration > 0 {
			what += fmt.Sprintf(" (%s)", roundDuration(s.Duration))
		}
		what += ": " + s.Reason
	default:
		what = fmt.Sprintf("image %s %s: %s", orNone(s.ImageID), s.Outcome, s.Reason)
	}
	fmt.Fprintf(w, "%d/%d %s: %s\n", e.Done, e.Total, name, what)
}

// printSummary prints the last line(s) of a run.
func printSummary(w io.Writer, rep *scheduler.SlotReport) {
	c := rep.Counts
	fmt.Fprintf(w, "%s: slot %s %s: %d selected, %d good, %d failed, %d skipped in %s (%s)\n",
		rep.Policy, scheduler.StampSlot(rep.Slot), rep.Outcome, c.Selected, c.Good, c.Failed, c.Skipped,
		roundDuration(rep.Finished.Sub(rep.Started)), plural(int(rep.CloudCalls), "cloud call", "cloud calls"))
	if rep.Reason != "" {
		fmt.Fprintf(w, "%s: %s\n", rep.Policy, rep.Reason)
	}
}

func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second)
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	default:
		return d.Round(time.Millisecond)
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
