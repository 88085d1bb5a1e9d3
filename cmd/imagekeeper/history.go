package main

import (
	"context"
	"fmt"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
)

func init() {
	register(command{
		name:    "history",
		summary: "list slots with their outcome and counts",
		run:     runHistory,
	})
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
func runHistory(ctx context.Context, m *Main, args []string) error {
	fs := newFlagSet(m, "history").withConfig().withOutput()
	pol := fs.String("policy", "", "only this policy")
	limit := fs.Int("limit", 50, "at most this many slots (0: all)")
	if err := fs.parse(args, 0); err != nil {
		return err
	}
	if *limit < 0 {
		return usageError("--limit %d: must be 0 or more", *limit)
	}
	wired, err := fs.wire(ctx, wireOptions{store: true})
	if err != nil {
		return err
	}
	defer wired.close()
	slots, err := wired.store.Slots(ctx, store.SlotFilter{Policy: *pol, Limit: *limit})
	if err != nil {
		return err
	}
	if fs.json() {
		out := make([]slotJSON, 0, len(slots))
		for _, s := range slots {
			j := slotJSON{Policy: s.Policy, Slot: s.Slot, Trigger: s.Trigger, Outcome: s.Outcome, Reason: s.Reason,
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
