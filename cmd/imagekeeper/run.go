package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/scheduler"
	"github.com/imagekeeper/imagekeeper/store"
)

// runOptions are the flags of `imagekeeper run`.
type runOptions struct {
	*common
	policy  string
	quiet   bool
	noPrune bool
}

// newRunCommand builds `imagekeeper run`.
func newRunCommand(m *Main) *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run --policy NAME",
		Short: "run one slot of a policy now, with progress",
		Long: `Runs one slot of a policy now: images every server the policy selects, waits
for each image, prints a line per server as it finishes, then applies retention.
The current minute is the slot, so running it twice in one minute makes no
second image. Exit 0 when every selected server got a good image or was skipped
for a recorded reason, 1 otherwise.`,
		Example: `  imagekeeper run --policy web-daily
  imagekeeper run --policy web-daily --quiet --no-prune`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBackup(cmd.Context(), m, o) },
	}
	o.common = newCommon(m, cmd).withConfig().withLogs("warn")
	f := cmd.Flags()
	f.StringVar(&o.policy, "policy", "", "policy to run (required)")
	f.BoolVar(&o.quiet, "quiet", false, "print only the summary")
	f.BoolVar(&o.noPrune, "no-prune", false, "skip retention after the run")
	completePolicies(cmd, o.common)
	return cmd
}

// runNow is the clock of `run`, and runPollInterval its first poll interval (0: the
// scheduler's default); tests replace them.
var (
	runNow          = time.Now
	runPollInterval time.Duration
)

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

	var progress func(scheduler.ProgressEvent)
	if !o.quiet {
		progress = func(e scheduler.ProgressEvent) { printProgress(m.Stdout, e) }
	}
	runner := wired.runner(scheduler.RunnerOptions{
		Progress: progress, PollInterval: runPollInterval, MaxPollInterval: 4 * runPollInterval,
	})
	slot := runNow().UTC().Truncate(time.Minute)
	rep, runErr := runner.RunSlot(ctx, cfg.Version, p, slot, scheduler.TriggerManual)
	if rep != nil {
		printSummary(m.Stdout, rep)
	}
	// Retention follows every settled backup run, here as in the daemon, so that a
	// crontab of `imagekeeper run` keeps the same promises; it asks the file's
	// config for the policy by name, as the daemon's retention asks the one in force.
	if !o.noPrune && runErr == nil && rep != nil && rep.Outcome != store.OutcomeFailed {
		prep, err := scheduler.NewRetention(runner, policy.NewCoordinator(cfg), scheduler.RetentionOptions{}).
			Prune(ctx, p.Name, scheduler.PruneOptions{})
		if prep != nil {
			fmt.Fprintln(m.Stdout, "retention: "+pruneSummary(prep))
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
	fmt.Fprintf(w, "%s: slot %s %s: %d selected, %d good, %d failed, %d skipped in %s (%d cloud calls)\n",
		rep.Policy, scheduler.StampSlot(rep.Slot), rep.Outcome, c.Selected, c.Good, c.Failed, c.Skipped,
		roundDuration(rep.Finished.Sub(rep.Started)), rep.CloudCalls)
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
