package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/imagekeeper/imagekeeper/store"
)

// historyOptions are the flags of `imagekeeper history`.
type historyOptions struct {
	*common
	policy string
	limit  int
}

// newHistoryCommand builds `imagekeeper history`.
func newHistoryCommand(m *Main) *cobra.Command {
	o := &historyOptions{}
	cmd := &cobra.Command{
		Use:   "history [--policy NAME] [--limit N]",
		Short: "list slots with their outcome and counts",
		Long: `Lists the slots the lineage records, newest first: when each ran, what
triggered it, its outcome and how many servers were selected, good, failed and
skipped. It reads the lineage only.`,
		Example: `  imagekeeper history --policy web-daily --limit 10
  imagekeeper history --state /var/lib/imagekeeper/lineage.db -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runHistory(cmd.Context(), m, o) },
	}
	o.common = newCommon(m, cmd).withConfig().withState().withOutput()
	f := cmd.Flags()
	f.StringVar(&o.policy, "policy", "", "only this policy")
	f.IntVar(&o.limit, "limit", 50, "at most this many slots (0: all)")
	completePolicies(cmd, o.common)
	return cmd
}

// slotJSON is one slot in `history -o json`.
type slotJSON struct {
	Policy        string     `json:"policy"`
	Slot          time.Time  `json:"slot"`
	Trigger       string     `json:"trigger,omitempty"`
	Outcome       string     `json:"outcome"`
	Reason        string     `json:"reason,omitempty"`
	Runs          int        `json:"runs"`
	Selected      int        `json:"selected"`
	Good          int        `json:"good"`
	Failed        int        `json:"failed"`
	Skipped       int        `json:"skipped"`
	Existing      int        `json:"existing"`
	PolicyVersion string     `json:"policy_version,omitempty"`
	StartedAt     *time.Time `json:"started_at,omitempty"`
	FinishedAt    *time.Time `json:"finished_at,omitempty"`
}

// runHistory lists slots, newest first.
func runHistory(ctx context.Context, m *Main, o *historyOptions) error {
	if o.limit < 0 {
		return usageError("--limit %d: must be 0 or more", o.limit)
	}
	wired, err := o.wire(ctx, wireOptions{policy: o.policy, store: true, lineageOnly: true})
	if err != nil {
		return err
	}
	defer wired.close()
	slots, err := wired.store.Slots(ctx, store.SlotFilter{Policy: o.policy, Limit: o.limit})
	if err != nil {
		return err
	}
	if o.json() {
		out := make([]slotJSON, 0, len(slots))
		for _, s := range slots {
			j := slotJSON{Policy: s.Policy, Slot: s.Slot, Trigger: s.Trigger, Outcome: string(s.Outcome), Reason: s.Reason,
				Runs: s.Runs, Selected: s.Counts.Selected, Good: s.Counts.Good, Failed: s.Counts.Failed,
				Skipped: s.Counts.Skipped, Existing: s.Counts.Existing, PolicyVersion: s.PolicyVersion,
				StartedAt: optTime(s.StartedAt), FinishedAt: optTime(s.FinishedAt)}
			out = append(out, j)
		}
		return writeJSON(m.Stdout, out)
	}
	if len(slots) == 0 {
		fmt.Fprintln(m.Stdout, "no slots")
		return nil
	}
	t := newTable(m.Stdout, "POLICY", "SLOT", "TRIGGER", "OUTCOME", "SELECTED", "GOOD", "FAILED", "SKIPPED", "RUNS", "DURATION", "REASON")
	for _, s := range slots {
		dur := "-"
		if !s.StartedAt.IsZero() && !s.FinishedAt.IsZero() {
			dur = roundDuration(s.FinishedAt.Sub(s.StartedAt)).String()
		}
		t.row(s.Policy, s.Slot.UTC().Format(time.RFC3339), orDash(s.Trigger), s.Outcome, s.Counts.Selected, s.Counts.Good,
			s.Counts.Failed, s.Counts.Skipped, s.Runs, dur, orDash(oneLine(s.Reason, 60)))
	}
	return t.flush()
}
