package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"text/tabwriter"
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
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	configPath := fs.String("config", defaultConfigPath, "policy file")
	pol := fs.String("policy", "", "only this policy")
	limit := fs.Int("limit", 50, "at most this many slots (0: all)")
	output := fs.String("o", "table", "output format: table or json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError("%v", err)
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	if err := checkOutput(*output); err != nil {
		return err
	}
	if *limit < 0 {
		return usageError("--limit %d: must be 0 or more", *limit)
	}
	cfg, err := wireConfig(m, *configPath)
	if err != nil {
		return err
	}
	st, err := wireStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	slots, err := st.Slots(ctx, store.SlotFilter{Policy: *pol, Limit: *limit})
	if err != nil {
		return err
	}
	if *output == "json" {
		out := make([]slotJSON, 0, len(slots))
		for _, s := range slots {
			j := slotJSON{Policy: s.Policy, Slot: s.Slot, Trigger: s.Trigger, Outcome: s.Outcome, Reason: s.Reason,
				Runs: s.Runs, Selected: s.Counts.Selected, Good: s.Counts.Good, Failed: s.Counts.Failed,
				Skipped: s.Counts.Skipped, Existing: s.Counts.Existing, PolicyVersion: s.PolicyVersion}
			if !s.StartedAt.IsZero() {
				j.StartedAt = &s.StartedAt
			}
			if !s.FinishedAt.IsZero() {
				j.FinishedAt = &s.FinishedAt
			}
			out = append(out, j)
		}
		writeJSON(m, out)
		return nil
	}
	if len(slots) == 0 {
		fmt.Fprintln(m.Stdout, "no slots")
		return nil
	}
	tw := tabwriter.NewWriter(m.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POLICY\tSLOT\tTRIGGER\tOUTCOME\tSELECTED\tGOOD\tFAILED\tSKIPPED\tRUNS\tDURATION\tREASON")
	for _, s := range slots {
		dur := "-"
		if !s.StartedAt.IsZero() && !s.FinishedAt.IsZero() {
			dur = roundDuration(s.FinishedAt.Sub(s.StartedAt)).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Policy, s.Slot.UTC().Format(time.RFC3339),
			orDashCLI(s.Trigger), s.Outcome, s.Counts.Selected, s.Counts.Good, s.Counts.Failed, s.Counts.Skipped, s.Runs,
			dur, orDashCLI(oneLine(s.Reason, 60)))
	}
	return tw.Flush()
}
